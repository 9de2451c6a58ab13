"""Stage programs give exactly the unsplit model's loss, gradients and state."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpipe
from tests.jaxpipe.helpers import (
    cross_entropy,
    max_relative_error,
    reference,
    skipnet_case,
)

TOL = 1e-5


def check_against_reference(traced, case, cuts, modes, micro_batches=1):
    model, variables, batch, rngs = case
    loss, grads, state = traced.split(cuts, modes).value_and_grad(variables, batch, micro_batches)
    ref_loss, ref_grads, ref_state = reference(
        model, variables, batch, cross_entropy, rngs, micro_batches)
    assert abs(float(loss) - float(ref_loss)) <= TOL * abs(float(ref_loss))
    assert max_relative_error(grads, ref_grads) <= TOL
    if ref_state:
        assert max_relative_error(state, ref_state) <= TOL


def test_layers_are_top_level_submodules_and_glue_joins_the_previous_one():
    model, variables, batch, _ = skipnet_case()
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    assert [layer.name for layer in traced.layers] == ["block0", "block1", "block2", "head"]
    assert traced.layers[0].param_paths == (
        "params/block0/Dense_0/bias", "params/block0/Dense_0/kernel")
    assert traced.layers[0].param_bytes == (6 * 16 + 16) * 4


def test_a_module_without_equations_is_no_layer_and_one_with_them_is():
    model, variables, batch, rngs = skipnet_case(dropout=0.5)
    traced = jaxpipe.trace(model, variables, batch, cross_entropy, rngs=rngs)
    assert [layer.name for layer in traced.layers] == ["block0", "block1", "drop", "block2", "head"]
    assert traced.layers[2].param_paths == ()


def test_boundary_bytes_count_skips_and_targets():
    model, variables, batch, _ = skipnet_case()
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    f32, label = 4, 4
    # After block0: its output (used by block1's glue and by the head) and the labels.
    assert traced.layers[0].boundary_bytes_per_sample == 16 * f32 + label
    # After block1: block1's output, the skip from block0, the labels.
    assert traced.layers[1].boundary_bytes_per_sample == 2 * 16 * f32 + label
    assert traced.layers[-1].boundary_bytes_per_sample == 0


@pytest.mark.parametrize("mode", ["stash", "dots", "recompute"])
@pytest.mark.parametrize("cuts", [(), (1,), (2,), (3,), (1, 3), (1, 2, 3)])
def test_split_matches_unsplit_model(cuts, mode):
    case = skipnet_case()
    traced = jaxpipe.trace(case[0], case[1], case[2], cross_entropy)
    check_against_reference(traced, case, cuts, mode)


@pytest.mark.parametrize("mode", ["stash", "dots", "recompute"])
def test_batchnorm_state_threads_through_micro_batches_in_order(mode):
    case = skipnet_case(norm=True)
    traced = jaxpipe.trace(case[0], case[1], case[2], cross_entropy)
    check_against_reference(traced, case, (1, 3), mode, micro_batches=4)
    check_against_reference(traced, case, (2,), mode, micro_batches=1)


@pytest.mark.parametrize("micro_batches", [2, 4, 8])
def test_accumulated_micro_batch_gradient_equals_full_batch_gradient(micro_batches):
    model, variables, batch, _ = skipnet_case()
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    loss, grads, _ = traced.split((1, 3)).value_and_grad(variables, batch, micro_batches)
    full_loss, full_grads, _ = reference(model, variables, batch, cross_entropy)
    assert abs(float(loss) - float(full_loss)) <= TOL * abs(float(full_loss))
    assert max_relative_error(grads, full_grads) <= TOL


def test_dropout_keys_match_the_unsplit_model_per_micro_batch():
    case = skipnet_case(dropout=0.5)
    model, variables, batch, rngs = case
    traced = jaxpipe.trace(model, variables, batch, cross_entropy, rngs=rngs)
    check_against_reference(traced, case, (2, 4), "stash", micro_batches=1)
    check_against_reference(traced, case, (3,), "recompute", micro_batches=2)


def test_mixed_modes_per_stage():
    case = skipnet_case(norm=True)
    traced = jaxpipe.trace(case[0], case[1], case[2], cross_entropy)
    check_against_reference(traced, case, (1, 3), ["recompute", "stash", "dots"], 2)


def test_dots_mode_saves_less_than_stash_and_more_than_recompute():
    # Dense + batch norm + tanh: stash keeps the elementwise ops' residuals too, dots only the
    # matmul outputs and the stage's inputs, recompute only the inputs and state.
    model, variables, batch, _ = skipnet_case(norm=True)
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    saved = {mode: [sum(t.nbytes for t in stage.spec.saved)
                    for stage in traced.split((1, 3), mode).stages(4)]
             for mode in ("stash", "dots", "recompute")}
    for stash, dots, recompute in zip(saved["stash"], saved["dots"], saved["recompute"]):
        assert stash > dots > recompute


@settings(max_examples=12, deadline=None)
@given(cuts=st.sets(st.integers(1, 3)), mode=st.sampled_from(["stash", "recompute"]),
       micro_batches=st.sampled_from([1, 2, 4]))
def test_random_cut_sets(cuts, mode, micro_batches):
    case = skipnet_case(norm=True)
    traced = _traced_skipnet_with_norm()
    check_against_reference(traced, case, sorted(cuts), mode, micro_batches)


_TRACED = {}


def _traced_skipnet_with_norm():
    if "norm" not in _TRACED:
        model, variables, batch, _ = skipnet_case(norm=True)
        _TRACED["norm"] = jaxpipe.trace(model, variables, batch, cross_entropy)
    return _TRACED["norm"]


class TiedLM(nn.Module):
    """Embedding and output projection share one matrix, read by the first and last stage."""

    def setup(self):
        self.embed = nn.Embed(11, 8)
        self.body = nn.Dense(8)

    def __call__(self, tokens):
        h = jnp.tanh(self.body(self.embed(tokens).mean(axis=1)))
        return self.embed.attend(h)


@pytest.mark.parametrize("mode", ["stash", "dots", "recompute"])
def test_tied_parameter_gradients_are_summed_across_stages(mode):
    model = TiedLM()
    tokens = jnp.asarray(np.arange(24).reshape(6, 4) % 11, jnp.int32)
    labels = jnp.asarray(np.arange(6) % 11, jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), tokens)
    traced = jaxpipe.trace(model, variables, (tokens, labels), cross_entropy)
    assert [layer.name for layer in traced.layers] == ["embed", "body", "embed.attend"]
    case = (model, variables, (tokens, labels), None)
    check_against_reference(traced, case, (1, 2), mode)


def test_values_that_do_not_depend_on_parameters_send_no_cotangents():
    model, variables, batch, _ = skipnet_case()
    traced = jaxpipe.trace(model, variables, batch, cross_entropy)
    stage = traced.split((1,)).stages(8)[1]
    kinds = [(t.dtype, t.differentiable) for t in stage.spec.inputs]
    assert ("int32", False) in kinds  # the labels travel, but carry no gradient
    assert ("float32", True) in kinds
