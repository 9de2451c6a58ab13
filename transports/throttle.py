"""`ThrottledStore`: a link emulator that makes a local store behave like one seen from a function.

A serverless function reaches object storage over a link of a few tens of MB/s each way, with
tens of milliseconds per request. `ThrottledStore` wraps any store and adds, per handle (one
handle = one emulated function, shared by that function's threads):

* an uplink and a downlink, each a `Link` that concurrent transfers in its direction share
  fairly (two 1 MB uploads at 10 MB/s both end after ~0.2 s), while the two directions are
  independent (full duplex);
* a request latency `latency_s`, modelled as a round trip: half before the request reaches the
  server, half after the server answers. A PUT's object therefore becomes visible at
  `latency_s / 2 + size / uplink` after the call starts, and the call returns `latency_s / 2`
  later; a GET finds the object if it exists `latency_s / 2` after the call starts.

    PUT:  |-- lat/2 --|==== size/uplink ====|* visible |-- lat/2 --| return
    GET:  |-- lat/2 --|* lookup |==== size/downlink ====|-- lat/2 --| return

Timing is deterministic given the order of requests: a Link computes finish times from the
clock with a fluid model instead of sampling anything, and sleeping is the only cost (the
wrapped store's own time comes on top; a MemoryStore adds next to nothing). Both read and wait
on a `Clock` (`transports.clock`): real time by default, a `VirtualClock` in tests.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from transports.clock import MONOTONIC, Clock
from transports.store import KeyNotFound, ObjectStore

__all__ = ["Link", "ThrottledStore"]


class Link:
    """One direction of a function's network link, shared fairly by concurrent transfers.

    A fluid processor-sharing model: while k transfers are active, each advances at rate/k
    bytes per second. The link keeps a "virtual byte count" V that every active transfer has
    received; a transfer of n bytes starting when V = v finishes when V reaches v + n. V and
    the finish times are computed from the clock, not from when threads happen to wake, so a
    thread that wakes late (the GIL, a busy machine) delays only its own return, never the
    link: the emulated bandwidth stays exact under load.

    Args:
      rate_bps: bandwidth, in bytes per second; `math.inf` means unlimited.
      clock: what the transfers are timed and wait on (`transports.clock`).

    Example:
      >>> from transports.clock import VirtualClock
      >>> clock = VirtualClock()
      >>> Link(10e6, clock).transfer(1_000_000); round(clock.now(), 3)  # 1 MB at 10 MB/s
      0.1
    """

    def __init__(self, rate_bps: float, clock: Clock = MONOTONIC) -> None:
        if not rate_bps > 0:
            raise ValueError(f"link rate must be > 0 bytes/s, got {rate_bps}")
        self.rate_bps = float(rate_bps)
        self.clock = clock
        self._cond = threading.Condition()
        self._virtual = 0.0                  # bytes received by each active transfer so far
        self._updated = clock.now()          # when _virtual was last brought up to date
        self._active: dict[int, float] = {}  # transfer id -> virtual finish tag
        self._next_id = 0

    def _advance(self, now: float) -> bool:
        """Brings V up to `now`, retiring transfers at their exact finish times."""
        retired = False
        while self._active:
            share = self.rate_bps / len(self._active)
            tag = min(self._active.values())
            at = self._updated + (tag - self._virtual) / share
            if at > now:
                break
            self._virtual, self._updated = tag, at
            for tid in [t for t, f in self._active.items() if f <= tag]:
                del self._active[tid]
            retired = True
        if self._active:
            self._virtual += (now - self._updated) * self.rate_bps / len(self._active)
        self._updated = max(self._updated, now)
        return retired

    def transfer(self, nbytes: int) -> None:
        """Blocks for as long as sending `nbytes` takes on this link, sharing it with others."""
        if math.isinf(self.rate_bps) or nbytes <= 0:
            return
        clock = self.clock
        with self._cond:
            self._advance(clock.now())
            tid = self._next_id
            self._next_id += 1
            self._active[tid] = self._virtual + nbytes
            clock.notify_all(self._cond)  # everyone's share just shrank: recompute wake-ups
            while tid in self._active:
                left = (self._active[tid] - self._virtual) * len(self._active) / self.rate_bps
                clock.wait(self._cond, max(left, 0.0) + 1e-4)
                if self._advance(clock.now()):
                    clock.notify_all(self._cond)  # shares just grew: others finish earlier


class ThrottledStore(ObjectStore):
    """Wraps `store` behind an emulated function link: bandwidth each way plus request latency.

    Args:
      store: the store that holds the objects (shared by many ThrottledStores in a benchmark).
      uplink_bps: upload bandwidth, in bytes per second (70e6 ~ AWS Lambda).
      downlink_bps: download bandwidth, in bytes per second.
      latency_s: round-trip time of one request, in seconds (0.02 ~ S3 from Lambda).
      clock: what both links and the latency wait on (`transports.clock`); not part of the
        store's spec, so a rebuilt store runs on real time.

    Each ThrottledStore counts its own requests; the wrapped store counts what reached it.
    Retries and polling are done by the wrapped store's single attempts, so every poll of a
    missing key pays the latency, as a real poll would.

    Example:
      >>> from transports.clock import VirtualClock
      >>> from transports.memory_store import MemoryStore
      >>> clock = VirtualClock()
      >>> link = ThrottledStore(MemoryStore(), 10e6, 10e6, 0.02, clock=clock)
      >>> link.put("k", bytes(1_000_000)); round(clock.now(), 3)  # 1 MB at 10 MB/s + 20 ms
      0.12
    """

    def __init__(self, store: ObjectStore, uplink_bps: float, downlink_bps: float,
                 latency_s: float, *, clock: Clock = MONOTONIC) -> None:
        super().__init__(poll=store.poll, retry=store.retry)
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.store = store
        self.clock = clock
        self.uplink = Link(uplink_bps, clock)
        self.downlink = Link(downlink_bps, clock)
        self.latency_s = float(latency_s)

    def _half_trip(self) -> None:
        if self.latency_s > 0:
            self.clock.sleep(self.latency_s / 2)

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._half_trip()
        self.uplink.transfer(len(data))
        self.store.put(key, data)
        self._half_trip()

    def _put_if_absent(self, key: str, data: bytes | memoryview) -> bool:
        self._half_trip()
        self.uplink.transfer(len(data))
        created = self.store.put_if_absent(key, data)
        self._half_trip()
        return created

    def _get(self, key: str) -> bytes:
        self._half_trip()
        try:
            data = self.store.get(key)  # raises KeyNotFound at once if missing
        except KeyNotFound:
            self._half_trip()  # the 404 travels back too
            raise
        self.downlink.transfer(len(data))
        self._half_trip()
        return data

    def _exists(self, key: str) -> bool:
        self._half_trip()
        found = self.store.exists(key)
        self._half_trip()
        return found

    def _delete(self, key: str) -> None:
        self._half_trip()
        self.store.delete(key)
        self._half_trip()

    def _delete_many(self, keys: list[str]) -> None:
        self._half_trip()
        self.store.delete_many(keys)
        self._half_trip()

    def _list(self, prefix: str) -> tuple[list[str], int]:
        self._half_trip()
        keys = self.store.list(prefix)
        self._half_trip()
        return keys, -(-len(keys) // 1000)

    def _spec(self) -> dict[str, Any]:
        return {"kind": "throttled", "store": self.store._spec(),
                "uplink_bps": self.uplink.rate_bps, "downlink_bps": self.downlink.rate_bps,
                "latency_s": self.latency_s}
