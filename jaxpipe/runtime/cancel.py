"""Cancelling an attempt, and noticing a driver that is gone: how a rank learns to stop.

Two keys under the job's prefix (`jaxpipe.runtime.job.Keys`) tell a running rank to stop:

    cancel/<attempt>   the cancellation marker of one attempt, JSON `Cancellation`. Written once
                       the attempt is over: by the driver when it gives the attempt up (a rank
                       failed or went silent, the driver was stopped by SIGTERM/SIGINT, a loss
                       was not finite), and by a rank that fails (so its peers stop at once,
                       before the driver has even looked). Kept until the job is cleaned up,
                       so a rank that starts late (a queued Lambda event) still finds it.
    driver.json        the driver's lease and heartbeat (`jaxpipe.runtime.lease`); its `beat`
                       counter goes up every few seconds while the driver lives.

A rank runs a `RankWatch`, a daemon thread that reads both keys every `every_s` seconds (two
GETs) and calls `on_stop(reason)` once when (a) the attempt's marker exists, or (b) the
driver's beat has not changed for `driver_stale_s` seconds of the rank's own clock (clocks of
the driver and the function are never compared; a missing lease means no driver watches this
rank, as in a test that calls the handler directly, and is not a reason to stop). Attempts
are numbered afresh after every restart and resume, so a marker never stops a later attempt.

    from jaxpipe.runtime.cancel import RankWatch, cancel_attempt

    watch = RankWatch(store, keys, attempt, on_stop=stop_now).start()   # in the rank
    ...
    watch.stop()
    cancel_attempt(store, keys, attempt, "rank 2 failed", by="driver")  # in the driver

`on_stop` runs on the watch thread. The local worker exits the process there (`os._exit`:
its lanes may be blocked in waits that no flag can interrupt); a platform whose process must
survive (a warm Lambda runtime) can instead set a flag that its wait loops check
(`RankWatch.stopped`, `RankWatch.check()`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jaxpipe.runtime.job import Keys
from transports import KeyNotFound, ObjectStore, StoreError

__all__ = ["DRIVER_STALE_S", "WATCH_EVERY_S", "AttemptCancelled", "Cancellation", "RankWatch",
           "cancel_attempt", "cancellation"]

WATCH_EVERY_S = 1.0
"""Seconds between a rank's reads of its attempt's marker and the driver's heartbeat."""
DRIVER_STALE_S = 60.0
"""Seconds without a new driver heartbeat after which a rank counts its driver as gone."""


class AttemptCancelled(Exception):
    """Raised by `RankWatch.check()` in a rank whose attempt was cancelled or whose driver is
    gone; its message is the reason."""


@dataclass(frozen=True)
class Cancellation:
    """The cancellation marker of one attempt, as stored at `Keys.cancel(attempt)`.

    Attributes:
      reason: why the attempt ended, for people ("rank 1 failed: CodecError: ...").
      by: who cancelled it: "driver" or "rank <r>".
      at: epoch seconds on the writer's clock (informational only).
      rank: the rank whose failure ended the attempt, if one did.

    Example:
      >>> c = Cancellation("driver stopped by SIGTERM", "driver", 1.5)
      >>> Cancellation.from_json(c.to_json()) == c
      True
    """

    reason: str
    by: str
    at: float
    rank: int | None = None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"reason": self.reason, "by": self.by, "at": self.at}
        if self.rank is not None:
            data["rank"] = self.rank
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Cancellation:
        d = json.loads(data)
        rank = d.get("rank")
        return cls(str(d.get("reason", "")), str(d.get("by", "?")), float(d.get("at", 0.0)),
                   None if rank is None else int(rank))


def cancel_attempt(store: ObjectStore, keys: Keys, attempt: int, reason: str,
                   by: str = "driver", rank: int | None = None) -> Cancellation:
    """Writes attempt `attempt`'s cancellation marker (one PUT) unless one is there already
    (the first reason wins); returns the marker that stands."""
    marker = Cancellation(reason, by, time.time(), rank)
    if store.put_if_absent(keys.cancel(attempt), marker.to_json()):
        return marker
    return cancellation(store, keys, attempt) or marker


def cancellation(store: ObjectStore, keys: Keys, attempt: int) -> Cancellation | None:
    """Attempt `attempt`'s cancellation marker, or None if it was not cancelled (one GET)."""
    try:
        return Cancellation.from_json(store.get(keys.cancel(attempt)))
    except KeyNotFound:
        return None


class RankWatch:
    """A daemon thread that stops a rank when its attempt is cancelled or its driver is gone.

    Args:
      store: the job's store, unthrottled (the watch's reads are not the rank's traffic).
      keys: the job's keys.
      attempt: the rank's attempt.
      on_stop: called once, on the watch thread, with the reason; None only records it.
      every_s: seconds between reads.
      driver_stale_s: seconds of unchanged heartbeat after which the driver counts as gone.

    A store error in a read is ignored (the next read tries again): an outage must not stop
    a rank that the store's own retries would carry through it.
    """

    def __init__(self, store: ObjectStore, keys: Keys, attempt: int,
                 on_stop: Callable[[str], None] | None = None, every_s: float = WATCH_EVERY_S,
                 driver_stale_s: float = DRIVER_STALE_S) -> None:
        self.store, self.keys, self.attempt = store, keys, attempt
        self.on_stop, self.every_s, self.driver_stale_s = on_stop, every_s, driver_stale_s
        self.stopped = threading.Event()
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rank-watch", daemon=True)
        self._beat: object = None
        self._beat_seen = time.monotonic()

    def start(self) -> RankWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the watch (the rank finished); `on_stop` is not called after this returns."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.every_s + 5.0)

    def check(self) -> None:
        """Raises `AttemptCancelled` if the watch has seen a reason to stop."""
        if self.stopped.is_set():
            raise AttemptCancelled(self.reason or "cancelled")

    def poll_once(self) -> str | None:
        """One look at both keys: the reason to stop, or None."""
        marker = cancellation(self.store, self.keys, self.attempt)
        if marker is not None:
            return f"attempt {self.attempt} cancelled by {marker.by}: {marker.reason}"
        try:
            beat = json.loads(self.store.get(self.keys.driver)).get("beat")
        except KeyNotFound:
            return None  # no driver watches this rank
        now = time.monotonic()
        if beat != self._beat:
            self._beat, self._beat_seen = beat, now
        elif now - self._beat_seen > self.driver_stale_s:
            return (f"the driver's heartbeat ({self.keys.driver}) has not changed for "
                    f"{now - self._beat_seen:.0f} s: the driver is gone")
        return None

    def _run(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                reason = self.poll_once()
            except (StoreError, ValueError, OSError):
                continue
            if reason is not None and not self._done.is_set():
                self.reason = reason
                self.stopped.set()
                if self.on_stop is not None:
                    self.on_stop(reason)
                return
