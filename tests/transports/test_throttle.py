"""The link emulator: shared bandwidth per direction, independent directions, request latency."""

from __future__ import annotations

import math
import threading
import time

import pytest

from transports import Link, MemoryStore, ThrottledStore

MB = 1_000_000


def _timed(*calls) -> list[float]:
    """Runs the calls on threads at once; returns each one's seconds from the common start."""
    done = [0.0] * len(calls)
    start = time.monotonic()

    def run(i: int) -> None:
        calls[i]()
        done[i] = time.monotonic() - start

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def test_one_upload_takes_size_over_bandwidth() -> None:
    link = ThrottledStore(MemoryStore(), 10 * MB, 10 * MB, 0.0)
    (t,) = _timed(lambda: link.put("a", bytes(MB)))
    assert 0.095 <= t < 0.16


def test_two_concurrent_uploads_share_the_uplink_fairly() -> None:
    link = ThrottledStore(MemoryStore(), 10 * MB, 10 * MB, 0.0)
    t = _timed(lambda: link.put("a", bytes(MB)), lambda: link.put("b", bytes(MB)))
    assert 0.19 <= max(t) < 0.28          # 2 MB through 10 MB/s
    assert min(t) >= 0.17                 # fair sharing: neither finishes at 0.1 s


def test_uplink_and_downlink_are_independent() -> None:
    store = MemoryStore()
    store.put("down", bytes(MB))
    link = ThrottledStore(store, 10 * MB, 10 * MB, 0.0)
    t = _timed(lambda: link.put("up", bytes(MB)), lambda: link.get("down"))
    assert 0.095 <= max(t) < 0.17         # full duplex: 0.1 s, not 0.2 s


def test_separate_throttled_stores_are_separate_links() -> None:
    shared = MemoryStore()
    a = ThrottledStore(shared.view(), 10 * MB, 10 * MB, 0.0)
    b = ThrottledStore(shared.view(), 10 * MB, 10 * MB, 0.0)
    t = _timed(lambda: a.put("a", bytes(MB)), lambda: b.put("b", bytes(MB)))
    assert max(t) < 0.17


def test_every_request_pays_the_round_trip_latency() -> None:
    store = MemoryStore()
    store.put("k", b"x")
    link = ThrottledStore(store, math.inf, math.inf, 0.02)
    t0 = time.monotonic()
    link.exists("k")
    link.get("k")
    link.delete("nothing")
    link.list("")
    with pytest.raises(KeyError):
        link.get("missing")
    assert 0.1 <= time.monotonic() - t0 < 0.18
    t = _timed(*[lambda: link.exists("k")] * 4)  # latency overlaps across concurrent requests
    assert max(t) < 0.05


def test_a_put_becomes_visible_half_a_round_trip_before_it_returns() -> None:
    store = MemoryStore()
    link = ThrottledStore(store, math.inf, math.inf, 0.1)
    writer = threading.Thread(target=lambda: link.put("k", b"v"))
    t0 = time.monotonic()
    writer.start()
    assert store.get("k", timeout=1.0) == b"v"
    seen = time.monotonic() - t0
    writer.join()
    returned = time.monotonic() - t0
    assert 0.045 <= seen < 0.09 and returned >= 0.1


def test_a_fast_link_adds_little_overhead() -> None:
    link = ThrottledStore(MemoryStore(), 1e9, 1e9, 0.0)
    data = bytes(100 * MB)
    t0 = time.monotonic()
    link.put("big", data)
    link.get("big")
    assert time.monotonic() - t0 < 0.3    # 0.2 s of emulated transfer at 1 GB/s


def test_link_rejects_non_positive_rates() -> None:
    with pytest.raises(ValueError, match="> 0"):
        Link(0)
