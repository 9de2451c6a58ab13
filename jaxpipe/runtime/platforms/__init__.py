"""Where ranks run: `local` (one OS process per rank, the default), `aws-lambda`, and `lithops`
(a Lithops call per rank on any Lithops backend: `platforms.lithops`, imported on use).

A platform is anything with `launch(event, memory_mb) -> Invocation` (`platforms.base`): the
driver hands it one rank's `RankEvent` and the memory size of that rank's stage, and watches
the returned handle until it reports an `Outcome`. A local process reports an exit code; an
asynchronous Lambda invocation reports nothing, so its handle reads the status the worker
writes to the store instead. Either way the driver only ever sees the `Outcome`.
"""

from __future__ import annotations

from jaxpipe.runtime.platforms.base import Invocation, Launcher, Outcome
from jaxpipe.runtime.platforms.local import LocalInvocation, LocalPlatform

__all__ = ["Invocation", "Launcher", "LocalInvocation", "LocalPlatform", "Outcome"]
