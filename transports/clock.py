"""`Clock`: where the link emulator and the all-reduce read the time and wait for it.

Everything in transports that waits for a moment reads and waits through a `Clock`: the link
emulator's transfers and round trips (`throttle.py`), and an all-reduce's deadline and the
start of each of its scatter requests (`pacing.py`, `collectives.py`). The default,
`MONOTONIC`, is `time.monotonic` with real sleeps and waits. A test passes a clock of its own,
such as a `VirtualClock` (time that moves only once every thread waits), so that what it
checks does not depend on how busy the machine is.

A store's polling for a missing key and its retry sleeps stay on real time (`store.py`): they
measure a real server, not an emulated link.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MONOTONIC", "Clock", "MonotonicClock", "VirtualClock"]


class Clock(Protocol):
    """A time source that threads can sleep on and wait on a condition with.

    `wait` and `notify_all` stand for `threading.Condition.wait` and `notify_all`, so that a
    virtual clock knows which threads a notification makes runnable.
    """

    def now(self) -> float:
        """Returns the time in seconds; only differences between two readings mean anything."""
        ...

    def sleep(self, seconds: float) -> None:
        """Returns once `seconds` have passed on this clock."""
        ...

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        """Waits on `cond`, which the caller holds, until notified or `timeout` s passed."""
        ...

    def notify_all(self, cond: threading.Condition) -> None:
        """Wakes every thread waiting on `cond`, which the caller holds."""
        ...


class MonotonicClock:
    """Real time: `time.monotonic`, `time.sleep` and `threading.Condition`'s own waits.

    Example:
      >>> clock = MonotonicClock()
      >>> t = clock.now(); clock.sleep(0.001); clock.now() > t
      True
    """

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        cond.wait(timeout)

    def notify_all(self, cond: threading.Condition) -> None:
        cond.notify_all()


MONOTONIC: Clock = MonotonicClock()
"""The clock every waiting part of transports uses unless it is given another."""


@dataclass(eq=False)
class _Waiter:
    """A thread blocked on a VirtualClock: until when, and on which condition if any."""

    until: float
    cond: threading.Condition | None
    woken: bool = False


class VirtualClock:
    """Virtual time for a known number of threads: it stands still while any of them runs and
    jumps to the earliest wake-up once every one of them sleeps or waits.

    Each reading then follows from the order of events alone, never from how long the
    machine took to run the threads, which makes timings exact in tests and examples.

    Args:
      threads: how many threads use the clock. Each one calls `leave()` when it is done
        (a lone thread need not); until all have, time moves only when the rest wait.
      start: the first reading, in seconds.

    Example:
      >>> clock = VirtualClock()
      >>> clock.sleep(0.25); clock.sleep(0.5); clock.now()
      0.75
    """

    def __init__(self, threads: int = 1, start: float = 0.0) -> None:
        if threads < 1:
            raise ValueError(f"a VirtualClock needs threads >= 1, got {threads}")
        self._lock = threading.Condition()
        self._now = float(start)
        self._running = threads
        self._waiters: list[_Waiter] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._block(_Waiter(self._now + max(seconds, 0.0), None))

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        # Registered while the caller still holds `cond`, so no notify_all can come between.
        with self._lock:
            waiter = _Waiter(self._now + max(timeout, 0.0), cond)
            self._enter(waiter)
        cond.release()
        try:
            with self._lock:
                while not waiter.woken:
                    self._lock.wait()
        finally:
            cond.acquire()

    def notify_all(self, cond: threading.Condition) -> None:
        with self._lock:
            for waiter in [w for w in self._waiters if w.cond is cond]:
                self._wake(waiter)
        cond.notify_all()

    def leave(self) -> None:
        """Tells the clock that the calling thread will not use it again."""
        with self._lock:
            self._running -= 1
            self._jump_if_idle()

    def _block(self, waiter: _Waiter) -> None:
        self._enter(waiter)
        while not waiter.woken:
            self._lock.wait()

    def _enter(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        self._running -= 1
        self._jump_if_idle()

    def _wake(self, waiter: _Waiter) -> None:
        # The waker counts the thread as running at once: time must not move before it runs.
        waiter.woken = True
        self._waiters.remove(waiter)
        self._running += 1
        self._lock.notify_all()

    def _jump_if_idle(self) -> None:
        if self._running > 0 or not self._waiters:
            return
        self._now = max(self._now, min(w.until for w in self._waiters))
        for waiter in [w for w in self._waiters if w.until <= self._now]:
            self._wake(waiter)
