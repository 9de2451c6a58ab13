"""Every zoo model (tiny config), cut at every kind of layer boundary, in both modes, gives the
unsplit model's loss, gradients and new state.

A kind of boundary is the pair of layer names on its two sides with numbers dropped
("cell#_normal#" -> "cell#_reduction"): cuts of one kind split the same kinds of programs, so
one cut of each kind is checked (the first); on AmoebaNet that halves the slowest sweep.

Compiling a whole tiny ResNet or AmoebaNet takes seconds, and every cut is two new
programs; so the cut sweep runs the stage functions op by op (`jax.disable_jit`, where
each primitive compiles once for all cuts) against the op-by-op unsplit model, and the jitted
programs are checked separately with one stage per layer, which compiles every layer once, on
one model of each family (the others share its layer kinds).
"""

from __future__ import annotations

import functools
import re

import jax
import pytest

import jaxpipe
from jaxpipe import models
from tests.jaxpipe.helpers import max_relative_error, reference

LINEN_TINY = [name for name in models.names()
              if name.endswith("-tiny") and models.get(name).kind == "linen"]  # NNX: test_nnx
# Op by op, flax's lifted `nn.scan` draws other dropout masks than the compiled scan does, so
# the scanned LM is checked against the jitted model only (below, and in test_scan.py).
TINY = [name for name in LINEN_TINY if name != "lm-scan-tiny"]
TOL = 1e-5
BATCH = 4


@functools.cache
def case(name):
    spec = models.get(name)
    variables = spec.init(jax.random.PRNGKey(0))
    batch = spec.make_batch(jax.random.PRNGKey(1), BATCH)
    rngs = spec.rngs(jax.random.PRNGKey(2))
    traced = jaxpipe.trace(spec.module, variables, batch, spec.loss_fn, rngs=rngs)
    return spec, variables, batch, rngs, traced


def assert_matches(spec, got, expected, where):
    (loss, grads, state), (ref_loss, ref_grads, ref_state) = got, expected
    assert abs(float(loss) - float(ref_loss)) <= TOL * abs(float(ref_loss)), where
    assert max_relative_error(grads, ref_grads) <= TOL, where
    if spec.has_state:
        assert max_relative_error(state, ref_state) <= TOL, where


def one_cut_per_kind(layers) -> list[int]:
    """The first cut of each kind of boundary (the layer names either side, numbers dropped)."""
    kinds = [re.sub(r"\d+", "#", layer.name) for layer in layers]
    first: dict[tuple[str, str], int] = {}
    for cut in range(1, len(layers)):
        first.setdefault((kinds[cut - 1], kinds[cut]), cut)
    return sorted(first.values())


@pytest.mark.parametrize("name", TINY)
def test_every_kind_of_cut_in_both_modes_matches_the_unsplit_model(name):
    spec, variables, batch, rngs, traced = case(name)
    assert len(traced.layers) >= 3, "a tiny model should still have several layers"
    with jax.disable_jit():
        expected = reference(spec.module, variables, batch, spec.loss_fn, rngs)
        for mode in ("stash", "recompute"):
            for cut in one_cut_per_kind(traced.layers):
                got = traced.split([cut], mode).value_and_grad(variables, batch)
                assert_matches(spec, got, expected,
                               f"{name} cut at {cut} ({traced.layers[cut].name}), {mode}")


@pytest.mark.parametrize("mode", ["stash", "dots", "recompute"])
@pytest.mark.parametrize(
    "name", ["mlp-tiny", "resnet50-tiny", "amoebanet18-tiny", "bert-base-tiny", "lm-scan-tiny"])
def test_jitted_stages_one_per_layer_with_micro_batches(name, mode):
    spec, variables, batch, rngs, traced = case(name)
    cuts = list(range(1, len(traced.layers)))
    expected = reference(spec.module, variables, batch, spec.loss_fn, rngs, 2, jit=True)
    got = traced.split(cuts, mode).value_and_grad(variables, batch, micro_batches=2)
    assert_matches(spec, got, expected, f"{name}, one stage per layer, {mode}")


def test_bert_at_one_sample_per_micro_batch_matches_the_unsplit_model():
    # Regression: at batch size 1 JAX traces BERT with a different number of equations
    # ("the model's structure changes with the batch size (2 -> 1)"); the layers are the same.
    spec, variables, batch, rngs, traced = case("bert-base-tiny")
    with jax.disable_jit():
        expected = reference(spec.module, variables, batch, spec.loss_fn, rngs, BATCH)
        got = traced.split([2], "stash").value_and_grad(variables, batch, micro_batches=BATCH)
    assert_matches(spec, got, expected, "bert-base-tiny, micro-batches of one sample")
