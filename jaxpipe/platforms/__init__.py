"""Where ranks run: `local` (one OS process per rank, the default)."""

from jaxpipe.platforms.local import LocalInvocation, LocalPlatform

__all__ = ["LocalInvocation", "LocalPlatform"]
