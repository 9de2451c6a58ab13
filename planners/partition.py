"""GPipe- and torchgpipe-style rivals: a fixed partition rule plus a tuned homogeneous config.

``uniform`` (GPipe) cuts the chain into S stages of equal layer counts; ``balanced``
(torchgpipe's balance-by-time) cuts it into S stages of equal forward+backward time. Neither
rule chooses resources, so both are given the best homogeneous configuration for the problem's
objective: every (S, b, d, m) with the same memory m and replica count d on every stage is
scored by the cost model and the best feasible plan is kept (stash mode where it fits, else
recompute).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from planners.coarsening import balance_weights, partition_min_max
from planners.cost import StageModel, StageTerms, aggregate, score
from planners.errors import InfeasibleError
from planners.plans import Plan, StagePlan
from planners.problem import Problem
from planners.profile import ModelProfile

__all__ = ["balanced_cuts", "best_homogeneous", "plan_balanced", "plan_uniform", "uniform_cuts"]

Partition = list[tuple[int, int]]


def uniform_cuts(profile: ModelProfile, stages: int, micro_batch: int) -> Partition:
    """S stages of equal layer counts (the first L mod S stages get one more), inclusive."""
    L = profile.num_layers
    size, extra = divmod(L, stages)
    out: Partition = []
    start = 0
    for s in range(stages):
        n = size + (s < extra)
        out.append((start, start + n - 1))
        start += n
    return out


def balanced_cuts(profile: ModelProfile, stages: int, micro_batch: int) -> Partition:
    """S stages minimising the largest stage's forward+backward time at ``micro_batch``."""
    return partition_min_max(balance_weights(profile, micro_batch), stages)


def best_homogeneous(problem: Problem, rule: Callable[[ModelProfile, int, int], Partition],
                     method: str) -> Plan:
    """Best plan whose partition comes from ``rule`` and whose stages share memory and d."""
    t0 = time.perf_counter()
    obj = problem.objective
    best: tuple[float, Plan] | None = None
    L = problem.profile.num_layers
    for b in problem.valid_micro_batches:
        model = StageModel(problem, b)
        for S in range(1, min(L, problem.max_functions) + 1):
            parts = rule(problem.profile, S, b)
            if len(parts) != S:
                continue
            for d in problem.replicas_for(b):
                if S * d > problem.max_functions:
                    break
                for m in problem.platform.memory_options_mb:
                    fits: list[tuple[str, StageTerms]] = []
                    for i, j in parts:  # stop at the first stage that does not fit
                        if (f := model.fit(i, j, m, d)) is None:
                            break
                        fits.append(f)
                    if len(fits) < len(parts):
                        continue
                    terms: list[StageTerms] = [f[1] for f in fits]
                    seconds, dollars = aggregate(terms, problem)
                    if not obj.feasible(seconds, dollars):
                        continue
                    value = obj.value(seconds, dollars)
                    if best is None or value < best[0]:
                        stages = tuple(StagePlan(i, j, m, d, f[0])
                                       for (i, j), f in zip(parts, fits, strict=True))
                        best = (value, Plan(stages, b, problem.global_batch, problem.schedule))
    if best is None:
        raise InfeasibleError(
            f"{method}: no homogeneous (memory, replicas) configuration of its partitions fits "
            f"{problem.platform.max_memory_mb} MB within {problem.max_functions} functions "
            f"while meeting '{obj.describe()}'; fix: relax the limits or use method='miqp'")
    return score(best[1], problem, method=method, solve_seconds=time.perf_counter() - t0,
                 status="heuristic")


def plan_uniform(problem: Problem) -> Plan:
    """GPipe's rule: equal layer counts per stage, best homogeneous configuration."""
    return best_homogeneous(problem, uniform_cuts, "uniform")


def plan_balanced(problem: Problem) -> Plan:
    """torchgpipe's balance by time, best homogeneous configuration."""
    return best_homogeneous(problem, balanced_cuts, "balanced")
