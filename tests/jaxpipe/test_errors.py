"""Bad input is refused before any work, with a message that says what is wrong and what to do."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jaxpipe
from jaxpipe.errors import NoLayersError, VariablesError
from tests.jaxpipe.helpers import cross_entropy, skipnet_case


class Flat(nn.Module):
    """Everything in the top-level __call__: no submodule, so nothing to cut at."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (x.shape[-1], 3))
        return jnp.tanh(x @ w)


def test_a_model_without_submodules_is_refused():
    model = Flat()
    x, y = jnp.ones((4, 5)), jnp.zeros((4,), jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(NoLayersError, match="named submodule"):
        jaxpipe.trace(model, variables, (x, y), cross_entropy)


@pytest.fixture(scope="module")
def traced():
    model, variables, batch, _ = skipnet_case()
    return jaxpipe.trace(model, variables, batch, cross_entropy)


@pytest.mark.parametrize("cuts, message", [
    ((0,), "out of range"),
    ((4,), "out of range"),
    ((-1,), "out of range"),
    ((3, 1), "not sorted; write them as \\[1, 3\\]"),
    ((2, 2), "more than once"),
    ("ab", "sequence of layer indices"),
])
def test_bad_cuts_are_refused(traced, cuts, message):
    with pytest.raises(jaxpipe.CutError, match=message):
        traced.split(cuts)


def test_every_problem_with_the_cuts_is_listed_at_once(traced):
    with pytest.raises(jaxpipe.CutError) as info:
        traced.split((9, 2, 2))
    text = str(info.value)
    assert "out of range" in text and "not sorted" in text and "more than once" in text


def test_unknown_mode_is_refused(traced):
    with pytest.raises(jaxpipe.CutError, match="modes must be one of"):
        traced.split((1,), "checkpoint")
    with pytest.raises(jaxpipe.CutError, match="one per stage"):
        traced.split((1,), ["stash"])


def test_batch_leaves_of_different_sizes_are_refused():
    model, variables, (x, y), _ = skipnet_case()
    with pytest.raises(jaxpipe.BatchError, match="same leading batch size"):
        jaxpipe.trace(model, variables, (x, y[:5]), cross_entropy)


def test_micro_batches_must_divide_the_batch(traced):
    _, variables, batch, _ = skipnet_case()
    with pytest.raises(jaxpipe.BatchError, match="does not divide into 3"):
        traced.split((1,)).value_and_grad(variables, batch, micro_batches=3)
    with pytest.raises(jaxpipe.BatchError, match="positive integer"):
        traced.split((1,)).value_and_grad(variables, batch, micro_batches=0)


def test_variables_of_another_model_are_refused(traced):
    _, _, batch, _ = skipnet_case()
    other = {"params": {"dense": {"kernel": jnp.ones((6, 4))}}}
    with pytest.raises(VariablesError, match="does not match the traced model"):
        traced.split((1,)).value_and_grad(other, batch)
