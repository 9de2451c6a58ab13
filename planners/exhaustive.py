"""Exhaustive search: every partition, memory, replica count, mode, micro-batch size and schedule.

The oracle the MIQP is tested against. It enumerates compositions of the layer chain
recursively, every (memory, replicas, mode) per stage that fits, and scores each complete plan
with the cost model's closed form (``cost.aggregate``), so it shares the per-stage terms with
the MIQP but none of its formulation, pruning or solver.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import NamedTuple

from planners.cost import StageModel, StageTerms, aggregate, fits_lifetime, score
from planners.errors import InfeasibleError, PlanError
from planners.plans import Plan, StagePlan
from planners.problem import ANY_SCHEDULE, MODES, Problem

__all__ = ["LIMIT", "Scored", "enumerate_plans", "plan_exhaustive"]

LIMIT = 2_000_000  # most complete plans enumerated before giving up


class Scored(NamedTuple):
    """One complete plan of ``enumerate_plans`` with its closed-form prediction."""

    plan: Plan
    seconds: float
    dollars: float


def enumerate_plans(problem: Problem, limit: int = LIMIT) -> Iterator[Scored]:
    """Every plan that fits memory, max_functions and the platform's window (``fits_lifetime``;
    whatever the objective), scored by the
    closed form, micro-batch sizes ascending, then schedules (``Problem.schedules``; 1F1B plans
    by replica count, the same on every stage, and stage count), then stages in lexicographic
    order.

    Raises:
      PlanError: the search space exceeds ``limit`` plans.
    """
    L = problem.profile.num_layers
    configs_per_stage = (len(problem.platform.memory_options_mb) * len(problem.replica_options)
                         * len(MODES))
    size = len(problem.valid_micro_batches) * (configs_per_stage + 1) ** (L - 1) * \
        configs_per_stage * len(problem.schedules)
    if size > limit:
        raise PlanError(f"exhaustive: about {size:.2e} plans exceed the limit of {limit:.0e}; "
                        "coarsen the profile or shrink the option sets")
    for b in problem.valid_micro_batches:
        model = StageModel(problem, b)
        for schedule in problem.schedules:
            if schedule == "funcpipe":
                yield from _walk(problem, model, schedule, None)
            else:  # 1F1B: a stage's memory depends on S - s, so S is fixed per walk, and
                # every stage has the same replica count (unequal ones can deadlock)
                most = 1 if problem.schedule == ANY_SCHEDULE else L  # "any": one-stage 1F1B
                for d in problem.replicas_for(b):
                    for S in range(1, min(L, most, problem.max_functions // d) + 1):
                        yield from _walk(problem, model, schedule, S, d)


Option = tuple[StagePlan, StageTerms]


def _walk(problem: Problem, model: StageModel, schedule: str, stages: int | None,
          replicas: int | None = None) -> Iterator[Scored]:
    """Every plan of ``model``'s micro-batch size under ``schedule``, stages in lexicographic
    order; with ``stages`` only plans of that many stages, each on ``replicas`` replicas,
    stage s priced with S - s micro-batches in flight (1F1B), else with all it owns
    (FuncPipe's order)."""
    L, b = model.L, model.b
    options: dict[tuple[int, int, int | None], list[Option]] = {}

    def configs(i: int, j: int, held: int | None) -> list[Option]:
        if (i, j, held) not in options:
            options[i, j, held] = [
                (StagePlan(i, j, m, d, mode), t)
                for m in problem.platform.memory_options_mb
                for d in problem.replicas_for(b) if replicas in (None, d)
                for mode in model.dots.modes(problem, i, j)  # every mode, none dominated out
                if (t := model.terms(i, j, m, d, mode, held)).peak_mb <= m]
        return options[i, j, held]

    def walk(start: int, chosen: list[Option], used: int) -> Iterator[Scored]:
        if start == L:
            terms = [t for _, t in chosen]
            seconds, dollars = aggregate(terms, problem, schedule)
            if (stages is None or len(chosen) == stages) and fits_lifetime(terms, seconds):
                yield Scored(Plan(tuple(s for s, _ in chosen), b, problem.global_batch,
                                  schedule), seconds, dollars)
            return
        if stages is not None and len(chosen) == stages:
            return
        held = None if stages is None else stages - len(chosen)
        for j in range(start, L):
            for stage, t in configs(start, j, held):
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
