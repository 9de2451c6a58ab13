"""NNX modules are traced from their own variables, cut at their child modules (attribute
paths), and split into stages equal to `nnx.value_and_grad`; the user's module is untouched."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpipe
from jaxpipe import models
from jaxpipe.errors import ModelKindError, NoLayersError, RngError, VariablesError
from jaxpipe.tree import flatten_paths
from tests.jaxpipe.fresh import nnx_reference, run_bundle_in_fresh_process, state_error
from tests.jaxpipe.helpers import cross_entropy, max_relative_error

TOL = 1e-5
CNN_LAYERS = ["blocks/0", "blocks/1", "blocks/2", "head"]
LM_LAYERS = ["embed", "blocks/0", "blocks/1", "blocks/2", "norm", "head"]


@functools.cache
def case(name, batch=4):
    spec = models.get(name)
    model = spec.build(jax.random.PRNGKey(0))
    data = spec.make_batch(jax.random.PRNGKey(1), batch)
    return spec, model, data, jaxpipe.trace(model, None, data, spec.loss_fn)


def assert_matches_nnx(got, expected, where=""):
    (loss, grads, state), (ref_loss, ref_grads, ref_state) = got, expected
    assert abs(float(loss) - float(ref_loss)) <= TOL * abs(float(ref_loss)), where
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads), where
    assert max_relative_error(grads, ref_grads) <= TOL, where
    assert state_error(state, ref_state) <= TOL, where


@pytest.mark.parametrize("name, layers", [("nnx-cnn-tiny", CNN_LAYERS),
                                          ("nnx-lm-tiny", LM_LAYERS)])
def test_units_are_child_modules_by_attribute_path_in_call_order(name, layers):
    spec, model, _, traced = case(name)
    assert [layer.name for layer in traced.layers] == layers
    if name == "nnx-cnn-tiny":
        assert traced.layers[0].param_paths == (
            "params/blocks/0/conv/bias", "params/blocks/0/conv/kernel",
            "params/blocks/0/norm/bias", "params/blocks/0/norm/scale")
    second = traced.layers[layers.index("blocks/1")]
    assert second.param_paths and all(p.startswith("params/blocks/1/")
                                      for p in second.param_paths)
    assert "state/blocks/0/norm/mean" in traced.state.paths or name == "nnx-lm-tiny"
    assert any(p.endswith("drop/rngs/count") for p in traced.state.paths)


@pytest.mark.parametrize("name", ["nnx-cnn-tiny", "nnx-lm-tiny"])
@settings(max_examples=6, deadline=None)
@given(cuts=st.sets(st.integers(1, 5)), mode=st.sampled_from(["stash", "recompute"]),
       micro_batches=st.sampled_from([1, 2]))
def test_random_cuts_match_nnx_value_and_grad(name, cuts, mode, micro_batches):
    spec, model, data, traced = case(name)
    cuts = sorted(c for c in cuts if c < len(traced.layers))
    with jax.disable_jit():
        got = traced.split(cuts, mode).value_and_grad(model, data, micro_batches)
        expected = nnx_reference(model, data, spec.loss_fn, micro_batches)
    assert_matches_nnx(got, expected, f"{name}, cuts {cuts}, {mode}, {micro_batches}")


def test_one_micro_batch_draws_nnxs_own_dropout_masks_and_several_are_deterministic():
    spec, model, data, traced = case("nnx-lm-tiny")
    staged = traced.split((2, 4))
    one = staged.value_and_grad(model, data, 1)
    assert float(one[0]) == pytest.approx(float(nnx_reference(model, data, spec.loss_fn)[0]),
                                          rel=TOL)
    two = staged.value_and_grad(model, data, 2)
    again = staged.value_and_grad(model, data, 2)
    assert float(two[0]) == float(again[0])
    assert float(two[0]) != float(one[0])  # other micro-batches, other masks
    # Each micro-batch advanced every Dropout stream as far as one forward pass does.
    def counts(state):
        return [int(v) for p, v in zip(traced.state.paths, jax.tree.leaves(state))
                if p.endswith("rngs/count")]

    assert counts(two[2]) == [2 * c for c in counts(one[2])] and min(counts(one[2])) >= 1


def test_trace_and_split_leave_the_users_module_as_it_was():
    spec = models.get("nnx-cnn-tiny")
    model = spec.build(jax.random.PRNGKey(3))
    data = spec.make_batch(jax.random.PRNGKey(1), 4)
    twin = nnx.clone(model)
    classes = [(path, type(node)) for path, node in nnx.iter_graph(model)]
    graphdef, state = nnx.split(model)

    traced = jaxpipe.trace(model, None, data, spec.loss_fn)
    traced.split((1, 3), "recompute").value_and_grad(model, data, 2)

    assert [(path, type(node)) for path, node in nnx.iter_graph(model)] == classes
    after_graphdef, after_state = nnx.split(model)
    assert after_graphdef == graphdef
    assert state_error(after_state, state) == 0.0
    assert jnp.array_equal(model(data[0]), twin(data[0]))  # eager, same masks, same result


class Flat(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (5, 3)))

    def __call__(self, x):
        return x @ self.w[...]


def test_bad_nnx_input_is_refused_with_the_fix():
    x, y = jnp.ones((4, 5)), jnp.zeros((4,), jnp.int32)
    model = Flat(nnx.Rngs(0))
    with pytest.raises(NoLayersError, match="model's own equations.*layers="):
        jaxpipe.trace(model, None, (x, y), cross_entropy)
    _, lm, data, _ = case("nnx-lm-tiny")
    with pytest.raises(VariablesError, match="holds its own variables"):
        jaxpipe.trace(lm, {"params": {}}, data, cross_entropy)
    with pytest.raises(RngError, match="own nnx.Rngs"):
        jaxpipe.trace(lm, None, data, cross_entropy, rngs={"dropout": jax.random.PRNGKey(0)})
    with pytest.raises(ModelKindError, match="got builtins.dict"):
        jaxpipe.trace({"params": {}}, None, data, cross_entropy)


class DictNet(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.Dict({"first": nnx.Linear(5, 8, rngs=rngs),
                                "second": nnx.Linear(8, 8, rngs=rngs)})
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.layers["second"](nnx.relu(self.layers["first"](x)))))


def test_nnx_dict_children_and_the_layers_override():
    model = DictNet(nnx.Rngs(0))
    x, y = jax.random.normal(jax.random.PRNGKey(0), (4, 5)), jnp.arange(4) % 3

    def names(layers):
        traced = jaxpipe.trace(model, None, (x, y), cross_entropy, layers=layers)
        return [layer.name for layer in traced.layers]

    assert names(None) == ["layers/first", "layers/second", "out"]
    assert names(1) == ["layers", "out"]
    assert names("layers/*") == ["layers/first", "layers/second"]  # `out` is glue
    _, cnn, data, _ = case("nnx-cnn-tiny")
    traced = jaxpipe.trace(cnn, None, data, cross_entropy, layers=["blocks/*/conv", "head"])
    assert [layer.name for layer in traced.layers] == [
        "blocks/0/conv", "blocks/1/conv", "blocks/2/conv", "head"]
    got = traced.split((1, 2, 3)).value_and_grad(cnn, data)
    assert_matches_nnx(got, nnx_reference(cnn, data, cross_entropy))


@pytest.mark.parametrize("mode", ["stash", "recompute"])
def test_the_nnx_cnn_bundle_runs_in_a_fresh_process(tmp_path, mode):
    _, model, data, traced = case("nnx-cnn-tiny")
    staged = traced.split((1, 3), mode)
    loss, grads, state = staged.value_and_grad(model, data, micro_batches=2)
    got_loss, got_grads, got_state = run_bundle_in_fresh_process(tmp_path, staged, data,
                                                                 micro_batch=2)
    assert abs(float(got_loss) - float(loss)) <= 1e-6 * abs(float(loss))
    assert max_relative_error([got_grads[p] for p in traced.user_params.paths],
                              jax.tree.leaves(grads)) <= 1e-6
    expected = flatten_paths(state)  # the same leaves, keys as raw data in the bundle's answer
    keys = [jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
            else v for v in expected.leaves]
    assert state_error([got_state[p] for p in traced.user_state.paths], keys) <= 1e-6


@pytest.mark.parametrize("name, layers", [("nnx-cnn-tiny", CNN_LAYERS),
                                          ("nnx-lm-tiny", LM_LAYERS)])
def test_profile_measures_every_unit_of_an_nnx_model(name, layers):
    *_, traced = case(name)
    profile = jaxpipe.profile(traced, micro_batch_sizes=(1, 2), repeats=1)
    assert [layer.name for layer in profile.layers] == layers
    assert profile.model in ("CNN", "NnxLM")
    assert all(layer.flops_per_sample > 0 for layer in profile.layers)
