"""What the driver knows of a platform: it launches ranks, and each launch ends in an `Outcome`.

A platform is anything with `launch(event, memory_mb) -> Invocation`: the driver hands it one
rank's `RankEvent` and the memory size of that rank's stage, and watches the returned handle.
Each platform translates its own signals into an `Outcome` (a local process's exit code; the
status a Lambda worker writes to the store), so the driver decides from outcomes alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from jaxpipe.runtime.event import RankEvent

__all__ = ["Invocation", "Launcher", "Outcome", "wait_for_outcome"]


class Outcome(Enum):
    """How one launched rank ended, as the driver acts on it.

        FINISHED   the window ran to its end ("done" or "handover")    go on
        FAILED     it raised, exited non-zero or was killed            restart from a checkpoint
        REFUSED    too little time left for the window; nothing ran    restart, half the window
        SILENT     no word from it in time (killed by the platform's   restart from a checkpoint
                   time limit or memory cap, or it never started)
    """

    FINISHED = "finished"
    FAILED = "failed"
    REFUSED = "refused"
    SILENT = "silent"


class Invocation(Protocol):
    """One launched rank, as the driver watches it.

    `poll()` is None while it runs, then its `Outcome`. `wait(timeout)` blocks for it
    (`Outcome.SILENT` if `timeout` seconds pass first). `kill()` stops it where the platform
    can. `tail()` is text that helps the user see why it died.
    """

    rank: int

    def poll(self) -> Outcome | None: ...

    def wait(self, timeout: float) -> Outcome: ...

    def kill(self) -> None: ...

    def tail(self, lines: int = 15) -> str: ...


class Launcher(Protocol):
    """A platform the driver launches ranks on."""

    name: str

    def launch(self, event: RankEvent, memory_mb: int) -> Invocation: ...


def wait_for_outcome(check: Callable[[], Outcome | None], timeout: float,
                     poll_every_s: float) -> Outcome:
    """Calls `check()` every `poll_every_s` until it gives an `Outcome`; `Outcome.SILENT` once
    `timeout` seconds have passed without one (the loop of a rank watched through the store).

    Example:
      >>> wait_for_outcome(lambda: None, timeout=0.0, poll_every_s=0.1).name
      'SILENT'
    """
    end = time.time() + timeout
    while (outcome := check()) is None:
        if time.time() >= end:
            return Outcome.SILENT
        time.sleep(max(0.0, min(poll_every_s, end - time.time())))
    return outcome
