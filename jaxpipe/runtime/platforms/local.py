"""The local platform: every rank a fresh OS process, capped like a serverless function.

What it emulates, per rank: a cold start (a new Python process imports JAX and loads its stage),
the plan's memory size as a hard cap (`RLIMIT_DATA`: a rank that exceeds it dies, as on Lambda),
its CPU share (XLA's intra-op threads), and its link to storage (the worker wraps its store in a
`ThrottledStore` with the platform's bandwidth and latency when the event says `link`). With a
`time_limit_s`, also its time limit: the event carries the deadline (`RankEvent.deadline_at`,
which the worker reads as Lambda's context, so it refuses or hands over as on Lambda), and a
rank still running past it is killed and reported `Outcome.SILENT`, as Lambda's time limit
ends a function without a word. Without one (the default) a local rank has no deadline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jaxpipe.runtime.compile_cache import CACHE_DIR_VARIABLE, FRESH
from jaxpipe.runtime.event import RankEvent
from jaxpipe.runtime.platforms.base import Outcome
from planners import Platform

__all__ = ["LocalInvocation", "LocalPlatform", "worker_env"]

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"
"""XLA_FLAGS of a rank with about one core: Eigen's intra-op pool off."""
MIN_MEMORY_MB = 400  # a JAX process does not start with less RLIMIT_DATA than about 350 MB


@dataclass
class LocalInvocation:
    """A running rank: its process and where its output goes.

    Exit code 0 is `Outcome.FINISHED`; any other code (an exception, SIGKILL, the memory cap)
    is `Outcome.FAILED`. Past its `deadline` (epoch seconds; None: no time limit) a rank still
    running is killed (`timed_out`) and is `Outcome.SILENT`.
    """

    rank: int
    process: subprocess.Popen
    log: Path
    deadline: float | None = None
    timed_out: bool = False

    def poll(self) -> Outcome | None:
        self._enforce_limit()
        return Outcome.SILENT if self.timed_out else _outcome(self.process.poll())

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def wait(self, timeout: float) -> Outcome:
        if self.deadline is not None:
            timeout = min(timeout, max(0.0, self.deadline - time.time()))
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._enforce_limit()
            return Outcome.SILENT
        return Outcome.FINISHED if code == 0 else Outcome.FAILED

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        code = self.process.poll()
        ended = f"exit code {code}" if code is not None else "still running"
        if self.timed_out:
            ended = f"killed at its time limit, {ended}"
        return "\n".join([f"({ended}; log {self.log})", *text.splitlines()[-lines:]])

    def _enforce_limit(self) -> None:
        """Kills the rank if it runs past its deadline, as the platform's time limit would."""
        if (self.deadline is not None and not self.timed_out and time.time() >= self.deadline
                and self.process.poll() is None):
            self.timed_out = True
            self.kill()


def worker_env(platform: Platform, memory_mb: int, xla_flags: str = "") -> dict[str, str]:
    """The environment a rank of `memory_mb` MB runs with: XLA on the CPU, one intra-op thread
    when the platform gives it about one core (so results do not depend on this machine's
    cores), unbuffered output. Lithops' localhost calls get the same (`platforms.lithops`).

    Example:
      >>> from planners import platforms
      >>> worker_env(platforms.get("local"), 1024)["XLA_FLAGS"]
      '--xla_cpu_multi_thread_eigen=false'
    """
    # XLA:CPU sizes its thread pool from the process's CPU affinity (on Lambda, the memory
    # size's vCPUs); local ranks share this machine's cores, so a one-core rank keeps its ops
    # on one thread with Eigen's pool off. (The `intra_op_parallelism_threads=1` once written
    # here is no XLA flag: XLA_FLAGS skips a token without `--`, and jax 0.10 reads no such
    # option, so it changed nothing; the process's thread count is the same with it.)
    flags = xla_flags
    if platform.cpus(memory_mb) < 1.5 and SINGLE_THREAD_XLA not in flags.split():
        flags += " " + SINGLE_THREAD_XLA
    return {"XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def _outcome(code: int | None) -> Outcome | None:
    if code is None:
        return None
    return Outcome.FINISHED if code == 0 else Outcome.FAILED


class LocalPlatform:
    """Launches ranks as local processes (see the module docstring); `time_limit_s`, in
    seconds from each launch, emulates the platform's time limit (None: none)."""

    name = "local"

    def __init__(self, platform: Platform, log_dir: str | Path,
                 time_limit_s: float | None = None):
        self.platform, self.time_limit_s = platform, time_limit_s
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def launch(self, event: RankEvent, memory_mb: int) -> LocalInvocation:
        """Starts `python -m jaxpipe.runtime.worker` for one rank with its caps; returns at once."""
        cap = max(int(memory_mb), MIN_MEMORY_MB) * 2**20
        env = dict(os.environ)
        env.update(worker_env(self.platform, memory_mb, env.get("XLA_FLAGS", "")))
        # A fresh compile cache per process, as a cold function has: only the store carries
        # compiled programs from one window to the next (`runtime.compile_cache`).
        env.setdefault(CACHE_DIR_VARIABLE, FRESH)

        launched = time.time()
        deadline = None if self.time_limit_s is None else launched + self.time_limit_s
        event = dataclasses.replace(event, launched_at=launched, deadline_at=deadline)
        log = self.log_dir / f"rank{event.rank}-{event.attempt}-{event.invocation}.log"
        with open(log, "w") as out:  # the child keeps its own descriptor until it exits
            process = subprocess.Popen(
                [sys.executable, "-m", "jaxpipe.runtime.worker"], stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, env=env)
        # The cap applies from here on; the child is still starting Python, far below it.
        resource.prlimit(process.pid, resource.RLIMIT_DATA, (cap, cap))
        assert process.stdin is not None  # stdin=PIPE
        process.stdin.write(json.dumps(event.to_dict()).encode())
        process.stdin.close()
        return LocalInvocation(event.rank, process, log, deadline)
