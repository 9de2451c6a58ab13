"""The link emulator: shared bandwidth per direction, independent directions, request latency.

Every test runs the emulator on a `VirtualClock`, so each time it reads follows from the order
of requests alone and is exact whatever the load of the machine. A Link wakes up to 0.1 ms
after a transfer's exact finish, hence the 1 ms of `_at` below.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest

from transports import KeyNotFound, Link, MemoryStore, ThrottledStore, VirtualClock

MB = 1_000_000


def _at(*seconds: float) -> object:
    """The virtual times expected, to within the Link's wake-up slack (0.1 ms a transfer)."""
    return pytest.approx(list(seconds), abs=1e-3)


def _timed(clock: VirtualClock, *calls: Callable[[], object]) -> list[float]:
    """Runs the calls on threads at once; returns the clock reading at which each one ended.

    `clock` must count exactly these threads (`VirtualClock(threads=len(calls))`).
    """
    done = [0.0] * len(calls)

    def run(i: int) -> None:
        try:
            calls[i]()
            done[i] = clock.now()
        finally:
            clock.leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def test_one_upload_takes_size_over_bandwidth() -> None:
    clock = VirtualClock()
    link = ThrottledStore(MemoryStore(), 10 * MB, 10 * MB, 0.0, clock=clock)
    link.put("a", bytes(MB))
    assert [clock.now()] == _at(0.1)


def test_two_concurrent_uploads_share_the_uplink_fairly() -> None:
    clock = VirtualClock(threads=2)
    link = ThrottledStore(MemoryStore(), 10 * MB, 10 * MB, 0.0, clock=clock)
    t = _timed(clock, lambda: link.put("a", bytes(MB)), lambda: link.put("b", bytes(MB)))
    assert t == _at(0.2, 0.2)  # 2 MB through 10 MB/s; fair: neither ends at 0.1 s


def test_a_later_transfer_shares_the_link_only_while_both_are_active() -> None:
    clock = VirtualClock(threads=2)
    link = Link(10 * MB, clock)

    def late() -> None:
        clock.sleep(0.05)
        link.transfer(MB)

    # alone for 0.05 s (0.5 MB), then half the rate each: the first ends at 0.15 s, and the
    # second, with 0.5 MB received by then, has the link to itself for its last 0.5 MB
    assert _timed(clock, lambda: link.transfer(MB), late) == _at(0.15, 0.2)


def test_uplink_and_downlink_are_independent() -> None:
    store = MemoryStore()
    store.put("down", bytes(MB))
    clock = VirtualClock(threads=2)
    link = ThrottledStore(store, 10 * MB, 10 * MB, 0.0, clock=clock)
    t = _timed(clock, lambda: link.put("up", bytes(MB)), lambda: link.get("down"))
    assert t == _at(0.1, 0.1)  # full duplex: 0.1 s each, not 0.2 s


def test_separate_throttled_stores_are_separate_links() -> None:
    shared = MemoryStore()
    clock = VirtualClock(threads=2)
    a = ThrottledStore(shared.view(), 10 * MB, 10 * MB, 0.0, clock=clock)
    b = ThrottledStore(shared.view(), 10 * MB, 10 * MB, 0.0, clock=clock)
    t = _timed(clock, lambda: a.put("a", bytes(MB)), lambda: b.put("b", bytes(MB)))
    assert t == _at(0.1, 0.1)


def test_every_request_pays_the_round_trip_latency() -> None:
    store = MemoryStore()
    store.put("k", b"x")
    clock = VirtualClock()
    link = ThrottledStore(store, math.inf, math.inf, 0.02, clock=clock)
    link.exists("k")
    link.get("k")
    link.delete("nothing")
    link.list("")
    with pytest.raises(KeyNotFound):
        link.get("missing")  # the 404 travels back too
    assert [clock.now()] == _at(5 * 0.02)


def test_concurrent_requests_overlap_their_latency() -> None:
    clock = VirtualClock(threads=4)
    link = ThrottledStore(MemoryStore(), math.inf, math.inf, 0.02, clock=clock)
    assert _timed(clock, *[lambda: link.exists("k")] * 4) == _at(0.02, 0.02, 0.02, 0.02)


class _Noting(MemoryStore):
    """A MemoryStore that notes the clock reading at which each PUT reaches it."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.puts: list[float] = []

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self.puts.append(self.clock.now())
        super()._put(key, data)


def test_a_put_becomes_visible_half_a_round_trip_before_it_returns() -> None:
    clock = VirtualClock()
    store = _Noting(clock)
    link = ThrottledStore(store, 10 * MB, math.inf, 0.1, clock=clock)
    link.put("k", bytes(MB))
    # half a round trip, then the bytes at 10 MB/s: the store has the object; then the reply
    assert store.puts == _at(0.05 + 0.1)
    assert [clock.now()] == _at(0.05 + 0.1 + 0.05)


def test_the_wrapper_passes_objects_through_without_copying() -> None:
    clock = VirtualClock()
    inner = MemoryStore()
    link = ThrottledStore(inner, 1e9, 1e9, 0.0, clock=clock)
    data = bytes(100 * MB)
    link.put("big", data)
    assert inner.get("big") is data and link.get("big") is data
    assert [clock.now()] == _at(0.2)  # 0.1 s each way at 1 GB/s, and nothing on top
    assert link.stats.bytes_up == link.stats.bytes_down == 100 * MB


def test_link_rejects_non_positive_rates() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Link(0)
