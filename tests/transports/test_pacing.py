"""When the pipelined all-reduce sends its requests: pieces, depth and the schedule."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import numpy as np

from tests.transports.conftest import FAST_POLL
from transports import MemoryStore, allreduce_mean, pipeline_depth, pipeline_pieces
from transports.pacing import Schedule


def test_pieces_and_depth_follow_the_link() -> None:
    # 70 MB/s x 20 ms = 1.4 MB per round trip: two pieces from half of that, then one per round
    # trip, at most 4
    assert [pipeline_pieces(kb * 1000, 70e6, 0.02) for kb in (500, 700, 1000, 2000, 3000,
                                                              5000, 64000)] == \
        [1, 2, 2, 2, 2, 3, 4]
    assert pipeline_pieces(10, 70e6, 0.0) == 4
    assert pipeline_pieces(10_000_000, float("inf"), 0.02) == 1
    # enough requests in flight to cover a round trip
    assert [pipeline_depth(mb * 1_000_000, 70e6, 0.02) for mb in (1, 2, 16)] == [3, 2, 2]
    assert pipeline_depth(1000, float("inf"), 0.02) == 8


def test_schedule_spaces_the_first_uploads_and_times_each_get_by_its_arrival() -> None:
    when = Schedule(start=100.0, piece_s=0.5)
    assert [when.upload(step, depth=3) for step in range(5)] == [100.0, 100.5, 101.0, 0.0, 0.0]
    assert [when.arrival(k) for k in range(3)] == [100.5, 101.0, 101.5]
    assert Schedule.for_link(1000, float("inf")).piece_s == 0.0
    assert Schedule(start=0.0, piece_s=10.0, until=15.0).arrival(5) == 15.0  # never past it


class _Clocked(MemoryStore):
    """A MemoryStore handle that notes when each scatter request of its rank was sent."""

    def __init__(self, shared: MemoryStore, log: list[tuple[str, str, float]]) -> None:
        super().__init__(poll=shared.poll, _objects=shared._objects)
        self.log, self.lock = log, threading.Lock()

    def _note(self, kind: str, key: str) -> None:
        if "/scatter/" in key:
            with self.lock:
                self.log.append((kind, key, time.monotonic()))

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._note("PUT", key)
        super()._put(key, data)

    def _get(self, key: str) -> bytes:
        self._note("GET", key)
        return super()._get(key)


def test_scatter_requests_follow_the_schedule_and_the_mean_is_unchanged() -> None:
    # 3 ranks, 1 piece of 4000 bytes per chunk: at 40 kB/s a piece takes 0.1 s and the
    # 0.15 s round trip needs depth 1 + ceil(6000 / 4000) = 3 uploads in flight.
    world, length, bw, lat = 3, 3000, 40_000.0, 0.15
    vectors = [np.random.default_rng(k).standard_normal(length).astype(np.float32)
               for k in range(world)]
    shared = MemoryStore(poll=FAST_POLL)
    logs: list[list[tuple[str, str, float]]] = [[] for _ in range(world)]
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(world) as pool:
        futures = [pool.submit(allreduce_mean, _Clocked(shared, logs[k]), "jobs/p", k, world,
                               vectors[k], timeout=30, pieces=1, bandwidth_bps=bw,
                               latency_s=lat) for k in range(world)]
        results = [f.result() for f in futures]
    expected = np.mean(np.stack(vectors).astype(np.float64), axis=0)
    for out in results:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for log in logs:
        puts = [t - t0 for kind, _, t in log if kind == "PUT"]
        gets = {key: t - t0 for kind, key, t in reversed(log) if kind == "GET"}  # first try
        assert len(puts) == world - 1
        assert puts[1] - puts[0] >= 0.09  # one piece-time apart
        # the GET of the k-th arrival goes out (k + 1) piece-times after the start
        firsts = sorted(gets.values())
        assert firsts[0] >= 0.09 and firsts[1] >= 0.19, firsts
    assert shared.list("") == []
