"""Pipelined training on the local platform equals single-process training, and survives
deadlines and killed ranks with the same final parameters.

The optimizer is SGD with momentum: Adam divides each gradient by its own running scale, which
turns float rounding in near-zero gradients into full-size steps, so no two float32
implementations of one Adam run agree to 1e-5.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from jaxpipe import models
from jaxpipe.errors import (
    PlanMismatchError,
    UnknownModelError,
    UnknownOptimizerError,
    UnknownPlatformError,
    UnsupportedModelError,
)
from jaxpipe.runtime.dataset import batch_indices
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.event import Fault
from jaxpipe.runtime.summary import Summary
from jaxpipe.runtime.train import TrainOptions, linen_module, open_store, train
from jaxpipe.tree import nest
from planners import Plan, StagePlan
from tests.jaxpipe.helpers import max_relative_error, reference
from transports import codec

BATCH, ITERATIONS = 16, 3
# Three stages, the middle one replicated twice, one stage recomputing: 4 functions.
PLAN = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 2, 1024, 2, "recompute"),
                    StagePlan(3, 3, 1024)), micro_batch=4, global_batch=BATCH)
# The same shape with stages 0 and 1 in dots mode (only matmul outputs kept for backward).
DOTS_PLAN = Plan(stages=(StagePlan(0, 0, 1024, 1, "dots"), StagePlan(1, 2, 1024, 2, "dots"),
                         StagePlan(3, 3, 1024)), micro_batch=4, global_batch=BATCH)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    return folder


def run(workdir, job, plan_file="plan.json", **run_config):
    options = TrainOptions(
        model="mlp", plan_file=str(workdir / plan_file), batch=BATCH, iterations=ITERATIONS,
        optimizer="momentum", learning_rate=0.05, store=str(workdir / "store"), job_id=job,
        checkpoint_every=1, profile_cache=str(workdir / "profiles"), wait_timeout_s=60,
        run=RunConfig(log_dir=str(workdir / "logs"), **run_config))
    summary = train(options, show_progress=False)
    store = open_store(str(workdir / "store"))
    params = {}
    for k in range(len(PLAN.stages)):
        key = f"jobs/{job}/ckpt/{ITERATIONS:08d}/stage{k}/params"
        params.update(codec.decode(store.get(key), key=key))
    return summary, nest(params, strip="params"), store


@pytest.fixture(scope="module")
def fault_free(workdir):
    return run(workdir, "fault-free")


def single_process_training():
    spec = models.get("mlp")
    params = spec.init(jax.random.PRNGKey(0))["params"]
    x, y, _, _ = models.digits()
    optimizer = optax.sgd(0.05, momentum=0.9)
    opt_state = optimizer.init(params)
    losses = []
    for t in range(ITERATIONS):
        idx = batch_indices(len(x), BATCH, 0, t)
        loss, grads, _ = reference(spec.module, {"params": params}, (x[idx], y[idx]),
                                   spec.loss_fn, jit=True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return params, losses


def test_pipelined_training_equals_single_process_training(fault_free):
    summary, params, _ = fault_free
    expected, losses = single_process_training()
    assert max_relative_error(params, expected) <= 1e-5
    np.testing.assert_allclose(summary.losses, losses, rtol=1e-5)
    assert summary.restarts == 0 and summary.handovers == 0
    # a plan file skips planning, but the predictions are still made (after the run)
    assert summary.has_predictions
    for key in ("measured_seconds_per_iteration", "predicted_seconds_per_iteration",
                "simulated_seconds_per_iteration", "measured_dollars_per_iteration",
                "predicted_dollars_per_iteration", "measured_run_dollars_per_iteration"):
        assert getattr(summary, key) > 0, key
    # the run's bill also pays for cold starts and compilation, which a steady iteration does not
    assert summary.measured_run_dollars_per_iteration > summary.measured_dollars_per_iteration


def test_a_plan_with_dots_stages_trains_as_single_process_training(workdir):
    (workdir / "dots-plan.json").write_text(json.dumps(DOTS_PLAN.to_dict()))
    summary, params, _ = run(workdir, "dots", plan_file="dots-plan.json")
    expected, losses = single_process_training()
    assert max_relative_error(params, expected) <= 1e-5
    np.testing.assert_allclose(summary.losses, losses, rtol=1e-5)


def test_a_finished_job_keeps_only_results_and_checkpoints(fault_free):
    summary, _, store = fault_free
    kinds = {key.split("/")[2] for key in store.list("jobs/fault-free/")}
    # problem.json is the planning problem that `jaxpipe report` replays.
    assert kinds == {"job.json", "problem.json", "ckpt", "metrics", "results"}
    stored = json.loads(store.get("jobs/fault-free/results/summary.json"))
    assert stored == json.loads(json.dumps(summary.to_dict()))
    assert Summary.from_dict(stored) == summary


def test_deadline_hand_over_gives_bitwise_the_same_parameters(workdir, fault_free):
    # An invocation limit this short leaves room for one iteration per invocation.
    summary, params, _ = run(workdir, "hand-over", invocation_seconds=0.001, startup_seconds=0)
    assert summary.handovers == ITERATIONS - 1
    assert summary.invocations == ITERATIONS
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fault_free[1])):
        np.testing.assert_array_equal(a, b)


def test_a_rank_killed_mid_iteration_is_recovered_from_the_last_checkpoint(workdir, fault_free):
    summary, params, store = run(workdir, "killed", faults=(Fault(rank=2, iteration=1),))
    assert summary.restarts == 1
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fault_free[1])):
        np.testing.assert_array_equal(a, b)
    assert not store.list("jobs/killed/run/")


@pytest.mark.parametrize("change, error, message", [
    ({"model": "gpt5"}, UnknownModelError, "unknown model"),
    ({"optimizer": "lion9"}, UnknownOptimizerError, "unknown optimizer"),
    ({"platform": "azure"}, UnknownPlatformError, "unknown platform"),
    ({"batch": 12}, PlanMismatchError, "the plan is for batch 16"),
])
def test_bad_input_is_refused_before_any_function_starts(workdir, change, error, message):
    options = TrainOptions(**{"model": "mlp", "plan_file": str(workdir / "plan.json"),
                                     "batch": BATCH, "store": str(workdir / "refused"),
                                     "profile_cache": str(workdir / "profiles"), **change})
    with pytest.raises(error, match=message):
        train(options, show_progress=False)
    assert not (workdir / "refused").exists() or not open_store(
        str(workdir / "refused")).list("jobs/")


@pytest.mark.parametrize("plan, message", [
    (Plan(stages=(StagePlan(0, 2, 1024),), micro_batch=4, global_batch=BATCH),
     "covers 3 layers"),
    (Plan(stages=(StagePlan(0, 3, 1024, 3),), micro_batch=4, global_batch=BATCH),
     "do not divide over 3 replicas"),
    (Plan(stages=(StagePlan(0, 3, 512),), micro_batch=4, global_batch=BATCH,
          peak_memory_mb=(900.0,)), "above its 512 MB cap"),
])
def test_plans_that_cannot_run_are_refused(workdir, plan, message, tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    options = TrainOptions(model="mlp", plan_file=str(tmp_path / "plan.json"), batch=BATCH,
                           store=str(tmp_path / "store"),
                           profile_cache=str(workdir / "profiles"))
    with pytest.raises(PlanMismatchError, match=message):
        train(options, show_progress=False)


def test_a_model_the_runtime_cannot_train_is_refused_by_kind():
    mlp = models.get("mlp-tiny")
    assert linen_module(mlp) is mlp.module
    builder = dataclasses.replace(mlp, module=lambda key: None)  # an NNX family's shape
    with pytest.raises(UnsupportedModelError, match="'mlp-tiny' is an NNX model"):
        linen_module(builder)
