"""Shim: `python -m jaxpipe.worker` and the handler `jaxpipe.worker.handler` live in the runtime."""

from jaxpipe.runtime.worker import handler, main

__all__ = ["handler", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
