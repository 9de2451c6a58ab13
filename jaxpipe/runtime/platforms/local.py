"""The local platform: every rank a fresh OS process, capped like a serverless function.

What it emulates, per rank: a cold start (a new Python process imports JAX and loads its stage),
the plan's memory size as a hard cap (`RLIMIT_DATA`: a rank that exceeds it dies, as on Lambda),
its CPU share (XLA's intra-op threads), and its link to storage (the worker wraps its store in a
`ThrottledStore` with the platform's bandwidth and latency when the event says `link`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planners import Platform

__all__ = ["LocalInvocation", "LocalPlatform"]

MIN_MEMORY_MB = 400  # a JAX process does not start with less RLIMIT_DATA than about 350 MB


@dataclass
class LocalInvocation:
    """A running rank: its process and where its output goes."""

    rank: int
    process: subprocess.Popen
    log: Path

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class LocalPlatform:
    """Launches ranks as local processes (see the module docstring)."""

    name = "local"

    def __init__(self, platform: Platform, log_dir: str | Path):
        self.platform = platform
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def launch(self, event: dict[str, Any], memory_mb: int) -> LocalInvocation:
        """Starts `python -m jaxpipe.runtime.worker` for one rank with its caps; returns at once."""
        cap = max(int(memory_mb), MIN_MEMORY_MB) * 2**20
        env = dict(os.environ)
        cpus = self.platform.cpus(memory_mb)
        flags = env.get("XLA_FLAGS", "")
        if cpus < 1.5:  # one core's worth: no intra-op thread pool
            flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")

        event = {**event, "launched_at": time.time()}
        log = self.log_dir / f"rank{event['rank']}-{event['attempt']}-{event['invocation']}.log"
        out = open(log, "w")  # noqa: SIM115 - the child owns it until it exits
        process = subprocess.Popen(
            [sys.executable, "-m", "jaxpipe.runtime.worker"], stdin=subprocess.PIPE, stdout=out,
            stderr=subprocess.STDOUT, env=env)
        # The cap applies from here on; the child is still starting Python, far below it.
        resource.prlimit(process.pid, resource.RLIMIT_DATA, (cap, cap))
        process.stdin.write(json.dumps(event).encode())
        process.stdin.close()
        out.close()
        return LocalInvocation(event["rank"], process, log)
