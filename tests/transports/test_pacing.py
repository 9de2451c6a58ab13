"""When the pipelined all-reduce sends its requests: pieces, depth and the request times."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import numpy as np
import pytest

from tests.transports.conftest import FAST_POLL
from transports import (
    MemoryStore,
    VirtualClock,
    allreduce_mean,
    pipeline_depth,
    pipeline_pieces,
)
from transports.pacing import RequestTimes, not_before


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


def test_request_times_space_the_first_uploads_and_time_each_get_by_its_arrival() -> None:
    when = RequestTimes(start=100.0, piece_s=0.5)
    assert [when.upload(step, depth=3) for step in range(5)] == [100.0, 100.5, 101.0, 0.0, 0.0]
    assert [when.arrival(k) for k in range(3)] == [100.5, 101.0, 101.5]
    assert RequestTimes.for_link(1000, float("inf")).piece_s == 0.0
    assert RequestTimes(start=0.0, piece_s=10.0, until=15.0).arrival(5) == 15.0  # never past it
    clock = VirtualClock(start=7.0)
    assert RequestTimes.for_link(1000, 1e4, clock=clock) == RequestTimes(7.0, 0.1)


def test_not_before_waits_on_its_clock_and_only_for_a_time_to_come() -> None:
    clock = VirtualClock()
    assert not_before(0.25, clock.now, clock=clock) == 0.25
    assert not_before(0.1, clock.now, clock=clock) == 0.25  # already past: no wait
    assert not_before(0.5, divmod, 7, 2, clock=clock) == (3, 1) and clock.now() == 0.5


class _StillClock:
    """Time stands still at 0: `sleep` returns at once and notes, for the calling thread, how
    long the caller meant to wait; the store below takes that note as its request's send time.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        self._local.until = seconds

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        raise AssertionError("the pacing never waits on a condition")

    def notify_all(self, cond: threading.Condition) -> None:
        raise AssertionError("the pacing never notifies a condition")

    def take(self) -> float:
        """Returns (and forgets) the time the calling thread last waited for; 0 if none."""
        until, self._local.until = getattr(self._local, "until", 0.0), 0.0
        return until


class _Clocked(MemoryStore):
    """A MemoryStore handle that notes when each scatter request of its rank was to be sent."""

    def __init__(self, shared: MemoryStore, clock: _StillClock,
                 log: list[tuple[str, str, float]]) -> None:
        super().__init__(poll=shared.poll, _objects=shared._objects)
        self.clock, self.log, self.lock = clock, log, threading.Lock()

    def _note(self, kind: str, key: str) -> None:
        sent = self.clock.take()  # every request takes its thread's note, logged or not
        if "/scatter/" in key:
            with self.lock:
                self.log.append((kind, key, sent))

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._note("PUT", key)
        super()._put(key, data)

    def _get(self, key: str) -> bytes:
        self._note("GET", key)
        return super()._get(key)


def test_scatter_requests_follow_the_request_times_and_the_mean_is_unchanged() -> None:
    # 3 ranks, 1 piece of 4000 bytes per chunk: at 40 kB/s a piece takes 0.1 s and the
    # 0.15 s round trip needs depth 1 + ceil(6000 / 4000) = 3 uploads in flight.
    world, length, bw, lat = 3, 3000, 40_000.0, 0.15
    vectors = [np.random.default_rng(k).standard_normal(length).astype(np.float32)
               for k in range(world)]
    shared, clock = MemoryStore(poll=FAST_POLL), _StillClock()
    logs: list[list[tuple[str, str, float]]] = [[] for _ in range(world)]
    with cf.ThreadPoolExecutor(world) as pool:
        futures = [pool.submit(allreduce_mean, _Clocked(shared, clock, logs[k]), "jobs/p", k,
                               world, vectors[k], timeout=30, pieces=1, bandwidth_bps=bw,
                               latency_s=lat, clock=clock) for k in range(world)]
        results = [f.result() for f in futures]
    expected = np.mean(np.stack(vectors).astype(np.float64), axis=0)
    for out in results:
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for i, log in enumerate(logs):
        puts = {key: sent for kind, key, sent in log if kind == "PUT"}
        gets: dict[str, float] = {}
        for kind, key, sent in log:
            if kind == "GET":
                gets.setdefault(key, sent)  # the first try; later polls are not paced
        # uploads in step order, one piece-time apart; the GET of the k-th arrival (k + 1)
        # piece-times after the start, when that piece should have landed
        assert puts == pytest.approx({f"jobs/p/scatter/{(i + 1) % 3}/0/{i}": 0.0,
                                      f"jobs/p/scatter/{(i + 2) % 3}/0/{i}": 0.1})
        assert gets == pytest.approx({f"jobs/p/scatter/{i}/0/{(i - 1) % 3}": 0.1,
                                      f"jobs/p/scatter/{i}/0/{(i - 2) % 3}": 0.2})
    assert shared.list("") == []
