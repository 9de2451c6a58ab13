"""Dataset shards and micro-batches: shards hold every row once, iterations walk a fresh
permutation per epoch, and a micro-batch reads the rows and PRNG keys the reference derives."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxpipe.runtime.dataset import ShardReader, batch_indices, micro_batch_keys, write_shards
from jaxpipe.runtime.job import Keys
from jaxpipe.staging.reference import micro_batches
from transports import MemoryStore, codec

KEYS = Keys("data-job")


def dataset(n: int) -> list[np.ndarray]:
    """Rows that name themselves: x[i] = [i, 10 i, 100 i] (float32), y[i] = i (int32)."""
    i = np.arange(n)
    return [np.stack([i, 10 * i, 100 * i], axis=1).astype(np.float32), i.astype(np.int32)]


class CountingStore(MemoryStore):
    """A MemoryStore that records the keys it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def get(self, key: str, timeout: float | None = None) -> bytes:
        self.gets.append(key)
        return super().get(key, timeout=timeout)


# -- batch_indices ---------------------------------------------------------------------------

def test_one_epoch_of_iterations_visits_every_row_exactly_once():
    n, b = 24, 6
    seen = np.concatenate([batch_indices(n, b, seed=3, t=t) for t in range(n // b)])
    assert sorted(seen.tolist()) == list(range(n))


def test_an_epoch_is_the_seeded_permutation_in_order():
    n, b, seed = 24, 6, 3
    order = np.random.default_rng([seed, 0]).permutation(n)
    for t in range(n // b):
        np.testing.assert_array_equal(batch_indices(n, b, seed, t), order[t * b:(t + 1) * b])
    second = np.random.default_rng([seed, 1]).permutation(n)
    np.testing.assert_array_equal(batch_indices(n, b, seed, n // b), second[:b])


def test_a_batch_across_an_epoch_boundary_ends_one_permutation_and_starts_the_next():
    n, b, seed = 10, 4, 0
    first = np.random.default_rng([seed, 0]).permutation(n)
    second = np.random.default_rng([seed, 1]).permutation(n)
    np.testing.assert_array_equal(batch_indices(n, b, seed, 2),
                                  np.concatenate([first[8:], second[:2]]))


@pytest.mark.parametrize("n, b", [(10, 4), (7, 3), (5, 8), (1, 1)])
def test_the_stream_covers_every_row_once_per_epoch(n, b):
    epochs = 3
    iterations = -(-epochs * n // b)
    stream = np.concatenate([batch_indices(n, b, 11, t) for t in range(iterations)])
    assert all(len(batch_indices(n, b, 11, t)) == b for t in range(iterations))
    for e in range(epochs):
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))


def test_epochs_are_shuffled_differently_and_seeds_matter():
    n = 64
    a = batch_indices(n, n, seed=0, t=0)
    assert not np.array_equal(a, batch_indices(n, n, seed=0, t=1))
    assert not np.array_equal(a, batch_indices(n, n, seed=1, t=0))
    np.testing.assert_array_equal(a, batch_indices(n, n, seed=0, t=0))


# -- shards ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n, shard_size", [(10, 4), (12, 4), (10, 1), (10, 100)])
def test_shards_hold_every_row_once_in_order(n, shard_size):
    store = MemoryStore()
    leaves = dataset(n)
    count = write_shards(store, KEYS, leaves, shard_size)
    assert count == -(-n // shard_size)
    assert store.list(KEYS.prefix + "data/") == [KEYS.shard(i) for i in range(count)]
    shards = [codec.decode(store.get(KEYS.shard(i))) for i in range(count)]
    assert all(sorted(s) == ["leaf0", "leaf1"] for s in shards)
    assert all(len(s["leaf0"]) == shard_size for s in shards[:-1])
    for j, leaf in enumerate(leaves):
        joined = np.concatenate([s[f"leaf{j}"] for s in shards])
        np.testing.assert_array_equal(joined, leaf)
        assert joined.dtype == leaf.dtype


@pytest.mark.parametrize("shard_size", [1, 3, 4, 100])
def test_the_reader_returns_the_rows_asked_for_in_that_order(shard_size):
    store = MemoryStore()
    leaves = dataset(10)
    write_shards(store, KEYS, leaves, shard_size)
    reader = ShardReader(store, KEYS, shard_size, timeout=1.0)
    indices = np.asarray([9, 0, 4, 4, 3, 8])
    got = reader.take(indices)
    assert len(got) == 2
    for j, leaf in enumerate(leaves):
        np.testing.assert_array_equal(got[j], leaf[indices])
        assert got[j].dtype == leaf.dtype


def test_the_reader_fetches_each_shard_once():
    store = CountingStore()
    write_shards(store, KEYS, dataset(12), 4)
    reader = ShardReader(store, KEYS, 4, timeout=1.0)
    reader.take(np.asarray([0, 1, 5]))
    reader.take(np.asarray([6, 2, 11]))
    reader.take(np.asarray([3]))
    assert sorted(store.gets) == [KEYS.shard(0), KEYS.shard(1), KEYS.shard(2)]


# -- micro-batches ---------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 4])
def test_micro_batch_rows_are_the_reference_micro_batches_of_the_iteration(count):
    """What a stage-0 worker reads for micro-batch m (rows [m b, (m+1) b) of the iteration's
    indices, through the shards) is the reference's split of the iteration's batch."""
    n, global_batch, seed = 13, 8, 5
    store = MemoryStore()
    leaves = dataset(n)
    write_shards(store, KEYS, leaves, 4)
    reader = ShardReader(store, KEYS, 4, timeout=1.0)
    b = global_batch // count
    for t in range(3):
        indices = batch_indices(n, global_batch, seed, t)
        expected = micro_batches([leaf[indices] for leaf in leaves], [], count)
        for m in range(count):
            got = reader.take(indices[m * b:(m + 1) * b])
            for j in range(len(leaves)):
                np.testing.assert_array_equal(got[j], expected[m][j])


def iteration_key(seed: int, t: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(seed), t)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("names", [("dropout",), ("dropout", "noise")])
def test_micro_batch_keys_are_the_reference_keys_of_the_iteration_key(count, names):
    seed, t = 4, 6
    base = iteration_key(seed, t)
    data = [np.zeros((count, 1), np.float32)]
    expected = micro_batches(data, [base] * len(names), count)
    for m in range(count):
        got = micro_batch_keys(seed, t, m, count, names)
        assert len(got) == len(names)
        for key, want in zip(got, expected[m][1:]):
            np.testing.assert_array_equal(np.asarray(key), np.asarray(want))


def test_one_micro_batch_uses_the_iteration_key_itself():
    key, = micro_batch_keys(2, 9, 0, 1, ["dropout"])
    np.testing.assert_array_equal(np.asarray(key), np.asarray(iteration_key(2, 9)))


def test_micro_batches_and_iterations_get_different_keys():
    keys = {tuple(np.asarray(micro_batch_keys(0, t, m, 4, ["dropout"])[0]).tolist())
            for t in range(3) for m in range(4)}
    assert len(keys) == 12


def test_no_rng_collections_means_no_keys():
    assert micro_batch_keys(0, 0, 0, 4, []) == []


# -- the documented order without shuffling, and the bounded shard cache -------------------------

def test_without_shuffling_iteration_t_takes_examples_t_b_to_t_plus_one_b_modulo_n():
    n, b = 10, 4
    for t in range(6):
        np.testing.assert_array_equal(batch_indices(n, b, seed=3, t=t, shuffle=False),
                                      np.arange(t * b, (t + 1) * b) % n)


def test_a_bounded_reader_holds_at_most_its_capacity_and_refetches_what_it_dropped():
    store = CountingStore()
    leaves = dataset(24)
    write_shards(store, KEYS, leaves, shard_size=4)  # 6 shards
    reader = ShardReader(store, KEYS, 4, timeout=1, capacity=2)
    indices = np.array([23, 0, 5, 9, 14, 1, 22])  # shards 5, 0, 1, 2, 3 in one take
    x, y = reader.take(indices)
    np.testing.assert_array_equal(y, indices)
    np.testing.assert_array_equal(x, leaves[0][indices])
    assert reader.held == 2 and reader.fetched == 5
    reader.take(np.array([21, 20]))  # shard 5, the most recent: no download
    assert reader.fetched == 5
    reader.take(np.array([0]))  # shard 0 was dropped: downloaded again
    assert reader.fetched == 6 and reader.held == 2
