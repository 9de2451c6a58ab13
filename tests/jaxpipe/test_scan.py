"""Scanned layer stacks are cut between iterations, with stacked parameters and state split
into per-iteration slices and stacked back; remat blocks stay whole; other scans stay whole and
say why."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpipe
from jaxpipe import models
from tests.jaxpipe.fresh import nnx_reference, run_bundle_in_fresh_process, state_error
from tests.jaxpipe.helpers import cross_entropy, max_relative_error, reference
from tests.jaxpipe.test_nested import assert_exact, lm_case

TOL = 1e-5
SCAN_LAYERS = ["decoder/embed", "decoder/blocks/0", "decoder/blocks/1", "decoder/blocks/2",
               "decoder/norm", "decoder/head"]


def test_each_iteration_of_a_scanned_stack_is_a_unit_reading_its_own_slices():
    *_, traced = lm_case("lm-scan-tiny")
    assert [layer.name for layer in traced.layers] == SCAN_LAYERS
    for i in range(3):
        paths = traced.layers[1 + i].param_paths
        assert paths and all(p.startswith("params/decoder/blocks/block/") and p.endswith(f"[{i}]")
                             for p in paths)
    stacked = traced.unstacking[0].to_dict()
    assert stacked["params/decoder/blocks/block/qkv/kernel"] == 3
    assert "params/decoder/blocks/block/qkv/kernel" in traced.user_params.paths
    assert traced.layers[1].note == ""


def test_a_stage_holds_only_the_slices_of_its_iterations():
    *_, traced = lm_case("lm-scan-tiny")
    stages = traced.split((2,)).stages(4)
    kernel = "params/decoder/blocks/block/qkv/kernel"
    assert [p for p in stages[0].spec.param_paths if p.startswith(kernel)] == [kernel + "[0]"]
    assert [p for p in stages[1].spec.param_paths if p.startswith(kernel)] == [
        kernel + "[1]", kernel + "[2]"]


@settings(max_examples=6, deadline=None)
@given(cuts=st.sets(st.integers(1, 5)), mode=st.sampled_from(["stash", "recompute"]),
       micro_batches=st.sampled_from([1, 2]))
def test_random_cuts_of_the_scanned_lm_match_the_unsplit_scan(cuts, mode, micro_batches):
    *_, variables, data, _, traced = lm_case("lm-scan-tiny")
    with jax.disable_jit():  # every primitive compiles once, for all cut sets
        got = traced.split(sorted(cuts), mode).value_and_grad(variables, data, micro_batches)
    assert jax.tree.structure(got[1]) == jax.tree.structure(variables["params"])
    assert_exact(got, scan_reference(micro_batches), f"cuts {sorted(cuts)}, {mode}")


@functools.cache
def scan_reference(micro_batches):
    """The unsplit scanned LM, jitted: run op by op, `nn.scan` draws other dropout masks
    (flax's lifted scan under `jax.disable_jit`), so the oracle is the compiled scan."""
    spec, variables, data, rngs, _ = lm_case("lm-scan-tiny")
    return reference(spec.module, variables, data, spec.loss_fn, rngs, micro_batches, jit=True)


class NormBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        y = nn.BatchNorm(use_running_average=False)(nn.Dense(6)(x))
        return x + nn.tanh(y), None


class ScannedNet(nn.Module):
    """A stack of 4 Dense-BatchNorm blocks as one nn.scan: stacked params *and* batch_stats."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6, name="inp")(x)
        stack = nn.scan(NormBlock, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, length=4)
        x, _ = stack(name="blocks")(x, None)
        return nn.Dense(3, name="out")(x)


@functools.cache
def norm_case():
    model = ScannedNet()
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
    y = jnp.arange(8) % 3
    variables = model.init(jax.random.PRNGKey(1), x)
    return model, variables, (x, y), jaxpipe.trace(model, variables, (x, y), cross_entropy)


@pytest.mark.parametrize("mode", ["stash", "dots", "recompute"])
@pytest.mark.parametrize("cuts, micro_batches", [((2,), 1), ((1, 3, 5), 2), ((2, 4), 4)])
def test_stacked_batch_stats_thread_through_micro_batches_and_restack(cuts, micro_batches, mode):
    model, variables, batch, traced = norm_case()
    assert [layer.name for layer in traced.layers] == [
        "inp", "blocks/0", "blocks/1", "blocks/2", "blocks/3", "out"]
    assert traced.state.paths[:2] == ("batch_stats/blocks/BatchNorm_0/mean[0]",
                                      "batch_stats/blocks/BatchNorm_0/mean[1]")
    got = traced.split(cuts, mode).value_and_grad(variables, batch, micro_batches)
    expected = reference(model, variables, batch, cross_entropy, None, micro_batches, jit=True)
    assert got[2]["batch_stats"]["blocks"]["BatchNorm_0"]["mean"].shape == (4, 6)
    assert_exact(got, expected)


class HandStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (4, 6, 6))
        return jax.lax.scan(lambda h, w_i: (jnp.tanh(h @ w_i) + h, None), x, w)[0]


class Recurrent(nn.Module):
    """A scan over time steps with one weight matrix shared by every step: not layers."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (6, 6))
        steps = jnp.stack([x, 2 * x, 3 * x])  # (T, B, 6)
        return jax.lax.scan(lambda h, x_t: (jnp.tanh(h @ w + x_t), None), jnp.zeros_like(x),
                            steps)[0]


class Mapped(nn.Module):
    """A scan over stacked weights that carries nothing: a map over 3 heads, not a stack."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (3, 6, 6))
        return jax.lax.scan(lambda c, w_i: (c, jnp.tanh(x @ w_i)), (), w)[1].sum(axis=0)


class Holder(nn.Module):
    body: type

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6, name="inp")(x)
        return nn.Dense(3, name="out")(self.body(name="stack")(x))


@pytest.mark.parametrize("body, names, note", [
    (HandStack, ["inp", "stack/0", "stack/1", "stack/2", "stack/3", "out"], None),
    (Recurrent, ["inp", "stack", "out"], "none of its scanned inputs is a stacked parameter"),
    (Mapped, ["inp", "stack", "out"], "it carries nothing from one iteration to the next"),
])
def test_hand_written_scans_are_cut_if_they_are_layer_stacks_and_say_why_if_not(body, names,
                                                                                 note):
    model = Holder(body)
    x, y = jax.random.normal(jax.random.PRNGKey(0), (4, 5)), jnp.arange(4) % 3
    variables = model.init(jax.random.PRNGKey(1), x)
    traced = jaxpipe.trace(model, variables, (x, y), cross_entropy)
    assert [layer.name for layer in traced.layers] == names
    if note:
        assert note in traced.layers[1].note
    assert [layer.note for layer in traced.layers if layer.name != "stack"] == [""] * (
        len(names) - (1 if note else 0))
    expected = reference(model, variables, (x, y), cross_entropy)
    for mode in ("stash", "recompute"):
        assert_exact(traced.split(range(1, len(names)), mode).value_and_grad(variables, (x, y)),
                     expected)


class LMBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(32, name="up")(nn.LayerNorm()(x))
        return x + nn.Dense(8, name="down")(nn.gelu(h))


class RematDecoder(nn.Module):
    remat: bool

    @nn.compact
    def __call__(self, x):
        block = nn.remat(LMBlock) if self.remat else LMBlock
        for i in range(3):
            x = block(name=f"block_{i}")(x)
        return nn.Dense(4, name="head")(x.mean(axis=1))


class RematLM(nn.Module):
    remat: bool = True

    @nn.compact
    def __call__(self, x):
        return RematDecoder(self.remat, name="decoder")(nn.Dense(8, name="embed")(x))


@pytest.mark.parametrize("mode", ["stash", "recompute"])
def test_a_remat_block_is_one_unit_and_rematerialises_inside_its_stage(mode):
    x, y = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 3)), jnp.arange(4) % 4
    saved = {}
    for remat in (True, False):
        model = RematLM(remat)
        variables = model.init(jax.random.PRNGKey(1), x)
        traced = jaxpipe.trace(model, variables, (x, y), cross_entropy)
        assert [layer.name for layer in traced.layers] == [
            "embed", "decoder/block_0", "decoder/block_1", "decoder/block_2", "decoder/head"]
        staged = traced.split((1, 2, 3, 4), mode)
        assert_exact(staged.value_and_grad(variables, (x, y), 2),
                     reference(model, variables, (x, y), cross_entropy, None, 2))
        saved[remat] = sum(t.nbytes for t in staged.stages(4)[2].spec.saved)
    if mode == "stash":  # the block keeps its input only, and recomputes the rest in backward
        assert saved[True] < saved[False]
    else:
        assert saved[True] == saved[False]


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(6, 6, rngs=rngs)
        self.norm = nnx.BatchNorm(6, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)

    def __call__(self, x):
        return x + self.drop(nnx.tanh(self.norm(self.lin(x))))


class NnxScanned(nnx.Module):
    """`nnx.vmap`-made stacked blocks run by `nnx.scan`, as Flax's NNX scan-over-layers guide
    writes it; params, BatchStats and the Dropout streams are all stacked."""

    def __init__(self, rngs, remat=False):
        make = nnx.split_rngs(splits=4)(nnx.vmap(NnxBlock, in_axes=0, out_axes=0))
        self.inp = nnx.Linear(5, 6, rngs=rngs)
        self.blocks = make(rngs)
        self.out = nnx.Linear(6, 3, rngs=rngs)
        self.remat = remat

    def __call__(self, x):
        step = nnx.remat(lambda h, block: block(h)) if self.remat else (lambda h, b: b(h))
        x = nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(self.inp(x), self.blocks)
        return self.out(x)


@pytest.mark.parametrize("remat", [False, True])
def test_an_nnx_scan_over_stacked_blocks_is_cut_and_its_state_restacked(remat):
    model = NnxScanned(nnx.Rngs(0, dropout=1), remat)
    x, y = jax.random.normal(jax.random.PRNGKey(0), (8, 5)), jnp.arange(8) % 3
    traced = jaxpipe.trace(model, None, (x, y), cross_entropy)
    assert [layer.name for layer in traced.layers] == [
        "inp", "blocks/0", "blocks/1", "blocks/2", "blocks/3", "out"]
    for cuts, mode, micro_batches in [((2, 4), "stash", 1), ((1, 3, 5), "recompute", 2)]:
        loss, grads, state = traced.split(cuts, mode).value_and_grad(model, (x, y), micro_batches)
        ref_loss, ref_grads, ref_state = nnx_reference(model, (x, y), cross_entropy,
                                                       micro_batches)
        assert abs(float(loss) - float(ref_loss)) <= TOL * abs(float(ref_loss))
        assert max_relative_error(grads, ref_grads) <= TOL
        assert state_error(state, ref_state) <= TOL


def test_the_scanned_lm_bundle_runs_in_a_fresh_process_on_stacked_variables(tmp_path):
    spec, variables, data, rngs, traced = lm_case("lm-scan-tiny")
    staged = traced.split((2, 3), "recompute")
    loss, grads, _ = staged.value_and_grad(variables, data, micro_batches=2)
    got_loss, got_grads, _ = run_bundle_in_fresh_process(tmp_path, staged, data, rngs,
                                                         micro_batch=2)
    assert abs(float(got_loss) - float(loss)) <= 1e-6 * abs(float(loss))
    flat = jaxpipe.tree.flatten_paths(grads, "params")
    assert got_grads["params/decoder/blocks/block/qkv/kernel"].shape == (3, 32, 96)
    assert max_relative_error([got_grads[p] for p in flat.paths], list(flat.leaves)) <= 1e-6


def test_profile_measures_every_iteration_of_the_scanned_lm():
    *_, traced = lm_case("lm-scan-tiny")
    profile = jaxpipe.profile(traced, micro_batch_sizes=(1, 2), repeats=1)
    assert [layer.name for layer in profile.layers] == SCAN_LAYERS
    assert len({layer.param_bytes for layer in profile.layers[1:4]}) == 1  # equal iterations


def test_the_zoo_scan_lm_and_the_nested_lm_are_the_same_model_cut_the_same_way():
    *_, nested = lm_case("lm-tiny")
    *_, scanned = lm_case("lm-scan-tiny")
    assert [layer.param_bytes for layer in nested.layers] == [
        layer.param_bytes for layer in scanned.layers]
    assert models.get("lm-scan-tiny").config.scan
