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
from typing import NamedTuple

from planners.coarsening import balance_weights, partition_min_max
from planners.cost import score
from planners.errors import InfeasibleError
from planners.plans import Plan, StagePlan
from planners.problem import MODES, Problem
from planners.profile import ModelProfile
from planners.stage_grid import StageConfigs, stage_configs, window_rate

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
    """Best plan whose partition comes from ``rule`` and whose stages share memory and d.

    Every stage configuration comes from ``stage_grid.stage_configs`` (the floats
    ``StageModel.fit`` gives), and each homogeneous plan is priced with the operations of
    ``cost.aggregate`` in its order, so the choice is the one the per-stage search made."""
    t0 = time.perf_counter()
    obj, plat = problem.objective, problem.platform
    best: tuple[float, Plan] | None = None
    L = problem.profile.num_layers
    K = len(plat.memory_options_mb)
    for b in problem.valid_micro_batches:
        tables: dict[int, _Table] = {}
        for S in range(1, min(L, problem.max_functions) + 1):
            parts = rule(problem.profile, S, b)
            if len(parts) != S:
                continue
            for d in problem.replicas_for(b):
                if S * d > problem.max_functions:
                    break
                table = tables.get(d) or tables.setdefault(d, _table(problem, b, d))
                rows = [table.cfg.row(i, j, L) for i, j in parts]
                puts = sum(table.puts[r] for r in rows)
                gets = sum(table.gets[r] for r in rows)
                for k in range(K):
                    if not all(table.fits[r][k] for r in rows):
                        continue
                    fill = sum(table.fill[r][k] for r in rows)
                    bottleneck = (max(table.a_fwd[r][k] for r in rows)
                                  + max(table.a_bwd[r][k] for r in rows))
                    seconds = fill + bottleneck + max(table.tail[r][k] for r in rows)
                    rate = sum(table.rate[r][k] for r in rows)
                    dollars = rate * seconds + plat.request_dollars(puts, gets)
                    if not obj.feasible(seconds, dollars) or any(
                            seconds > table.life[r] for r in rows):
                        continue
                    value = obj.value(seconds, dollars)
                    if best is None or value < best[0]:
                        m = plat.memory_options_mb[k]
                        stages = tuple(
                            StagePlan(i, j, m, d, MODES[table.mode[r][k]])
                            for (i, j), r in zip(parts, rows, strict=True))
                        best = (value, Plan(stages, b, problem.global_batch,
                                            problem.rival_schedule))
    if best is None:
        raise InfeasibleError(
            f"{method}: no homogeneous (memory, replicas) configuration of its partitions fits "
            f"{problem.platform.max_memory_mb} MB within {problem.max_functions} functions "
            f"while meeting '{obj.describe()}'; fix: relax the limits or use method='miqp'")
    return score(best[1], problem, method=method, solve_seconds=time.perf_counter() - t0,
                 status="heuristic")


class _Table(NamedTuple):
    """``StageConfigs`` of one (b, d) as Python lists (one row per interval)."""

    cfg: StageConfigs
    fits: list[list[bool]]
    mode: list[list[int]]  # index into MODES
    fill: list[list[float]]
    a_fwd: list[list[float]]
    a_bwd: list[list[float]]
    tail: list[list[float]]
    rate: list[list[float]]  # StageTerms.rate per (interval, memory)
    life: list[float]
    puts: list[int]
    gets: list[int]


def _table(problem: Problem, micro_batch: int, d: int) -> _Table:
    cfg = stage_configs(problem, micro_batch, d)
    rate = window_rate(problem, cfg, d)
    return _Table(cfg, cfg.fits.tolist(), cfg.mode.tolist(), cfg.fill.tolist(),
                  cfg.a_fwd.tolist(), cfg.a_bwd.tolist(), cfg.tail.tolist(), rate.tolist(),
                  cfg.life.tolist(), cfg.puts.tolist(), cfg.gets.tolist())


def plan_uniform(problem: Problem) -> Plan:
    """GPipe's rule: equal layer counts per stage, best homogeneous configuration."""
    return best_homogeneous(problem, uniform_cuts, "uniform")


def plan_balanced(problem: Problem) -> Plan:
    """torchgpipe's balance by time, best homogeneous configuration."""
    return best_homogeneous(problem, balanced_cuts, "balanced")
