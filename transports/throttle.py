"""`ThrottledStore`: a link emulator that makes a local store behave like one seen from a function.

A serverless function reaches object storage over a link of a few tens of MB/s each way, with
tens of milliseconds per request. `ThrottledStore` wraps any store and adds, per handle (one
handle = one emulated function, shared by that function's threads):

* an uplink and a downlink, each a `Link`: a token bucket that hands out bandwidth in small
  quanta in the order threads ask for them, so concurrent transfers in one direction share the
  link fairly (two 1 MB uploads at 10 MB/s both end after ~0.2 s) while the two directions are
  independent (full duplex);
* a request latency `latency_s`, modelled as a round trip: half before the request reaches the
  server, half after the server answers. A PUT's object therefore becomes visible at
  `latency_s / 2 + size / uplink` after the call starts, and the call returns `latency_s / 2`
  later; a GET finds the object if it exists `latency_s / 2` after the call starts.

    PUT:  |-- lat/2 --|==== size/uplink ====|* visible |-- lat/2 --| return
    GET:  |-- lat/2 --|* lookup |==== size/downlink ====|-- lat/2 --| return

Timing is deterministic given the order of requests: the buckets keep a virtual "link free at"
time instead of sampling anything, and sleeping is the only cost (the wrapped store's own time
comes on top; a MemoryStore adds next to nothing).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from transports.store import KeyNotFound, ObjectStore

__all__ = ["Link", "ThrottledStore"]

_QUANTUM_S = 0.004         # bandwidth is handed out in slices of this many seconds of transfer
_MIN_QUANTUM_BYTES = 64 << 10


class Link:
    """One direction of a function's network link: a token bucket with fair sharing.

    A transfer of `n` bytes is cut into quanta of `max(64 KiB, rate * 4 ms)` bytes; each quantum
    reserves the next free slot of the link (`free_at += quantum / rate`), and the thread sleeps
    until its slot ends. Threads that ask in turn get slots in turn, which shares the link
    fairly. An idle link banks no credit (no bursts); only a sleeper's late wake-up (< one
    quantum) is forgiven, so that sleep overshoot does not slow the link down.

    Args:
      rate_bps: bandwidth, in bytes per second; `math.inf` means unlimited.
    """

    def __init__(self, rate_bps: float) -> None:
        if not rate_bps > 0:
            raise ValueError(f"link rate must be > 0 bytes/s, got {rate_bps}")
        self.rate_bps = float(rate_bps)
        self._quantum = max(_MIN_QUANTUM_BYTES, int(min(rate_bps, 1e15) * _QUANTUM_S))
        self._quantum_s = self._quantum / self.rate_bps
        self._free_at = 0.0
        self._lock = threading.Lock()

    def transfer(self, nbytes: int) -> None:
        """Blocks for as long as sending `nbytes` takes on this link, sharing it with others."""
        if math.isinf(self.rate_bps) or nbytes <= 0:
            return
        left = nbytes
        while left > 0:
            piece = min(left, self._quantum)
            with self._lock:
                now = time.monotonic()
                # Continue from the previous slot if it ended less than a quantum ago (so a
                # late wake-up does not cost bandwidth); after a longer idle time, start now.
                start = self._free_at if now - self._free_at < self._quantum_s else now
                self._free_at = start + piece / self.rate_bps
                until = self._free_at
            pause = until - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            left -= piece


class ThrottledStore(ObjectStore):
    """Wraps `store` behind an emulated function link: bandwidth each way plus request latency.

    Args:
      store: the store that holds the objects (shared by many ThrottledStores in a benchmark).
      uplink_bps: upload bandwidth, in bytes per second (70e6 ~ AWS Lambda).
      downlink_bps: download bandwidth, in bytes per second.
      latency_s: round-trip time of one request, in seconds (0.02 ~ S3 from Lambda).

    Each ThrottledStore counts its own requests; the wrapped store counts what reached it.
    Retries and polling are done by the wrapped store's single attempts, so every poll of a
    missing key pays the latency, as a real poll would.

    Example:
      >>> from transports.memory_store import MemoryStore
      >>> link = ThrottledStore(MemoryStore(), 10e6, 10e6, 0.0)
      >>> t = time.monotonic(); link.put("k", bytes(1_000_000))
      >>> round(time.monotonic() - t, 1)
      0.1
    """

    def __init__(self, store: ObjectStore, uplink_bps: float, downlink_bps: float,
                 latency_s: float) -> None:
        super().__init__(poll=store.poll, retry=store.retry)
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s}")
        self.store = store
        self.uplink = Link(uplink_bps)
        self.downlink = Link(downlink_bps)
        self.latency_s = float(latency_s)

    def _half_trip(self) -> None:
        if self.latency_s > 0:
            time.sleep(self.latency_s / 2)

    def _put(self, key: str, data: bytes | memoryview) -> None:
        self._half_trip()
        self.uplink.transfer(len(data))
        self.store.put(key, data)
        self._half_trip()

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
