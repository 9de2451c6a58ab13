"""Nested linen models are cut where their work is: every block of an LM nested under one
`decoder` is its own unit, named by its full scope path, and the stages stay exact."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpipe
from jaxpipe import models
from jaxpipe.errors import LayersPatternError, ModelKindError, NoLayersError
from jaxpipe.staging import units
from jaxpipe.tree import flatten_paths
from tests.jaxpipe.fresh import run_bundle_in_fresh_process
from tests.jaxpipe.helpers import (
    SkipNet,
    cross_entropy,
    max_relative_error,
    reference,
    skipnet_case,
)
from tests.jaxpipe.test_models import EXPECTED_TINY_LAYERS

TOL = 1e-5
LM_LAYERS = ["decoder/embed", "decoder/block_0", "decoder/block_1", "decoder/block_2",
             "decoder/norm", "decoder/head"]


@functools.cache
def lm_case(name="lm-tiny", batch=4, **overrides):
    spec = models.get(name, **overrides)
    variables = spec.init(jax.random.PRNGKey(0))
    data = spec.make_batch(jax.random.PRNGKey(1), batch)
    rngs = spec.rngs(jax.random.PRNGKey(2))
    traced = jaxpipe.trace(spec.module, variables, data, spec.loss_fn, rngs=rngs)
    return spec, variables, data, rngs, traced


def assert_exact(got, expected, where=""):
    (loss, grads, state), (ref_loss, ref_grads, ref_state) = got, expected
    assert abs(float(loss) - float(ref_loss)) <= TOL * abs(float(ref_loss)), where
    assert max_relative_error(grads, ref_grads) <= TOL, where
    if ref_state:
        assert max_relative_error(state, ref_state) <= TOL, where


def test_each_block_of_a_nested_lm_is_a_unit_named_by_its_scope_path():
    *_, traced = lm_case()
    assert [layer.name for layer in traced.layers] == LM_LAYERS
    block = traced.layers[2]
    assert block.param_paths and all(p.startswith("params/decoder/block_1/")
                                     for p in block.param_paths)
    assert traced.layers[0].param_paths == ("params/decoder/embed/positions",
                                            "params/decoder/embed/tokens/embedding")


@pytest.mark.parametrize("name", sorted(EXPECTED_TINY_LAYERS))
def test_the_zoo_models_keep_exactly_their_layers(name):
    """Cached profiles and plans name these layers: the depth rule must not move them."""
    spec = models.get(name)
    variables = jax.eval_shape(spec.init, jax.random.PRNGKey(0))  # tracing needs only shapes
    data = spec.make_batch(jax.random.PRNGKey(1), 2)
    traced = jaxpipe.trace(spec.module, variables, data, spec.loss_fn,
                           rngs=spec.rngs(jax.random.PRNGKey(2)))
    assert [layer.name for layer in traced.layers] == EXPECTED_TINY_LAYERS[name]


class Wrapper(nn.Module):
    """SkipNet one level down: glue and skips now live inside `body`."""

    norm: bool = False

    @nn.compact
    def __call__(self, x):
        return SkipNet(norm=self.norm, name="body")(x)


def test_glue_and_live_values_are_placed_as_at_the_top_level():
    model, variables, batch, _ = skipnet_case()
    flat = jaxpipe.trace(model, variables, batch, cross_entropy)
    wrapper = Wrapper()
    nested = jaxpipe.trace(wrapper, wrapper.init(jax.random.PRNGKey(0), batch[0]), batch,
                           cross_entropy)
    assert [layer.name for layer in nested.layers] == [
        "body/block0", "body/block1", "body/block2", "body/head"]
    assert [layer.boundary_bytes_per_sample for layer in nested.layers] == [
        layer.boundary_bytes_per_sample for layer in flat.layers]


class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
        inner = nn.Dense(6, name="a")
        h = inner(x)
        h = nn.Dense(6, name="b")(jnp.tanh(h))
        h = inner(jnp.tanh(h))  # `a` again, after `b`
        return nn.Dense(4, name="out")(h)


class TwiceWrapper(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Twice(name="body")(x)


def test_a_nested_unit_called_twice_apart_gets_a_second_name():
    model = TwiceWrapper()
    x, y = jnp.ones((4, 6)), jnp.arange(4) % 4
    traced = jaxpipe.trace(model, model.init(jax.random.PRNGKey(0), x), (x, y), cross_entropy)
    assert [layer.name for layer in traced.layers] == ["body/a", "body/b", "body/a#2", "body/out"]
    case = (model, model.init(jax.random.PRNGKey(0), x), (x, y), None)
    assert_exact(traced.split((1, 2, 3)).value_and_grad(case[1], case[2]),
                 reference(model, case[1], case[2], cross_entropy))


def test_layers_takes_a_depth_or_scope_patterns():
    spec, variables, data, rngs, _ = lm_case()

    def names(layers):
        traced = jaxpipe.trace(spec.module, variables, data, spec.loss_fn, rngs=rngs,
                               layers=layers)
        return [layer.name for layer in traced.layers]

    assert names(1) == ["decoder"]
    assert names(2) == LM_LAYERS
    assert names(3)[:3] == [
        "decoder/embed/tokens", "decoder/embed/Dropout_0", "decoder/block_0/norm1"]
    assert names("decoder/block_*") == LM_LAYERS[1:4]  # embed, norm and head are glue
    assert names(["decoder/embed", "decoder/block_*", "decoder/head"]) == (
        LM_LAYERS[:4] + ["decoder/head"])


def test_a_pattern_that_matches_nothing_lists_the_scopes_that_exist():
    spec, variables, data, rngs, _ = lm_case()
    with pytest.raises(LayersPatternError, match="match no scope") as info:
        jaxpipe.trace(spec.module, variables, data, spec.loss_fn, rngs=rngs,
                      layers=["decoder/block_*", "encoder/*"])
    text = str(info.value)
    assert "['encoder/*']" in text and "decoder/block_2/qkv" in text
    with pytest.raises(LayersPatternError, match="depth counts from 1"):
        jaxpipe.trace(spec.module, variables, data, spec.loss_fn, rngs=rngs, layers=0)


def test_a_model_with_no_submodule_at_any_depth_is_refused_with_the_fix():
    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x @ self.param("w", nn.initializers.lecun_normal(), (x.shape[-1], 3))

    x, y = jnp.ones((4, 5)), jnp.zeros((4,), jnp.int32)
    model = Flat()
    with pytest.raises(NoLayersError, match="model's own equations.*layers="):
        jaxpipe.trace(model, model.init(jax.random.PRNGKey(0), x), (x, y), cross_entropy)


def test_something_that_is_not_a_flax_module_is_refused():
    x, y = jnp.ones((4, 5)), jnp.zeros((4,), jnp.int32)
    with pytest.raises(ModelKindError, match="flax.linen or flax.nnx Module"):
        jaxpipe.trace(lambda v, x: x, {"params": {}}, (x, y), cross_entropy)


def test_the_depth_rule_descends_only_into_a_unit_with_most_of_the_work_and_two_children():
    paths = [("a", "x"), ("a", "y"), ("b",), ("c", "z")]
    assert units.choose_units(paths, [3, 3, 1, 2], None) == [("a", "x"), ("a", "y"), ("b",),
                                                             ("c",)]
    assert units.choose_units(paths, [2, 2, 2, 2], None) == [("a",), ("b",), ("c",)]  # 1/2
    assert units.choose_units([("a", "x"), ("b",)], [9, 1], None) == [("a",), ("b",)]


@settings(max_examples=10, deadline=None)
@given(cuts=st.sets(st.integers(1, 5)), mode=st.sampled_from(["stash", "recompute"]),
       micro_batches=st.sampled_from([1, 2]))
def test_random_cuts_of_the_nested_lm_match_the_unsplit_model(cuts, mode, micro_batches):
    spec, variables, data, rngs, traced = lm_case()
    with jax.disable_jit():
        got = traced.split(sorted(cuts), mode).value_and_grad(variables, data, micro_batches)
        expected = reference(spec.module, variables, data, spec.loss_fn, rngs, micro_batches)
    assert_exact(got, expected, f"cuts {sorted(cuts)}, {mode}, {micro_batches}")


@settings(max_examples=6, deadline=None)
@given(cuts=st.sets(st.integers(1, 3), min_size=1), mode=st.sampled_from(["stash", "recompute"]))
def test_random_cuts_of_a_nested_model_with_batchnorm_match_mutable_apply(cuts, mode):
    model, _, batch, _ = skipnet_case(norm=True)
    wrapper = Wrapper(norm=True)
    variables = wrapper.init(jax.random.PRNGKey(0), batch[0])
    traced = _traced_wrapper_with_norm()
    with jax.disable_jit():
        got = traced.split(sorted(cuts), mode).value_and_grad(variables, batch, 2)
        expected = reference(wrapper, variables, batch, cross_entropy, None, 2)
    assert set(expected[2]) == {"batch_stats"}
    assert_exact(got, expected)


@functools.cache
def _traced_wrapper_with_norm():
    _, _, batch, _ = skipnet_case(norm=True)
    wrapper = Wrapper(norm=True)
    return jaxpipe.trace(wrapper, wrapper.init(jax.random.PRNGKey(0), batch[0]), batch,
                         cross_entropy)


def test_the_nested_lm_bundle_runs_in_a_fresh_process(tmp_path):
    spec, variables, data, rngs, traced = lm_case()
    staged = traced.split((2, 4), "stash")
    loss, grads, _ = staged.value_and_grad(variables, data, micro_batches=2)
    got_loss, got_grads, _ = run_bundle_in_fresh_process(tmp_path, staged, data, rngs,
                                                         micro_batch=2)
    assert abs(float(got_loss) - float(loss)) <= 1e-6 * abs(float(loss))
    flat = flatten_paths(grads, "params")
    assert max_relative_error([got_grads[p] for p in flat.paths], list(flat.leaves)) <= 1e-6


def test_profile_measures_every_unit_of_the_nested_lm():
    *_, traced = lm_case()
    profile = jaxpipe.profile(traced, micro_batch_sizes=(1, 2), repeats=1)
    assert [layer.name for layer in profile.layers] == LM_LAYERS
    assert all(layer.flops_per_sample > 0 for layer in profile.layers[1:4])
    assert profile.layers[1].param_bytes == traced.layers[1].param_bytes > 0
