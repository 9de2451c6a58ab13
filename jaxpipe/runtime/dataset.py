"""Training data in the store: shards written once, micro-batches read deterministically.

Iteration t takes samples [t*B, (t+1)*B) of an endless stream that visits the training set in a
fresh permutation every epoch (seeded by the job's seed and the epoch); micro-batch m of it is
the m-th slice of b = B/M samples. Workers and the single-process reference both call
`batch_indices`, so they see exactly the same samples, and the same dropout keys
(`micro_batch_keys`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.job import Keys
from transports import ObjectStore, codec

__all__ = ["ShardReader", "batch_indices", "micro_batch_keys", "write_shards"]


def batch_indices(num_samples: int, global_batch: int, seed: int, t: int) -> np.ndarray:
    """Indices of the samples of iteration `t` (epochs reshuffled with `seed`)."""
    start = t * global_batch
    out = []
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


class ShardReader:
    """Reads samples by index from the shards, fetching each shard once."""

    def __init__(self, store: ObjectStore, keys: Keys, shard_size: int, timeout: float):
        self.store, self.keys, self.shard_size, self.timeout = store, keys, shard_size, timeout
        self._shards: dict[int, list[np.ndarray]] = {}

    def take(self, indices: np.ndarray) -> list[np.ndarray]:
        """The data leaves of the samples `indices`, in that order."""
        for shard in sorted(set((indices // self.shard_size).tolist())):
            if shard not in self._shards:
                key = self.keys.shard(shard)
                arrays = decode_named(self.store.get(key, timeout=self.timeout), key)
                self._shards[shard] = [arrays[f"leaf{j}"] for j in range(len(arrays))]
        rows = [self._shards[i // self.shard_size] for i in indices.tolist()]
        offsets = [i % self.shard_size for i in indices.tolist()]
        return [np.stack([r[j][o] for r, o in zip(rows, offsets)])
                for j in range(len(rows[0]))]
