"""A training set larger than a function's memory cap trains.

The local platform caps each rank's data segment (`RLIMIT_DATA`) at its stage's memory, here
the smallest option, 512 MB. The training set is 655 MB of float32 features (10000 examples
of 16384), so no rank could hold it: stage 0 streams it through its LRU shard cache
(`dataset.ShardReader`, sized by `dataset.cache_shards`). Shuffled batches reach shards all
over the set. The losses and the trained parameters equal a single-process optax loop over
the same batches (`dataset.batch_indices`), and the driver uploads the set shard by shard
without holding a second copy of it.
"""

from __future__ import annotations

import resource

import flax.linen as nn
import jax
import numpy as np
import optax

import jaxpipe
from jaxpipe.runtime.dataset import batch_indices
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.runtime.train import open_store
from planners import Plan, StagePlan
from tests.jaxpipe.helpers import cross_entropy, max_relative_error, reference

N, FEATURES, BATCH, ITERATIONS, LR, SHARD = 10_000, 16_384, 16, 3, 0.05, 256
MEMORY_MB = 512
PLAN = Plan(stages=(StagePlan(0, 0, MEMORY_MB), StagePlan(1, 1, MEMORY_MB)),
            micro_batch=4, global_batch=BATCH)


class Wide(nn.Module):
    """A Dense layer over 16384 features and a head: two layers to cut."""

    def setup(self):
        self.hidden = nn.Dense(8)
        self.head = nn.Dense(3)

    def __call__(self, x):
        return self.head(nn.tanh(self.hidden(x)))


def dataset() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, FEATURES), dtype=np.float32)
    return x, np.argmax(x[:, :3], axis=1).astype(np.int32)


def initial_variables():
    return dict(Wide().init(jax.random.PRNGKey(0), np.zeros((1, FEATURES), np.float32)))


def single_process(x, y):
    """Plain optax over the unsplit model, on `batch_indices`' shuffled order."""
    params = initial_variables()["params"]
    optimizer = optax.sgd(LR, momentum=0.9)
    opt_state = optimizer.init(params)
    losses = []
    for t in range(ITERATIONS):
        idx = batch_indices(N, BATCH, 0, t, shuffle=True)
        loss, grads, _ = reference(Wide(), {"params": params}, (x[idx], y[idx]),
                                   cross_entropy, jit=True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return params, losses


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


def test_a_training_set_larger_than_the_memory_cap_streams_and_trains(tmp_path):
    x, y = dataset()
    nbytes = x.nbytes + y.nbytes
    assert nbytes > MEMORY_MB * 2**20  # no rank could hold it
    before = peak_rss_bytes()
    result = jaxpipe.fit(Wide(), cross_entropy, (x, y), initial_variables(),
                         optimizer="momentum", learning_rate=LR, batch_size=BATCH,
                         iterations=ITERATIONS, shuffle=True, seed=0, plan=PLAN,
                         shard_size=SHARD, store=str(tmp_path / "store"), progress=False,
                         profile_cache=str(tmp_path / "profiles"), wait_timeout_s=120,
                         job_id="big", run=RunConfig(log_dir=str(tmp_path / "logs")))
    # The driver held the set and one shard at a time, never a second copy of the set.
    assert peak_rss_bytes() - before < nbytes / 2
    spec = JobSpec.from_json(open_store(result.store).get(Keys("big").spec))
    shards = -(-N // SHARD)
    assert spec.shard_cache is not None and spec.shard_cache * SHARD * FEATURES * 4 < (
        MEMORY_MB * 2**20 / 2) and spec.shard_cache < shards
    expected, losses = single_process(x, y)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5)
    assert max_relative_error(result.variables["params"], expected) <= 1e-5
