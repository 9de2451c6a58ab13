"""`jaxpipe.fit` and `jaxpipe train` on a model that is not in the zoo: the trained variables
equal single-process optax training of the unsplit model on the documented example order, with
and without shuffling; a training set larger than stage 0's data cache streams; a resumed job
equals an uninterrupted one bitwise; `--save` restores with orbax; eval metrics are reported.

Three local jobs (plus one interrupted) share the module-scoped fixtures: each spawns worker
processes. The fit job passes an optax object, global-norm clipping chained with AdamW on a
warm-up cosine schedule (eps 1e-3: Adam's per-leaf scaling would otherwise turn float rounding
in near-zero gradients into full-size steps); the CLI and resumed jobs SGD with momentum, by
name.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

import jaxpipe
from jaxpipe import cli
from jaxpipe.errors import JobFailed
from jaxpipe.runtime.dataset import batch_indices
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.event import Fault
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.runtime.train import open_store
from planners import Plan, StagePlan
from tests.jaxpipe.helpers import cross_entropy, max_relative_error, reference

N, BATCH, ITERATIONS, LR = 40, 16, 4, 0.05
# Three stages, the middle one with two replicas (4 micro-batches of 4: 2 per replica).
PLAN = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 2, 1024, 2), StagePlan(3, 3, 1024)),
            micro_batch=4, global_batch=BATCH)


class Tower(nn.Module):
    """Three Dense blocks and a head, each a named submodule: four layers to cut."""

    def setup(self):
        self.block0 = nn.Dense(12)
        self.block1 = nn.Dense(12)
        self.block2 = nn.Dense(12)
        self.head = nn.Dense(3)

    def __call__(self, x):
        h = nn.tanh(self.block0(x))
        h = nn.tanh(self.block1(h))
        return self.head(nn.tanh(self.block2(h)) + h)


def dataset(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (np.argmax(x[:, :3], axis=1)).astype(np.int32)
    return x, y


def initial_variables():
    return dict(Tower().init(jax.random.PRNGKey(0), np.zeros((1, 5), np.float32)))


def accuracy(logits, labels):
    return {"accuracy": float(np.mean(np.argmax(np.asarray(logits), -1) == labels))}


def make_setup():
    """What `jaxpipe train --model tests.jaxpipe.test_fit:make_setup` trains."""
    return jaxpipe.TrainingSetup(Tower(), cross_entropy, dataset(), initial_variables(),
                                 eval_data=dataset(12, seed=1), metrics_fn=accuracy)


def clip_then_adamw():
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, warmup_steps=2, decay_steps=8)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, eps=1e-3, weight_decay=0.1))


def single_process(shuffle, optimizer=None, iterations=ITERATIONS):
    """Plain optax over the unsplit model, on `batch_indices`' documented order."""
    x, y = dataset()
    params = initial_variables()["params"]
    optimizer = optimizer or optax.sgd(LR, momentum=0.9)
    opt_state = optimizer.init(params)
    losses = []
    for t in range(iterations):
        idx = batch_indices(N, BATCH, 0, t, shuffle)
        loss, grads, _ = reference(Tower(), {"params": params}, (x[idx], y[idx]),
                                   cross_entropy, jit=True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return params, losses


def common(workdir, **more):
    return dict(optimizer="momentum", learning_rate=LR, batch_size=BATCH, iterations=ITERATIONS,
                plan=PLAN, store=str(workdir / "store"), progress=False,
                profile_cache=str(workdir / "profiles"), wait_timeout_s=60,
                run=RunConfig(log_dir=str(workdir / "logs")), **more)


# Stage 0 keeps at most 2 shards of 8 examples: the 40 examples (5 shards) stream through it.
STREAMING = dict(shard_size=8, data_cache_mb=1e-4)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    x, y = dataset()
    np.savez(folder / "data.npz", features=x, labels=y)
    return folder


@pytest.fixture(scope="module")
def in_order(workdir):
    """fit with an optax chain, shuffle=False, scored every 2 iterations."""
    run = dict(common(workdir, job_id="in-order", checkpoint_every=2),
               optimizer=clip_then_adamw())
    return jaxpipe.fit(Tower(), cross_entropy, dataset(), initial_variables(), shuffle=False,
                       eval_data=dataset(12, seed=1), metrics_fn=accuracy, eval_every=2, **run)


@pytest.fixture(scope="module")
def from_cli(workdir):
    """jaxpipe train --model module:function --data FILE.npz --save DIR, shuffled, streaming."""
    argv = ["train", "--model", "tests.jaxpipe.test_fit:make_setup",
            "--data", str(workdir / "data.npz"), "--inputs", "features", "--targets", "labels",
            "--plan", str(workdir / "plan.json"), "--batch", str(BATCH),
            "--iterations", str(ITERATIONS), "--optimizer", "momentum", "--lr", str(LR),
            "--store", str(workdir / "store"), "--job-id", "cli", "--checkpoint-every", "2",
            "--profile-cache", str(workdir / "profiles"), "--shard-size", "8",
            "--data-cache-mb", "1e-4", "--save", str(workdir / "saved")]
    assert cli.main(argv) == 0
    return jaxpipe.load_variables(str(workdir / "store"), "cli")


def test_fit_with_an_optax_chain_equals_single_process_optax_on_examples_in_order(in_order):
    expected, losses = single_process(shuffle=False, optimizer=clip_then_adamw())
    assert max_relative_error(in_order.variables["params"], expected) <= 1e-5
    np.testing.assert_allclose(in_order.losses, losses, rtol=1e-5)
    assert in_order.plan == JobSpec.from_json(open_store(in_order.store).get(
        Keys("in-order").spec)).plan


def test_eval_metrics_are_reported_every_k_iterations_and_at_the_end(in_order):
    assert sorted(in_order.summary.eval_metrics) == [2, 4]
    expected, _ = single_process(shuffle=False, optimizer=clip_then_adamw())
    logits = Tower().apply({"params": expected}, dataset(12, seed=1)[0])
    assert in_order.metrics == accuracy(logits, dataset(12, seed=1)[1])
    stored = json.loads(open_store(in_order.store).get(Keys("in-order").summary))
    assert stored["eval_metrics"]["4"] == in_order.metrics


def test_load_variables_gives_the_result_variables(in_order):
    again = jaxpipe.load_variables(in_order.store, in_order.job_id)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(in_order.variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_cli_trains_a_shuffled_streamed_dataset_to_single_process_optax(from_cli, workdir):
    expected, _ = single_process(shuffle=True)
    assert max_relative_error(from_cli["params"], expected) <= 1e-5
    spec = JobSpec.from_json(open_store(str(workdir / "store")).get(Keys("cli").spec))
    assert spec.shuffle and spec.shard_size == 8 and spec.shard_cache == 2  # 2 of 5 shards


def test_saved_variables_restore_with_orbax_into_the_trained_model(from_cli, workdir):
    import orbax.checkpoint as ocp

    target = jax.tree.map(np.zeros_like, initial_variables())
    restored = ocp.StandardCheckpointer().restore(str(workdir / "saved"), target)
    x, y = dataset()
    loss = cross_entropy(Tower().apply(restored, x), y)
    assert float(loss) == float(cross_entropy(Tower().apply(from_cli, x), y))


def test_a_resumed_fit_equals_an_uninterrupted_one_bitwise(from_cli, workdir):
    run = common(workdir, job_id="resumed", checkpoint_every=2, **STREAMING)
    interrupted = dict(run, run=RunConfig(log_dir=str(workdir / "logs"), max_restarts=0,
                                          faults=(Fault(rank=0, iteration=3),)))
    with pytest.raises(JobFailed):
        jaxpipe.fit(Tower(), cross_entropy, dataset(), initial_variables(), **interrupted)
    result = jaxpipe.fit(Tower(), cross_entropy, dataset(), initial_variables(),
                         resume="resumed", **run)
    for a, b in zip(jax.tree.leaves(result.variables), jax.tree.leaves(from_cli), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(result.losses) == ITERATIONS
