"""Optimizer programs per stage: updating each stage's slice equals one optax update of the
whole model; gradient accumulation sums; the state survives its flat path-named form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpipe.errors import OptimizerStateError, UnknownOptimizerError
from jaxpipe.runtime import optim
from jaxpipe.tree import flatten_paths

LR = 0.1

# The oracle of each name: the optax optimizer it stands for, built here independently.
ORACLES = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr),
}

# A model of three stages, as a worker holds it: {path: array}, each stage a slice of paths.
STAGES = (
    ("params/block0/Dense_0/kernel", "params/block0/Dense_0/bias"),
    ("params/block1/Dense_0/kernel", "params/block1/Dense_0/bias", "params/block1/scale"),
    ("params/head/kernel",),
)
SHAPES = {
    "params/block0/Dense_0/kernel": (3, 4), "params/block0/Dense_0/bias": (4,),
    "params/block1/Dense_0/kernel": (4, 4), "params/block1/Dense_0/bias": (4,),
    "params/block1/scale": (), "params/head/kernel": (4, 2),
}


def model_params(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {p: jnp.asarray(rng.normal(size=s), jnp.float32) for p, s in SHAPES.items()}


def gradients(steps: int, seed: int = 1) -> list[dict[str, jax.Array]]:
    """Gradients of several iterations, some entries exactly zero (Adam's hard case)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        g = {p: rng.normal(size=s) * (rng.random(size=s) > 0.2) for p, s in SHAPES.items()}
        out.append({p: jnp.asarray(v, jnp.float32) for p, v in g.items()})
    return out


def test_the_table_offers_exactly_the_element_wise_optimizers_tested_here():
    assert set(optim.OPTIMIZERS) == set(ORACLES)


def test_an_unknown_name_is_refused_with_the_choices():
    with pytest.raises(UnknownOptimizerError, match=r"'lion'.*adam.*adamw.*momentum.*sgd"):
        optim.make("lion", LR)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_per_stage_steps_equal_one_optax_update_of_the_whole_model(name):
    whole = ORACLES[name](LR)
    params = model_params()
    state = whole.init(params)
    expected_params = []
    for grads in gradients(3):
        updates, state = whole.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        expected_params.append(params)
    expected_state = state

    stage_params = [{p: model_params()[p] for p in paths} for paths in STAGES]
    optimizers = [optim.make(name, LR) for _ in STAGES]
    steps = [optim.make_step(o) for o in optimizers]
    states = [o.init(p) for o, p in zip(optimizers, stage_params)]
    for t, grads in enumerate(gradients(3)):
        for k, paths in enumerate(STAGES):
            mine = {p: grads[p] for p in paths}
            stage_params[k], states[k] = steps[k](mine, states[k], stage_params[k])
        got = {p: v for part in stage_params for p, v in part.items()}
        assert set(got) == set(SHAPES)
        for p in SHAPES:
            np.testing.assert_allclose(got[p], expected_params[t][p], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{name}, iteration {t}, {p}")
    # the stages' states are the whole model's state, cut by path
    whole_state = optim.state_to_leaves(expected_state)
    stage_state = {}
    for s in states:
        stage_state.update(optim.state_to_leaves(s))
    assert set(stage_state) == set(whole_state)
    for path, value in whole_state.items():
        np.testing.assert_allclose(stage_state[path], value, rtol=1e-6, atol=1e-7,
                                   err_msg=f"{name}: optimizer state {path}")


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_the_step_moves_parameters_when_gradients_are_not_zero(name):
    # guards the oracle test against a step that returns its inputs (sgd/momentum/adam/adamw
    # all move a parameter whose gradient is 1)
    optimizer = optim.make(name, LR)
    params = {"w": jnp.zeros((2,), jnp.float32)}
    new, _ = optim.make_step(optimizer)({"w": jnp.ones((2,), jnp.float32)},
                                         optimizer.init(params), params)
    assert np.all(np.asarray(new["w"]) < 0)


def test_sgd_steps_by_the_learning_rate_times_the_gradient():
    optimizer = optim.make("sgd", 0.5)
    params = {"w": jnp.asarray([1.0, 2.0])}
    new, _ = optim.make_step(optimizer)({"w": jnp.asarray([2.0, -4.0])},
                                         optimizer.init(params), params)
    np.testing.assert_array_equal(new["w"], [0.0, 4.0])


def test_accumulate_sums_element_wise():
    a = [jnp.asarray([1.0, 2.0]), jnp.asarray([[3.0]])]
    b = [jnp.asarray([10.0, 20.0]), jnp.asarray([[30.0]])]
    total = optim.accumulate(a, b)
    assert len(total) == 2
    np.testing.assert_array_equal(total[0], [11.0, 22.0])
    np.testing.assert_array_equal(total[1], [[33.0]])


def test_accumulate_refuses_lists_of_different_lengths():
    with pytest.raises(ValueError):
        optim.accumulate([jnp.ones(2)], [jnp.ones(2), jnp.ones(2)])


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_accumulated_micro_batch_gradients_step_like_their_sum(name):
    micro = gradients(4, seed=5)
    paths = list(SHAPES)
    summed = [micro[0][p] for p in paths]
    for g in micro[1:]:
        summed = optim.accumulate(summed, [g[p] for p in paths])
    whole = ORACLES[name](LR)
    params = model_params()
    total = {p: sum(np.asarray(g[p], np.float64) for g in micro) for p in paths}
    updates, _ = whole.update({p: jnp.asarray(v, jnp.float32) for p, v in total.items()},
                              whole.init(params), params)
    expected = optax.apply_updates(params, updates)
    optimizer = optim.make(name, LR)
    got, _ = optim.make_step(optimizer)(dict(zip(paths, summed)), optimizer.init(params), params)
    for p in paths:
        np.testing.assert_allclose(got[p], expected[p], rtol=1e-5, atol=1e-6, err_msg=p)


def trained_state(name: str, params: dict[str, jax.Array]):
    optimizer = optim.make(name, LR)
    state, step = optimizer.init(params), optim.make_step(optimizer)
    for grads in gradients(2):
        params, state = step(grads, state, params)
    return optimizer, params, state


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_the_state_survives_its_flat_form(name):
    optimizer, params, state = trained_state(name, model_params())
    leaves = optim.state_to_leaves(state)
    assert all(isinstance(p, str) for p in leaves)
    assert len(leaves) == len(jax.tree.leaves(state))
    back = optim.state_from_leaves(optimizer, params, {p: np.asarray(v) for p, v in
                                                       leaves.items()})
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype


def test_state_paths_name_the_parameters_they_belong_to():
    _, params, state = trained_state("adam", model_params())
    paths = set(optim.state_to_leaves(state))
    assert paths == set(flatten_paths(state).paths)
    for p in SHAPES:
        assert sum(path.endswith(p) for path in paths) == 2  # Adam's mu and nu


def test_a_state_of_another_optimizer_is_refused():
    _, params, state = trained_state("sgd", model_params())
    with pytest.raises(OptimizerStateError, match="another optimizer"):
        optim.state_from_leaves(optim.make("adam", LR), params, optim.state_to_leaves(state))
