"""One entry point for every planner: ``plan(problem, method)``; and the time-cost frontier."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from planners.dataparallel import plan_data_parallel
from planners.errors import InfeasibleError, PlanError
from planners.exhaustive import plan_exhaustive
from planners.maxload import plan_maxload
from planners.miqp import plan_miqp
from planners.partition import plan_balanced, plan_uniform
from planners.pipedream import plan_pipedream
from planners.plans import Plan
from planners.problem import Objective, Problem

__all__ = ["METHODS", "pareto", "plan"]

_PLANNERS: dict[str, Callable[..., Plan]] = {
    "miqp": plan_miqp,
    "uniform": plan_uniform,
    "balanced": plan_balanced,
    "pipedream": plan_pipedream,
    "maxload": plan_maxload,
    "data-parallel": plan_data_parallel,
    "exhaustive": plan_exhaustive,
}
METHODS: tuple[str, ...] = tuple(_PLANNERS)


def plan(problem: Problem, method: str = "miqp", **options: object) -> Plan:
    """Plan ``problem`` with ``method`` (one of METHODS); every method is scored by the same
    cost model, so ``objective_value`` is comparable across methods.

    Options: ``time_limit`` (s per micro-batch size), ``dp`` and ``bands`` for ``miqp``;
    ``limit`` (plans) for ``exhaustive``.

    Raises:
      PlanError: unknown method or option.
      InfeasibleError: no plan satisfies the problem; the message says which limit binds.
      TimeLimitError: ``miqp`` ran out of time before finding any plan (or proving none).

    Example:
      >>> from planners import Problem, platforms, synthetic, coarsen
      >>> prob = Problem(coarsen(synthetic.bert_large_like(), 6), platforms.get("aws-lambda"), 16)
      >>> plan(prob, "balanced").method
      'balanced'
    """
    if method not in _PLANNERS:
        raise PlanError(f"unknown planning method {method!r}; choose one of {METHODS}")
    try:
        return _PLANNERS[method](problem, **options)
    except TypeError as err:
        raise PlanError(f"method {method!r} does not take options {sorted(options)}: "
                        f"{err}") from err


def pareto(problem: Problem, points: int = 8, method: str = "miqp",
           **options: object) -> list[Plan]:
    """Time-cost frontier by the epsilon-constraint method.

    Solves min time (no budget) and min cost (weight 0), then min cost subject to ``points``
    deadlines spaced geometrically between the two times; returns the non-dominated plans
    sorted by time.
    """
    fastest = plan(dataclasses.replace(problem, objective=Objective.min_time()), method,
                   **options)
    cheapest = plan(dataclasses.replace(problem, objective=Objective.weighted(0.0)), method,
                    **options)
    found = [fastest, cheapest]
    lo, hi = _predicted(fastest)[0], _predicted(cheapest)[0]
    if hi > lo * (1 + 1e-9):
        for deadline in np.geomspace(lo, hi, points)[1:-1]:
            try:
                found.append(plan(dataclasses.replace(
                    problem, objective=Objective.min_cost(float(deadline))), method, **options))
            except InfeasibleError:
                continue
    frontier: list[Plan] = []
    for p in sorted(found, key=_predicted):
        if not frontier or _predicted(p)[1] < _predicted(frontier[-1])[1] * (1 - 1e-9):
            frontier.append(p)
    return frontier


def _predicted(p: Plan) -> tuple[float, float]:
    """(seconds, dollars) per iteration of a plan a planner returned (always scored)."""
    if p.iteration_seconds is None or p.iteration_dollars is None:
        raise PlanError(f"plan from method {p.method!r} has no predictions; score it with "
                        "planners.cost.score")
    return p.iteration_seconds, p.iteration_dollars


