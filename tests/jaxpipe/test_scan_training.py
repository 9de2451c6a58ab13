"""The scan-over-layers LM trains on the local platform (`jaxpipe train --model lm-scan-tiny`),
its scan unrolled into one unit per block and cut between them, equal to single-process optax
training of the unsplit, scanned model: its stacked parameters come back stacked, and dropout
draws the per-micro-batch keys the runtime documents (`dataset.micro_batch_keys`).

The oracle is the jitted unsplit step (op by op, `nn.scan` draws other dropout masks; see
test_scan), micro-batch by micro-batch as `helpers.reference` runs it, compiled
once. SGD with momentum, as in test_runtime.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxpipe
from jaxpipe import cli, models
from jaxpipe.runtime.dataset import batch_indices, iteration_key
from jaxpipe.runtime.zoo import training_data
from planners import Plan, StagePlan
from tests.jaxpipe.helpers import max_relative_error

BATCH, ITERATIONS, LR = 8, 3, 0.05
# decoder/embed, decoder/blocks/0..2, decoder/norm, decoder/head: blocks 1 and 2 (two slices
# of every stacked parameter) on a stage with two replicas.
PLAN = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024, 2), StagePlan(4, 5, 1024)),
            micro_batch=2, global_batch=BATCH)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan-training")
    (folder / "plan.json").write_text(json.dumps(PLAN.to_dict()))
    argv = ["train", "--model", "lm-scan-tiny", "--platform", "local",
            "--plan", str(folder / "plan.json"), "--batch", str(BATCH),
            "--iterations", str(ITERATIONS), "--optimizer", "momentum", "--lr", str(LR),
            "--store", str(folder / "store"), "--job-id", "lm-scan", "--no-shuffle",
            "--profile-cache", str(folder / "profiles")]
    assert cli.main(argv) == 0
    return jaxpipe.load_variables(str(folder / "store"), "lm-scan")


def single_process():
    """The zoo's setup (seed 0) trained by plain optax on the unsplit scanned model, one jitted
    step per micro-batch m with dropout key `fold_in(iteration_key(0, t), m)`."""
    spec = models.get("lm-scan-tiny")
    params = spec.init(jax.random.PRNGKey(0))["params"]
    (x, y), _ = training_data(spec, 0, BATCH)
    x, y = np.asarray(x), np.asarray(y)
    optimizer = optax.sgd(LR, momentum=0.9)
    opt_state = optimizer.init(params)

    @jax.jit
    def grad(params, x, y, key):
        return jax.grad(lambda p: spec.loss_fn(
            spec.module.apply({"params": p}, x, rngs={"dropout": key}), y))(params)

    b, count = PLAN.micro_batch, PLAN.num_micro_batches
    for t in range(ITERATIONS):
        idx = batch_indices(len(x), BATCH, 0, t, False)
        grads = jax.tree.map(jnp.zeros_like, params)
        for m in range(count):
            rows = idx[m * b:(m + 1) * b]
            g = grad(params, x[rows], y[rows], jax.random.fold_in(iteration_key(0, t), m))
            grads = jax.tree.map(lambda a, g: a + g / count, grads, g)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_training_the_scanned_lm_equals_single_process_optax(trained):
    expected = single_process()
    assert jax.tree.structure(trained["params"]) == jax.tree.structure(expected)
    kernel = trained["params"]["decoder"]["blocks"]["block"]["qkv"]["kernel"]
    assert kernel.shape[0] == 3  # stacked back from the stages' slices
    assert max_relative_error(trained["params"], expected) <= 1e-5


def test_profile_of_the_scanned_lm_times_each_unrolled_block():
    spec = models.get("lm-scan-tiny")
    traced = jaxpipe.trace(spec.module, spec.init(jax.random.PRNGKey(0)),
                           spec.make_batch(jax.random.PRNGKey(1), 2), spec.loss_fn,
                           rngs=spec.rngs(jax.random.PRNGKey(2)))
    profile = jaxpipe.profile(traced, [2], repeats=1, name="lm-scan-tiny")
    assert len(profile.layers) == len(traced.layers) == 6
    blocks = profile.layers[1:4]
    assert all(layer.fwd_seconds[2] > 0 and layer.param_bytes == blocks[0].param_bytes
               for layer in blocks)
