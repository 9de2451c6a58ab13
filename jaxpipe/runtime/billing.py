"""What a run costs: the platform's prices applied to what the workers measured.

Every price comes from `planners.Platform` (`compute_dollars`, `function_dollars`,
`invocation_dollars`, `request_dollars`), so the driver, the summary and the cost model bill
by one rule:

    measured_dollars   every invocation's billed GB-s (its INIT phase included: Lambda bills
                       INIT for container images) + one invocation each + its requests
    steady_dollars     one steady iteration: every function's GB-s for its seconds, plus the
                       run's requests per iteration (no cold start, no compilation)
    CostGuard          predicts a window's dollars before it is launched: one start-up of
                       every function plus its iterations, from the plan until a window has
                       been measured
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from jaxpipe.errors import BudgetExceeded
from jaxpipe.runtime.metrics import RankMetrics, billed_requests
from planners import Plan, Platform

__all__ = ["FIRST_INVOCATION_GAP_S", "CostGuard", "functions_gigabytes", "init_seconds",
           "measured_dollars", "process_started_at", "steady_dollars"]

FIRST_INVOCATION_GAP_S = 2.0
"""A handler that starts within this many seconds of its module's import is the process's first
invocation (Lambda runs it right after INIT); a warm one starts a whole window later."""


def functions_gigabytes(plan: Plan) -> float:
    """Memory of all the plan's functions together, in GB (MB / 1024, as platforms bill).

    Example:
      >>> from planners import StagePlan
      >>> functions_gigabytes(Plan((StagePlan(0, 0, 1024, 2), StagePlan(1, 1, 512)), 1, 2))
      2.5
    """
    return sum(s.replicas * s.memory_mb / 1024 for s in plan.stages)


def init_seconds(process_started: float | None, imported: float, began: float) -> float:
    """Seconds of Lambda's INIT phase this invocation pays: from the process's start to the
    worker's import, for the first invocation of a process; 0 for a warm one (INIT ran for an
    earlier invocation) and where the process start is unknown.

    Example:
      >>> init_seconds(100.0, 104.5, 104.6)  # a cold start: 4.5 s of INIT
      4.5
      >>> init_seconds(100.0, 104.5, 400.0)  # the same process, a later window
      0.0
    """
    if process_started is None or began - imported > FIRST_INVOCATION_GAP_S:
        return 0.0
    return max(0.0, imported - process_started)


def process_started_at() -> float | None:
    """This process's start, in epoch seconds (Linux `/proc`), or None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _requests(metrics: Sequence[RankMetrics]) -> tuple[int, int]:
    billed = [billed_requests(m.requests) for m in metrics]
    return sum(p for p, _ in billed), sum(g for _, g in billed)


def measured_dollars(platform: Platform, metrics: Sequence[RankMetrics]) -> float:
    """Dollars of the invocations in `metrics` at the platform's prices: each one's billed
    GB-s (its INIT phase, `RankMetrics.init_s`, included), one invocation each, and their
    storage requests."""
    puts, gets = _requests(metrics)
    return (sum(platform.function_dollars(m.memory_mb, m.billed_s + m.init_s) for m in metrics)
            + platform.invocation_dollars(len(metrics)) + platform.request_dollars(puts, gets))


def steady_dollars(platform: Platform, plan: Plan, metrics: Sequence[RankMetrics],
                   seconds: float, iterations: int) -> float:
    """Dollars of one steady-state iteration, comparable with the cost model's: every function's
    GB-s for `seconds`, plus the run's requests per iteration (cold starts and compilation,
    which `measured_dollars` bills, left out)."""
    puts, gets = _requests(metrics)
    return (platform.compute_dollars(functions_gigabytes(plan), seconds)
            + platform.request_dollars(puts, gets) / iterations)


@dataclass
class CostGuard:
    """Keeps a run under `max_cost`: predicts a window's cost before launching it.

    A window is predicted to cost `startup_s` seconds of every function before its first
    iteration (INIT and compiling, billed for container images), plus its iterations. Dollars
    per iteration are predicted from the plan (`iteration_dollars`, else its time at the
    platform's GB-s price) until a window has run, then measured from the workers' metrics
    (billed GB-s, invocations and requests) less each measured window's start-up, which
    `charge_window` is told and which becomes the next window's `startup_s`: a window like the
    last one is predicted at what it cost. A failed window is charged its wall time for every
    function, since Lambda bills the dead ranks too.
    """

    max_cost: float | None
    platform: Platform
    plan: Plan
    startup_s: float = 0.0
    spent: float = 0.0
    measured_dollars: float = 0.0
    measured_iterations: int = 0

    def per_iteration(self) -> float:
        """Predicted dollars of one more iteration."""
        if self.measured_iterations:
            return self.measured_dollars / self.measured_iterations
        if self.plan.iteration_dollars:
            return float(self.plan.iteration_dollars)
        return self.platform.compute_dollars(functions_gigabytes(self.plan),
                                             self.plan.iteration_seconds or 1.0)

    def affordable(self, wanted: int, t: int, job: str) -> int:
        """How many of `wanted` iterations from t fit the budget.

        Raises:
          BudgetExceeded: not even one does; the message says how to resume with more.
        """
        if self.max_cost is None:
            return wanted
        per = self.per_iteration()
        left = self.max_cost - self.spent - self.startup_dollars()
        fits = math.floor(left / per) if per > 0 else wanted
        if fits < 1:
            raise BudgetExceeded(
                f"stopped before iteration {t}: {self.spent:.4f} spent, one more iteration is "
                f"predicted at {per:.4f}, and --max-cost is {self.max_cost:.4f} "
                f"({self.platform.currency}). The checkpoint of iteration {t} is in the store: "
                f"continue with `jaxpipe train --resume {job} --max-cost <larger>`.")
        return min(wanted, fits)

    def startup_dollars(self) -> float:
        """Predicted dollars of a window's start-up: `startup_s` of every function."""
        return self.platform.compute_dollars(functions_gigabytes(self.plan), self.startup_s)

    def charge_window(self, dollars: float, iterations: int, startup_s: float = 0.0) -> None:
        """A window of `iterations` ran and cost `dollars` (`measured_dollars`), `startup_s`
        seconds of it its start-up (`runtime.startup`): the rest is its iterations', and the
        next window is predicted to start up as long."""
        self.spent += dollars
        self.startup_s = startup_s
        self.measured_dollars += max(0.0, dollars - self.startup_dollars())
        self.measured_iterations += iterations

    def charge_failure(self, seconds: float, functions: int) -> None:
        """A window failed after `seconds`: every one of its `functions` is billed for them."""
        self.spent += (self.platform.compute_dollars(functions_gigabytes(self.plan), seconds)
                       + self.platform.invocation_dollars(functions))
