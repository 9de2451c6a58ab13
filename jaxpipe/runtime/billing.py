"""What a run costs: the platform's prices applied to what the workers measured.

Every price comes from `planners.Platform` (`compute_dollars`, `function_dollars`,
`invocation_dollars`, `request_dollars`), so the driver, the summary and the cost model bill
by one rule:

    measured_dollars   every invocation's billed GB-s + one invocation each + its requests
    steady_dollars     one steady iteration: every function's GB-s for its seconds, plus the
                       run's requests per iteration (no cold start, no compilation)
    CostGuard          predicts a window's dollars before it is launched, from the plan until
                       a window has been measured
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from jaxpipe.errors import BudgetExceeded
from jaxpipe.runtime.metrics import RankMetrics, billed_requests
from planners import Plan, Platform

__all__ = ["CostGuard", "functions_gigabytes", "measured_dollars", "steady_dollars"]


def functions_gigabytes(plan: Plan) -> float:
    """Memory of all the plan's functions together, in GB (MB / 1024, as platforms bill).

    Example:
      >>> from planners import StagePlan
      >>> functions_gigabytes(Plan((StagePlan(0, 0, 1024, 2), StagePlan(1, 1, 512)), 1, 2))
      2.5
    """
    return sum(s.replicas * s.memory_mb / 1024 for s in plan.stages)


def _requests(metrics: Sequence[RankMetrics]) -> tuple[int, int]:
    billed = [billed_requests(m.requests) for m in metrics]
    return sum(p for p, _ in billed), sum(g for _, g in billed)


def measured_dollars(platform: Platform, metrics: Sequence[RankMetrics]) -> float:
    """Dollars of the invocations in `metrics` at the platform's prices: each one's billed
    GB-s, one invocation each, and their storage requests."""
    puts, gets = _requests(metrics)
    return (sum(platform.function_dollars(m.memory_mb, m.billed_s) for m in metrics)
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

    Dollars per iteration are predicted from the plan (`iteration_dollars`, else its time at
    the platform's GB-s price) until a window has run, then measured from the workers' metrics
    (billed GB-s, invocations and requests; startup included). A failed window is charged its
    wall time for every function, since Lambda bills the dead ranks too.
    """

    max_cost: float | None
    platform: Platform
    plan: Plan
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
        fits = math.floor((self.max_cost - self.spent) / per) if per > 0 else wanted
        if fits < 1:
            raise BudgetExceeded(
                f"stopped before iteration {t}: {self.spent:.4f} spent, one more iteration is "
                f"predicted at {per:.4f}, and --max-cost is {self.max_cost:.4f} "
                f"({self.platform.currency}). The checkpoint of iteration {t} is in the store: "
                f"continue with `jaxpipe train --resume {job} --max-cost <larger>`.")
        return min(wanted, fits)

    def charge_window(self, dollars: float, iterations: int) -> None:
        """A window of `iterations` ran and cost `dollars` (`measured_dollars`)."""
        self.spent += dollars
        self.measured_dollars += dollars
        self.measured_iterations += iterations

    def charge_failure(self, seconds: float, functions: int) -> None:
        """A window failed after `seconds`: every one of its `functions` is billed for them."""
        self.spent += (self.platform.compute_dollars(functions_gigabytes(self.plan), seconds)
                       + self.platform.invocation_dollars(functions))
