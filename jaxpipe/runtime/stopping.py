"""SIGTERM and SIGINT in the driver: turned into an exception, so the attempt is cancelled.

A driver killed by a signal's default action leaves every rank running (and, on Lambda,
billing) with nobody to watch them. While `stop_signals()` is active, SIGTERM raises
`Stopped` and SIGINT raises `KeyboardInterrupt` in the main thread, wherever it waits; the
driver's handler (`driver.run_job`) then writes the attempt's cancellation marker, kills the
ranks it can and reports `DriverStopped`, leaving the job resumable. `Stopped` is a
`BaseException`, so no `except Exception` on the way swallows it.

Signal handlers can only be set in the main thread; elsewhere `stop_signals()` does nothing
(a driver run in a thread is stopped by whoever owns the process).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Stopped", "stop_signals"]


class Stopped(BaseException):
    """The process received SIGTERM; the message names the signal."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(f"{signal.Signals(signum).name} received")


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises `Stopped` and SIGINT `KeyboardInterrupt` (main thread
    only); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
