"""All-reduce over storage: equal to numpy.mean, identical on every rank, clean, and counted."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.transports.allreduce_worker import rank_vector
from tests.transports.conftest import FAST_POLL, REPO
from transports import (
    FaultyStore,
    FileStore,
    MemoryStore,
    ObjectStore,
    PeerTimeout,
    StoreStats,
    allreduce_mean,
    allreduce_requests,
    chunk_bounds,
    decode,
)

WORLDS = [1, 2, 3, 5, 8]


def _run_ranks(stores: list[ObjectStore], group: str, vectors: list[np.ndarray],
               algorithm: str = "pipelined", timeout: float = 30.0,
               **options: object) -> list[np.ndarray]:
    """Runs one all-reduce with rank k on a thread using stores[k]; returns every result."""
    world = len(vectors)
    with cf.ThreadPoolExecutor(world) as pool:
        futures = [pool.submit(allreduce_mean, stores[k], group, k, world, vectors[k],
                               algorithm, timeout, **options) for k in range(world)]
        return [f.result() for f in futures]


def _check_counts(world: int, algorithm: str, per_rank: list[StoreStats],
                  pieces: int = 1) -> None:
    """Measured requests equal the documented formula (cleanup: 0 or 1 DELETE, >= 1 in all)."""
    want = allreduce_requests(world, algorithm, pieces)
    cleanups = 0
    for stats in per_rank:
        got = stats.by_kind()
        for kind in ("PUT", "GET", "HEAD", "LIST"):
            assert got[kind] == want[kind], (kind, got, want)
        extra = got["DELETE"] - want["DELETE"]
        assert 0 <= extra <= want["CLEANUP_DELETE"], (got, want)
        cleanups += extra
    assert cleanups >= min(1, want["CLEANUP_DELETE"])


def test_chunks_cover_the_vector_and_differ_by_at_most_one() -> None:
    for length in [0, 1, 5, 7, 64, 1001]:
        for world in [1, 2, 3, 5, 8, 64]:
            bounds = chunk_bounds(length, world)
            assert bounds[0][0] == 0 and bounds[-1][1] == length
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("algorithm", ["pipelined", "lambdaml"])
@pytest.mark.parametrize("world", WORLDS)
def test_threads_get_numpy_mean_bit_identical_on_every_rank(world: int, algorithm: str) -> None:
    rng = np.random.default_rng(world)
    for length in [max(0, world - 2), int(rng.integers(1, 20_000))]:
        shared = MemoryStore(poll=FAST_POLL)
        stores = [shared.view() for _ in range(world)]
        vectors = [rng.standard_normal(length).astype(np.float32) for _ in range(world)]
        results = _run_ranks(stores, f"jobs/t/it/{length}", vectors, algorithm)
        expected = np.mean(np.stack(vectors).astype(np.float64), axis=0)
        for out in results:
            assert out.dtype == np.float32 and out.shape == (length,)
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
            assert out.tobytes() == results[0].tobytes()
        assert shared.list("") == []
        _check_counts(world, algorithm, [s.stats for s in stores])


@pytest.mark.parametrize("pieces", [2, 3])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_pieces_give_the_same_mean_and_the_documented_requests(world: int, pieces: int) -> None:
    rng = np.random.default_rng(10 * world + pieces)
    # lengths with empty pieces, uneven pieces and uneven chunks
    for length in [world * pieces - 1, int(rng.integers(100, 20_000))]:
        shared = MemoryStore(poll=FAST_POLL)
        stores = [shared.view() for _ in range(world)]
        vectors = [rng.standard_normal(length).astype(np.float32) for _ in range(world)]
        results = _run_ranks(stores, f"jobs/pc/it/{length}", vectors, pieces=pieces,
                             inflight=2)
        expected = np.mean(np.stack(vectors).astype(np.float64), axis=0)
        for out in results:
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
            assert out.tobytes() == results[0].tobytes()
        assert shared.list("") == []
        _check_counts(world, "pipelined", [s.stats for s in stores], pieces)


@pytest.mark.parametrize("algorithm", ["pipelined", "lambdaml"])
def test_in_place_result_and_cleanup_off_the_return_path(algorithm: str) -> None:
    world, length = 3, 5003
    rng = np.random.default_rng(3)
    vectors = [rng.standard_normal(length).astype(np.float32) for _ in range(world)]
    expected = np.mean(np.stack(vectors).astype(np.float64), axis=0)
    shared = MemoryStore(poll=FAST_POLL)
    buffers = [v.copy() for v in vectors]
    sweepers = [cf.ThreadPoolExecutor(1) for _ in range(world)]
    with cf.ThreadPoolExecutor(world) as pool:
        futures = [pool.submit(allreduce_mean, shared.view(), "jobs/ip/it/0", k, world,
                               buffers[k], algorithm, 30.0, out=buffers[k],
                               cleanup=sweepers[k], pieces=2) for k in range(world)]
        outs = [f.result() for f in futures]
    for sweeper in sweepers:
        sweeper.shutdown(wait=True)
    for k in range(world):
        assert outs[k] is buffers[k]  # written in place, into the input itself
        np.testing.assert_allclose(buffers[k], expected, rtol=1e-5, atol=1e-6)
    assert shared.list("") == []  # the cleanup ran on the executors


def test_out_of_the_wrong_shape_is_rejected_before_any_request() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError, match="out= must be"):
        allreduce_mean(store, "jobs/x/it/0", 0, 2, np.ones(4, np.float32),
                       out=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="pieces must be"):
        allreduce_mean(store, "jobs/x/it/0", 0, 2, np.ones(4, np.float32), pieces=0)
    assert store.stats.by_kind()["PUT"] == 0


@pytest.mark.parametrize("world", WORLDS)
def test_processes_on_a_file_store_get_numpy_mean(tmp_path, world: int) -> None:
    store = FileStore(tmp_path, poll=FAST_POLL)
    spec = {"kind": "file", "root": str(tmp_path), "poll": FAST_POLL.to_dict()}
    length, group = 1000 + 37 * world, f"jobs/p/it/{world}"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.transports.allreduce_worker", json.dumps(
            {"spec": spec, "group": group, "rank": k, "world": world, "length": length,
             "seed": 7, "algorithm": "pipelined", "timeout": 60})],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(world)]
    outputs = [p.communicate(timeout=90) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    expected = np.mean([rank_vector(7, k, length).astype(np.float64) for k in range(world)], 0)
    results = [decode(store.get(f"out/{group}/{k}")) for k in range(world)]
    for out in results:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        assert out.tobytes() == results[0].tobytes()
    assert store.list(group + "/") == []
    _check_counts(world, "pipelined", [StoreStats(**json.loads(o)) for o, _ in outputs])


def test_a_store_failing_a_fifth_of_requests_still_gives_the_mean() -> None:
    world, length = 5, 3001
    shared = MemoryStore(poll=FAST_POLL)
    stores = [FaultyStore(shared.view(), failure_rate=0.2, seed=k) for k in range(world)]
    vectors = [np.full(length, float(k), np.float32) for k in range(world)]
    for algorithm in ["pipelined", "lambdaml"]:
        results = _run_ranks(stores, f"faulty/{algorithm}", vectors, algorithm)
        for out in results:
            np.testing.assert_array_equal(out, np.full(length, 2.0, np.float32))
    assert shared.list("") == []
    assert all(s.injected > 0 for s in stores)


def test_concurrent_groups_in_one_bucket_do_not_interfere(moto_server) -> None:
    world, groups = 3, ["jobs/a/it/1", "jobs/a/it/10", "jobs/a/it/1x"]
    stores = [moto_server.store("groups/") for _ in range(world * len(groups))]
    with cf.ThreadPoolExecutor(len(stores)) as pool:
        futures = {
            g: [pool.submit(allreduce_mean, stores[gi * world + k], g, k, world,
                            np.full(10, 100.0 * gi + k, np.float32), timeout=30)
                for k in range(world)]
            for gi, g in enumerate(groups)}
        for gi, g in enumerate(groups):
            for f in futures[g]:
                np.testing.assert_array_equal(f.result(), np.full(10, 100.0 * gi + 1, np.float32))
    assert stores[0].list("") == []


class _Waits(MemoryStore):
    """A MemoryStore handle that notes how long each GET was allowed to wait."""

    def __init__(self, shared: MemoryStore) -> None:
        super().__init__(poll=shared.poll, _objects=shared._objects)
        self.timeouts: list[float | None] = []

    def get(self, key: str, timeout: float | None = None) -> bytes:
        self.timeouts.append(timeout)
        return super().get(key, timeout)


def test_a_missing_peer_ends_in_a_timeout_that_names_it() -> None:
    shared = MemoryStore(poll=FAST_POLL)
    stores = [_Waits(shared) for _ in range(2)]
    with cf.ThreadPoolExecutor(2) as pool:  # world 3, but rank 2 never starts
        futures = [pool.submit(allreduce_mean, stores[k], "jobs/m", k, 3,
                               np.ones(9, np.float32), timeout=1.0) for k in range(2)]
        for f in futures:
            with pytest.raises(PeerTimeout, match=r"from rank 2 \(key 'jobs/m/scatter/"):
                f.result()
    # every wait fits in what is left of the caller's timeout, none waits longer
    waits = [t for s in stores for t in s.timeouts]
    assert waits and all(t is not None and 0 <= t <= 1.0 for t in waits)


def test_dtypes_and_shapes_are_kept() -> None:
    shared = MemoryStore(poll=FAST_POLL)
    vectors = [np.arange(12, dtype=np.float64).reshape(3, 4) * k for k in range(3)]
    for out in _run_ranks([shared.view() for _ in range(3)], "f64", vectors):
        assert out.dtype == np.float64 and out.shape == (3, 4)
        np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4) * 1.0)


def test_bfloat16_vectors_are_averaged_in_float32_and_returned_in_bfloat16() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    shared = MemoryStore(poll=FAST_POLL)
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(101).astype(ml_dtypes.bfloat16) for _ in range(3)]
    expected = np.mean([v.astype(np.float32) for v in vectors], axis=0)
    for out in _run_ranks([shared.view() for _ in range(3)], "bf16", vectors):
        assert out.dtype.name == "bfloat16"
        np.testing.assert_allclose(out.astype(np.float32), expected, rtol=1e-2, atol=1e-2)


def test_bad_arguments_are_rejected_with_the_rule() -> None:
    store = MemoryStore()
    with pytest.raises(TypeError, match="floating-point"):
        allreduce_mean(store, "g", 0, 1, np.arange(3))
    with pytest.raises(ValueError, match="0 <= rank < world"):
        allreduce_mean(store, "g", 2, 2, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="trailing"):
        allreduce_mean(store, "g/", 0, 1, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="unknown allreduce algorithm"):
        allreduce_requests(4, "ring")
