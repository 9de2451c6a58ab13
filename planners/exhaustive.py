"""Exhaustive search: every partition, memory, replica count, mode and micro-batch size.

The oracle the MIQP is tested against. It enumerates compositions of the layer chain
recursively, every (memory, replicas, mode) per stage that fits, and scores each complete plan
with the cost model's closed form (``cost.aggregate``), so it shares the per-stage terms with
the MIQP but none of its formulation, pruning or solver.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

from planners.cost import StageModel, StageTerms, aggregate, score
from planners.errors import InfeasibleError, PlanError
from planners.plans import Plan, StagePlan
from planners.problem import MODES, Problem

__all__ = ["LIMIT", "Scored", "enumerate_plans", "plan_exhaustive"]

LIMIT = 2_000_000  # most complete plans enumerated before giving up


class Scored(NamedTuple):
    """One complete plan of ``enumerate_plans`` with its closed-form prediction."""

    plan: Plan
    seconds: float
    dollars: float


def enumerate_plans(problem: Problem, limit: int = LIMIT) -> Iterator[Scored]:
    """Every plan that fits memory and max_functions (whatever the objective), scored by the
    closed form, micro-batch sizes ascending, then stages in lexicographic order.

    Raises:
      PlanError: the search space exceeds ``limit`` plans.
    """
    L = problem.profile.num_layers
    configs_per_stage = (len(problem.platform.memory_options_mb) * len(problem.replica_options)
                         * len(MODES))
    size = len(problem.valid_micro_batches) * (configs_per_stage + 1) ** (L - 1) * \
        configs_per_stage
    if size > limit:
        raise PlanError(f"exhaustive: about {size:.2e} plans exceed the limit of {limit:.0e}; "
                        "coarsen the profile or shrink the option sets")
    modes = MODES if problem.allow_recompute else ("stash",)
    for b in problem.valid_micro_batches:
        model = StageModel(problem, b)
        options: dict[tuple[int, int], list[tuple[StagePlan, StageTerms]]] = {}
        for i in range(L):
            for j in range(i, L):
                options[i, j] = [
                    (StagePlan(i, j, m, d, mode), t)
                    for m in problem.platform.memory_options_mb
                    for d in problem.replicas_for(b) for mode in modes
                    if (t := model.terms(i, j, m, d, mode)).peak_mb <= m]

        def walk(start: int, chosen: list[tuple[StagePlan, StageTerms]], used: int, b: int = b,
                 options: dict[tuple[int, int], list[tuple[StagePlan, StageTerms]]] = options,
                 ) -> Iterator[Scored]:
            if start == L:
                seconds, dollars = aggregate([t for _, t in chosen], problem)
                yield Scored(Plan(tuple(s for s, _ in chosen), b, problem.global_batch),
                             seconds, dollars)
                return
            for j in range(start, L):
                for stage, t in options[start, j]:
                    if used + stage.replicas <= problem.max_functions:
                        yield from walk(j + 1, chosen + [(stage, t)], used + stage.replicas)

        yield from walk(0, [], 0)


def plan_exhaustive(problem: Problem, limit: int = LIMIT) -> Plan:
    """The optimal plan by enumeration (small problems only); ties keep the first plan of
    ``enumerate_plans``.

    Raises:
      PlanError: the search space exceeds ``limit`` plans.
      InfeasibleError: no plan satisfies the problem.
    """
    t0 = time.perf_counter()
    obj = problem.objective
    best: tuple[float, Plan] | None = None
    count = 0
    for p in enumerate_plans(problem, limit):
        count += 1
        if obj.feasible(p.seconds, p.dollars):
            value = obj.value(p.seconds, p.dollars)
            if best is None or value < best[0]:
                best = (value, p.plan)
    if best is None:
        raise InfeasibleError(f"exhaustive: none of {count} complete plans meets memory limits "
                              f"and '{obj.describe()}'")
    return score(best[1], problem, method="exhaustive", solve_seconds=time.perf_counter() - t0,
                 gap=0.0, status="optimal", meta={"plans_enumerated": count})
