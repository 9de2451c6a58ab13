"""How long a window's fresh invocations take to start: for sizing windows and for waiting.

Every window starts fresh invocations, and each one imports JAX, loads its stage and compiles
(or loads from the compile cache) before its first micro-batch. Two numbers follow from that:

    window_s   the window's start-up: from the launch to the slowest rank's end of its first
               iteration, minus one steady iteration of that rank (the median of its later
               ones). The driver sizes the next window with it (`driver.window_for`) and the
               budget reserves it (`billing.CostGuard`). It is measured the way
               `experiments/bench_coldstart.py` measures a process (spawn to its first
               micro-batch, minus a steady one), and so the way `Platform.cold_start_s` is
    stages_s   each stage's own start-up: launch to ready (`RankMetrics.cold_start_s`) plus the
               seconds it compiled or loaded its programs (`CompileRecord.compile_s`), the
               slowest replica's. A rank's waits in a window's first iteration add the other
               stages' (`first_wait_s`)

Before any window has run (a fresh driver), both are the plan's prediction: the platform's
`cold_start_s` (a warm compile cache's start-up), the number the planner prices windows with.
Later windows use what the previous window measured.

    window t0 .. t1:   launch ──cold start──> ready ──first iteration (compiles)──> t0 ends
                                                    waits: wait_timeout + others' start-ups
                       ... steady iterations ...                 waits: wait_timeout
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxpipe.runtime.metrics import RankMetrics
from planners import Platform

__all__ = ["Startup", "first_wait_s", "iteration_wait_s", "stage_startups", "window_startup_s"]


@dataclass(frozen=True)
class Startup:
    """The start-up the next window is predicted to have (see the module docstring).

    Attributes:
      window_s: launch to the slowest rank's first iteration's end, beyond a steady
        iteration, in seconds.
      stages_s: each stage's launch to ready plus compiling, in seconds (stage order).

    Example:
      >>> from planners import platforms
      >>> Startup.planned(platforms.get("aws-lambda"), num_stages=2)
      Startup(window_s=18.0, stages_s=(18.0, 18.0))
    """

    window_s: float
    stages_s: tuple[float, ...]

    @classmethod
    def planned(cls, platform: Platform, num_stages: int) -> Startup:
        """The plan's prediction: the platform's cold start for the window and every stage."""
        return cls(platform.cold_start_s, (platform.cold_start_s,) * num_stages)

    def measured(self, metrics: Sequence[RankMetrics], per_iteration: float) -> Startup:
        """This prediction updated with a finished window's metrics (what they lack is kept).

        Args:
          metrics: every rank's metrics of the window.
          per_iteration: seconds of a steady iteration, for ranks that ran only one.
        """
        window = window_startup_s(metrics, per_iteration)
        return Startup(self.window_s if window is None else window,
                       stage_startups(metrics, self.stages_s))


def window_startup_s(metrics: Sequence[RankMetrics], per_iteration: float) -> float | None:
    """The window's start-up: the largest over its ranks of cold start + first iteration - one
    steady iteration (the rank's median of its later iterations, else `per_iteration`), in
    seconds, at least 0; None if no rank ran an iteration.

    The first iteration of a downstream rank includes waiting for its upstream peers' start,
    so the slowest rank's figure is the window's: the time its invocations need beyond
    iterations x steady seconds.

    Example:
      >>> from jaxpipe.runtime.metrics import IterationRecord
      >>> from transports import StoreStats
      >>> def ran(cold, *seconds):
      ...     its = tuple(IterationRecord(t, s, 0.0) for t, s in enumerate(seconds))
      ...     return RankMetrics(0, 0, 0, 0, 0, cold, 0.0, 0.0, 1024, its, StoreStats(), ())
      >>> window_startup_s([ran(5.0, 9.0, 2.0, 2.0), ran(3.0, 8.0, 1.0, 3.0)], 2.0)
      12.0
    """
    values = []
    for m in metrics:
        if not m.iterations:
            continue
        later = [r.seconds for r in m.iterations[1:]]
        steady = float(np.median(later)) if later else per_iteration
        values.append(m.cold_start_s + m.iterations[0].seconds - steady)
    return max(0.0, max(values)) if values else None


def stage_startups(metrics: Sequence[RankMetrics], previous: Sequence[float]) -> tuple[float, ...]:
    """Each stage's start-up: the slowest replica's cold start + compile seconds, in seconds;
    a stage with no metrics keeps its `previous` value.

    Example:
      >>> from jaxpipe.runtime.metrics import CompileRecord
      >>> from transports import StoreStats
      >>> def rank(stage, cold, compiled):
      ...     return RankMetrics(0, stage, 0, 0, 0, cold, 0.0, 0.0, 1024, (), StoreStats(), (),
      ...                        compile=CompileRecord(compile_s=compiled))
      >>> stage_startups([rank(0, 4.0, 30.0), rank(0, 5.0, 2.0)], previous=(18.0, 18.0))
      (34.0, 18.0)
    """
    found: dict[int, float] = {}
    for m in metrics:
        seconds = m.cold_start_s + (m.compile.compile_s if m.compile is not None else 0.0)
        found[m.stage] = max(found.get(m.stage, 0.0), seconds)
    return tuple(found.get(k, s) for k, s in enumerate(previous))


def first_wait_s(wait_timeout_s: float, stage: int, startups: Sequence[float]) -> float:
    """How long a rank of `stage` waits for any one object in a window's first iteration.

    The wait of a steady iteration, `wait_timeout_s`, plus the start-up of every other stage:
    its activations wait for the stages before it to start and compile, its gradients for the
    stages after it, and an optimizer that sums over stages for all of them. The sum holds
    even when the start-ups do not overlap (the driver launches ranks one by one, and local
    ranks share a few cores); a longer wait only delays noticing a rank that died in its
    first iteration.

    Args:
      wait_timeout_s: the job's wait for one object in a steady iteration, in seconds.
      stage: the rank's stage.
      startups: every stage's predicted start-up (`Startup.stages_s`), in seconds.

    Example:
      >>> first_wait_s(120.0, 1, (18.0, 25.0, 30.0))  # 120 + 18 + 30
      168.0
    """
    return wait_timeout_s + sum(s for k, s in enumerate(startups) if k != stage)


def iteration_wait_s(wait_timeout_s: float, stage: int, t: int, start: int,
                     startups: Sequence[float]) -> float:
    """The wait for one object in iteration t of a window that starts at `start`: longer in
    the first iteration (`first_wait_s`), `wait_timeout_s` in every later one.

    Example:
      >>> [iteration_wait_s(120.0, 0, t, 4, (18.0, 18.0)) for t in (4, 5)]
      [138.0, 120.0]
    """
    return first_wait_s(wait_timeout_s, stage, startups) if t == start else wait_timeout_s
