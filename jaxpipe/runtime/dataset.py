"""Training data in the store: shards written once, micro-batches read deterministically.

The order of the examples (B the global batch, N the training set's size, t the iteration):

    shuffle=False   iteration t uses examples [t*B, (t+1)*B) modulo N, in order
    shuffle=True    an endless stream that visits the training set in a fresh permutation
                    every epoch, `numpy.random.default_rng([seed, epoch]).permutation(N)`;
                    iteration t uses positions [t*B, (t+1)*B) of that stream

Micro-batch m of an iteration is its m-th slice of b = B/M examples. Workers and the
single-process reference both call `batch_indices`, so they see exactly the same examples, and
the same dropout keys (`micro_batch_keys`).

The shards are `shard_size` consecutive examples each. Stage 0's `ShardReader` keeps at most
`capacity` shards (least recently used out first), so a training set larger than a function's
memory streams through it; `cache_shards` is the rule that sizes it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import jax
import numpy as np

from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.job import Keys
from transports import ObjectStore, codec

__all__ = ["ShardReader", "batch_indices", "cache_shards", "micro_batch_keys", "write_shards"]


def batch_indices(num_samples: int, global_batch: int, seed: int, t: int,
                  shuffle: bool = True) -> np.ndarray:
    """Indices of the examples of iteration `t`, in the order of the module docstring.

    Example:
      >>> batch_indices(5, 3, seed=0, t=1, shuffle=False)  # examples [3, 6) modulo 5
      array([3, 4, 0])
      >>> sorted(batch_indices(6, 6, seed=0, t=0).tolist())  # one epoch: a permutation
      [0, 1, 2, 3, 4, 5]
    """
    start = t * global_batch
    if not shuffle:
        return (start + np.arange(global_batch)) % num_samples
    out: list[int] = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_samples)
        order = np.random.default_rng([seed, epoch]).permutation(num_samples)
        out.extend(order[offset : offset + global_batch - len(out)])
    return np.asarray(out)


def micro_batch_keys(seed: int, t: int, micro_batch: int, count: int,
                     names: Sequence[str]) -> list[jax.Array]:
    """Raw PRNG keys of micro-batch m of iteration t, one per rng collection name.

    Matches `jaxpipe.staging.reference.micro_batches` fed with the iteration's key
    `fold_in(PRNGKey(seed), t)`: the key itself for one micro-batch, `fold_in(key, m)` otherwise.
    """
    key = jax.random.fold_in(jax.random.PRNGKey(seed), t)
    key = key if count == 1 else jax.random.fold_in(key, micro_batch)
    return [key for _ in names]


def iteration_key(seed: int, t: int) -> jax.Array:
    """The iteration's base PRNG key, before the per-micro-batch fold."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), t)


def write_shards(store: ObjectStore, keys: Keys, leaves: Sequence[np.ndarray],
                 shard_size: int) -> int:
    """Writes the dataset's leaves (each with a leading sample axis) as shards; returns count."""
    n = len(leaves[0])
    count = -(-n // shard_size)
    for i in range(count):
        part = {f"leaf{j}": np.ascontiguousarray(x[i * shard_size:(i + 1) * shard_size])
                for j, x in enumerate(leaves)}
        store.put(keys.shard(i), codec.encode(part))
    return count


def cache_shards(num_samples: int, shard_size: int, bytes_per_example: float,
                 budget_bytes: float) -> int:
    """How many shards stage 0's reader keeps: every shard if the whole training set fits in
    `budget_bytes`, else as many as fit, at least 2 (a micro-batch across a shard boundary).

    Example:
      >>> cache_shards(1000, 100, 4.0, budget_bytes=1e6)  # 4 kB of data: all 10 shards
      10
      >>> cache_shards(1000, 100, 4.0, budget_bytes=1200)  # 400 B a shard: 3 fit
      3
    """
    count = -(-num_samples // shard_size)
    shard_bytes = shard_size * bytes_per_example
    if count * shard_bytes <= budget_bytes:
        return count
    return max(2, min(count, int(budget_bytes // max(shard_bytes, 1.0))))


class ShardReader:
    """Reads examples by index from the shards, keeping the `capacity` most recently used
    shards (None: every shard read). `fetched` counts the shards downloaded."""

    def __init__(self, store: ObjectStore, keys: Keys, shard_size: int, timeout: float,
                 capacity: int | None = None):
        self.store, self.keys, self.shard_size, self.timeout = store, keys, shard_size, timeout
        self.capacity = capacity
        self.fetched = 0
        self._shards: OrderedDict[int, list[np.ndarray]] = OrderedDict()

    def take(self, indices: np.ndarray) -> list[np.ndarray]:
        """The data leaves of the examples `indices`, in that order.

        The examples are gathered shard by shard, so at most `capacity` shards are held even
        when `indices` span more.
        """
        shard_of = indices // self.shard_size
        out: list[np.ndarray] | None = None
        for shard in sorted(set(shard_of.tolist())):
            leaves = self._shard(shard)
            rows = np.flatnonzero(shard_of == shard)
            offsets = indices[rows] % self.shard_size
            if out is None:
                out = [np.empty((len(indices), *x.shape[1:]), x.dtype) for x in leaves]
            for target, x in zip(out, leaves):
                target[rows] = x[offsets]
        assert out is not None, "take() needs at least one index"
        return out

    def _shard(self, shard: int) -> list[np.ndarray]:
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        key = self.keys.shard(shard)
        arrays = decode_named(self.store.get(key, timeout=self.timeout), key)
        leaves = [arrays[f"leaf{j}"] for j in range(len(arrays))]
        self.fetched += 1
        self._shards[shard] = leaves
        if self.capacity is not None and len(self._shards) > self.capacity:
            self._shards.popitem(last=False)
        return leaves

    @property
    def held(self) -> int:
        """Shards in memory now."""
        return len(self._shards)
