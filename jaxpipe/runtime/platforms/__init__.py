"""Where ranks run: `local` (one OS process per rank, the default) and `aws-lambda`.

A platform is anything with `launch(event, memory_mb) -> Invocation`: the driver hands it one
rank's small JSON event and the memory size of that rank's stage, and watches the returned
handle. A local process reports an exit code; an asynchronous Lambda invocation reports
nothing, so its handle reads the status the worker writes to the store instead.
"""

from __future__ import annotations

from typing import Any, Protocol

from jaxpipe.runtime.platforms.local import LocalInvocation, LocalPlatform

__all__ = ["Invocation", "Launcher", "LocalInvocation", "LocalPlatform"]


class Invocation(Protocol):
    """One launched rank, as the driver watches it.

    `poll()` is None while it runs, then an exit code: 0 for a clean end ("done" or
    "handover"), anything else for a death. `wait(timeout)` blocks for that code. `kill()`
    stops it where the platform can. `tail()` is text that helps the user see why it died.
    """

    rank: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float) -> int: ...

    def kill(self) -> None: ...

    def tail(self, lines: int = 15) -> str: ...


class Launcher(Protocol):
    """A platform the driver launches ranks on."""

    name: str

    def launch(self, event: dict[str, Any], memory_mb: int) -> Invocation: ...
