"""NNX models train on the local platform through `jaxpipe.fit` and `jaxpipe train`, equal to
single-process optax training of the unsplit module (micro-batch after micro-batch, its state
threaded through them in order, as `fresh.nnx_reference` runs it, jitted: `nnx.value_and_grad`
and optax on `nnx.state(model, nnx.Param)`).

- `fit` trains the NNX LM (dropout in every block) on 3 stages whose middle one has 2 replicas:
  replicas set their dropout counters by micro-batch (`runtime.replica_state`), so they draw the
  unsplit model's masks, and the final counters and keys are the unsplit model's, exactly.
- `jaxpipe train --model nnx-cnn-tiny` (BatchNorm and Dropout blocks, the zoo's setup) on 2
  stages, `--save` restored with orbax into a fresh module.
- `jaxpipe.profile` times the layers of both.

SGD with momentum, as in test_runtime (Adam's per-leaf scaling turns float rounding in
near-zero gradients into full-size steps).
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import jaxpipe
from jaxpipe import cli, models
from jaxpipe.errors import JobFailed, RngError, VariablesError
from jaxpipe.runtime.dataset import batch_indices
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.event import Fault
from jaxpipe.runtime.replica_state import averaged_paths, set_counters
from jaxpipe.runtime.zoo import training_data
from jaxpipe.staging.counters import counter_steps
from jaxpipe.staging.stage import MODES
from planners import Plan, StagePlan
from tests.jaxpipe.fresh import state_error
from tests.jaxpipe.helpers import max_relative_error

BATCH, ITERATIONS, LR, TOL = 8, 3, 0.05, 1e-5
# nnx-lm-tiny: embed, blocks/0..2, norm, head; the middle stage's two replicas take 2 of the 4
# micro-batches each.
LM_PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024, 2), StagePlan(4, 5, 1024)),
               micro_batch=2, global_batch=BATCH)
# nnx-cnn-tiny: blocks/0..2, head.
CNN_PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024, 1, "recompute")),
                micro_batch=4, global_batch=BATCH)


def single_process(model, data, loss_fn, plan, iterations=ITERATIONS, shuffle=False, seed=0):
    """Plain optax over the unsplit NNX module (a clone), on `batch_indices`' order; returns
    the trained module and the losses."""
    model = nnx.clone(model)
    x, y = (np.asarray(a) for a in data)
    optimizer = optax.sgd(LR, momentum=0.9)
    params = nnx.state(model, nnx.Param)
    opt_state = optimizer.init(params)

    @nnx.jit  # `fresh.nnx_reference`'s step, compiled once; the module's state updates in place
    def step(model, x, y):
        return nnx.value_and_grad(lambda m: loss_fn(m(x), y))(model)

    b, count = plan.micro_batch, plan.num_micro_batches
    losses = []
    for t in range(iterations):
        idx = batch_indices(len(x), plan.global_batch, seed, t, shuffle)
        total, grads = 0.0, None
        for m in range(count):
            loss, g = step(model, x[idx[m * b:(m + 1) * b]], y[idx[m * b:(m + 1) * b]])
            total += float(loss) / count
            g = jax.tree.map(lambda a: a / count, g)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        nnx.update(model, params)
        losses.append(total)
    return model, losses


def updated(model, variables):
    out = nnx.clone(model)
    nnx.update(out, variables)
    return out


def assert_same_module(got, expected):
    assert max_relative_error(nnx.state(got, nnx.Param), nnx.state(expected, nnx.Param)) <= TOL
    assert state_error(nnx.state(got, nnx.Not(nnx.Param)),
                       nnx.state(expected, nnx.Not(nnx.Param))) <= TOL


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nnx-training")
    (folder / "cnn-plan.json").write_text(json.dumps(CNN_PLAN.to_dict()))
    return folder


def common(workdir, job):
    return dict(optimizer="momentum", learning_rate=LR, batch_size=BATCH, iterations=ITERATIONS,
                store=str(workdir / "store"), progress=False, job_id=job,
                profile_cache=str(workdir / "profiles"), wait_timeout_s=60,
                run=RunConfig(log_dir=str(workdir / "logs")))


def lm_case():
    spec = models.get("nnx-lm-tiny")
    x, y = spec.make_batch(jax.random.PRNGKey(1), 2 * BATCH)
    return spec, spec.build(jax.random.PRNGKey(0)), (np.asarray(x), np.asarray(y))


def eval_data(data):
    return data[0][:4], data[1][:4]


def mean_loss(logits, targets):
    return {"loss": float(models.get("nnx-lm-tiny").loss_fn(logits, targets))}


@pytest.fixture(scope="module")
def lm_fit(workdir):
    spec, model, data = lm_case()
    before = nnx.clone(model)
    result = jaxpipe.fit(model, spec.loss_fn, data, shuffle=False, plan=LM_PLAN,
                         eval_data=eval_data(data), metrics_fn=mean_loss,
                         **common(workdir, "nnx-lm"))
    return result, model, before


def test_fit_of_an_nnx_lm_with_replicas_equals_single_process_optax(lm_fit):
    result, model, _ = lm_fit
    spec, _, data = lm_case()
    expected, losses = single_process(model, data, spec.loss_fn, LM_PLAN)
    assert isinstance(result.variables, nnx.State)
    assert_same_module(updated(model, result.variables), expected)
    np.testing.assert_allclose(result.losses, losses, rtol=TOL)
    # 3 iterations of 4 micro-batches: 12 forwards drew from every dropout stream
    counts = [int(c) for c in jax.tree.leaves(nnx.state(updated(model, result.variables),
                                                        nnx.RngCount))]
    assert counts and min(counts) >= ITERATIONS * LM_PLAN.num_micro_batches
    # scored on a clone of the trained module (its dropout streams where training left them)
    x, y = eval_data(data)
    assert result.metrics["loss"] == pytest.approx(mean_loss(nnx.clone(expected)(x), y)["loss"],
                                                   rel=TOL)


def test_fit_leaves_the_users_module_alone_and_load_variables_reads_the_same(lm_fit):
    result, model, before = lm_fit
    assert state_error(nnx.state(model), nnx.state(before)) == 0.0
    again = jaxpipe.load_variables(result.store, result.job_id)
    assert state_error(nnx.state(updated(model, again)),
                       nnx.state(updated(model, result.variables))) == 0.0


def test_a_resumed_nnx_fit_equals_an_uninterrupted_one_bitwise(lm_fit, workdir):
    """A job killed at iteration 2 (rank 1, a replica of the middle stage) and resumed with
    `resume=` ends where the uninterrupted `lm_fit` did: parameters, dropout counters, keys."""
    spec, model, data = lm_case()
    run = common(workdir, "nnx-resumed")
    interrupted = dict(run, checkpoint_every=1, run=RunConfig(
        log_dir=str(workdir / "logs"), max_restarts=0, faults=(Fault(rank=1, iteration=2),)))
    with pytest.raises(JobFailed):
        jaxpipe.fit(model, spec.loss_fn, data, shuffle=False, plan=LM_PLAN, **interrupted)
    result = jaxpipe.fit(model, spec.loss_fn, data, shuffle=False, plan=LM_PLAN,
                         resume="nnx-resumed", **dict(run, checkpoint_every=1))
    assert isinstance(result.variables, nnx.State)
    uninterrupted = lm_fit[0]
    for a, b in zip(jax.tree.leaves(result.variables), jax.tree.leaves(uninterrupted.variables),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(a) if _is_key(a) else a),
                                      np.asarray(jax.random.key_data(b) if _is_key(b) else b))
    assert result.losses == uninterrupted.losses


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@pytest.fixture(scope="module")
def cnn_cli(workdir):
    """jaxpipe train --model nnx-cnn-tiny --platform local, from a plan file, --save."""
    argv = ["train", "--model", "nnx-cnn-tiny", "--platform", "local",
            "--plan", str(workdir / "cnn-plan.json"), "--batch", str(BATCH),
            "--iterations", str(ITERATIONS), "--optimizer", "momentum", "--lr", str(LR),
            "--store", str(workdir / "store"), "--job-id", "nnx-cnn", "--no-shuffle",
            "--profile-cache", str(workdir / "profiles"), "--save", str(workdir / "saved")]
    assert cli.main(argv) == 0
    return jaxpipe.load_variables(str(workdir / "store"), "nnx-cnn")


def test_jaxpipe_train_of_the_nnx_cnn_equals_single_process_optax(cnn_cli, workdir):
    spec = models.get("nnx-cnn-tiny")
    model = spec.build(jax.random.PRNGKey(0))  # the zoo's setup: seed 0
    data, _ = training_data(spec, 0, BATCH)
    expected, _ = single_process(model, data, spec.loss_fn, CNN_PLAN)
    assert_same_module(updated(model, cnn_cli), expected)
    restored = ocp.StandardCheckpointer().restore(
        str(workdir / "saved"), nnx.to_pure_dict(nnx.state(spec.build(jax.random.PRNGKey(5)))))
    assert state_error(nnx.state(updated(model, restored)),
                       nnx.state(updated(model, cnn_cli))) == 0.0


@pytest.mark.parametrize("name", ["nnx-cnn-tiny", "nnx-lm-tiny"])
def test_profile_of_an_nnx_model(name):
    spec = models.get(name)
    model = spec.build(jax.random.PRNGKey(0))
    traced = jaxpipe.trace(model, None, spec.make_batch(jax.random.PRNGKey(1), 2), spec.loss_fn)
    profile = jaxpipe.profile(traced, [2], repeats=1, name=name)
    assert len(profile.layers) == len(traced.layers)
    assert all(layer.fwd_seconds[2] > 0 for layer in profile.layers)


@pytest.mark.parametrize("name", ["nnx-lm-tiny", "mlp"])
def test_demo_checks_nnx_and_linen_models_against_their_unsplit_gradients(name, capsys):
    assert cli.main(["demo", "--model", name, "--batch", "8", "--micro-batches", "2"]) == 0
    out = capsys.readouterr().out
    errors = [float(e) for e in re.findall(r"max relative gradient error (\S+)", out)]
    assert len(errors) == len(MODES) and max(errors) <= 1e-5, out  # one line per mode
    assert "OK: stage gradients equal the unsplit model's" in out


def test_nnx_variables_or_rngs_are_refused_before_any_work(tmp_path):
    spec, model, data = lm_case()
    run = dict(batch_size=BATCH, iterations=1, store=str(tmp_path / "store"), progress=False)
    with pytest.raises(VariablesError, match="holds its own variables"):
        jaxpipe.fit(model, spec.loss_fn, data, variables={"params": {}}, **run)
    with pytest.raises(RngError, match="own nnx.Rngs"):
        jaxpipe.fit(model, spec.loss_fn, data, rngs={"dropout": jax.random.PRNGKey(0)}, **run)
    assert not (tmp_path / "store").exists()


def test_the_counters_are_the_rng_counts_advanced_by_their_draws_per_forward():
    spec, model, data = lm_case()
    traced = jaxpipe.trace(model, None, (data[0][:2], data[1][:2]), spec.loss_fn)
    steps = counter_steps(traced)
    # every Dropout stream's count (one draw in the embedding, three per block), no key, no float
    assert sorted(steps) == sorted(p for p in traced.state.paths if p.endswith("rngs/count"))
    assert {p: int(s) for p, s in steps.items()} == {
        "state/embed/drop/rngs/count": 1, **{f"state/blocks/{i}/drop/rngs/count": 3
                                             for i in range(3)}}
    cnn = models.get("nnx-cnn-tiny")
    traced = jaxpipe.trace(cnn.build(jax.random.PRNGKey(0)), None,
                           cnn.make_batch(jax.random.PRNGKey(1), 2), cnn.loss_fn)
    assert set(counter_steps(traced)) == {f"state/blocks/{i}/drop/rngs/count" for i in range(3)}


def test_replicas_set_counters_by_micro_batch_and_never_average_integers():
    base = {"count": np.uint32(2**32 - 1), "key": np.array([7, 9], np.uint32),
            "mean": np.zeros(3, np.float32)}
    steps = {"count": np.asarray(3, np.uint32)}
    assert int(set_counters(steps, base, 2)["count"]) == (2**32 - 1 + 6) % 2**32  # wraps
    assert averaged_paths(list(base), base) == ["mean"]
