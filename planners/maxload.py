"""The max-load partitioner FuncPipe compared against (Tarnawski et al., NeurIPS'20).

FuncPipe's baseline solves Tarnawski's integer program once per memory size with every function
the same size and no replication (in its reference code). Each device's load is its forward and
backward compute plus the non-overlapped send and receive of its boundary tensors; the IP
minimises the largest load. On a chain with contiguous stages that IP is exactly the min-max
partition solved here by dynamic programming over (layer prefix, stage count):

  B(j, s) = min over i < j of max(B(i, s-1), load(i, j-1)),   load = F+G+U^a+D^a+U^g+D^g

with s <= max_functions and only stages that fit memory. Each (b, m) optimum is re-scored by
the shared cost model; the best for the problem's objective is returned.
"""

from __future__ import annotations

import math
import time

from planners.cost import StageModel, score
from planners.errors import InfeasibleError
from planners.plans import Plan, StagePlan
from planners.problem import Problem

__all__ = ["plan_maxload"]


def plan_maxload(problem: Problem) -> Plan:
    """Best max-load plan over micro-batch sizes and homogeneous memory sizes, d = 1.

    Raises:
      InfeasibleError: no memory size holds a partition with d = 1 within max_functions.
    """
    t0 = time.perf_counter()
    L, N = problem.profile.num_layers, problem.max_functions
    best: Plan | None = None
    for b in problem.valid_micro_batches:
        model = StageModel(problem, b)
        for m in problem.platform.memory_options_mb:
            load: dict[tuple[int, int], tuple[float, str]] = {}  # (i, j) -> (load, mode)
            for i in range(L):
                for j in range(i, L):
                    fit = model.fit(i, j, m, 1)
                    if fit is not None:
                        t = fit[1]
                        load[i, j] = (t.fwd + t.bwd + t.act_up + t.act_down + t.grad_up
                                      + t.grad_down, fit[0])
            # B[j][s]: least max-load of layers 0..j-1 on s stages; back[j, s]: the last stage
            # of that optimum, (first layer i, mode)
            S = min(L, N)
            B = [[math.inf] * (S + 1) for _ in range(L + 1)]
            B[0][0] = 0.0
            back: dict[tuple[int, int], tuple[int, str]] = {}
            for s in range(1, S + 1):
                for j in range(1, L + 1):
                    for i in range(j):
                        entry = load.get((i, j - 1))
                        if entry is None or B[i][s - 1] == math.inf:
                            continue
                        val = max(B[i][s - 1], entry[0])
                        if val < B[j][s]:
                            B[j][s] = val
                            back[j, s] = (i, entry[1])
            s = min(range(S + 1), key=lambda k: B[L][k])
            if B[L][s] == math.inf:
                continue
            stages: list[StagePlan] = []
            j = L
            while j > 0:
                i, mode = back[j, s]
                stages.append(StagePlan(i, j - 1, m, 1, mode))
                j, s = i, s - 1
            plan = score(Plan(tuple(stages[::-1]), b, problem.global_batch), problem)
            if best is None or plan.objective_or_inf < best.objective_or_inf:
                best = plan
    if best is None or not math.isfinite(best.objective_or_inf):
        raise InfeasibleError(
            f"maxload: no memory size of {problem.platform.name!r} holds a d = 1 partition in "
            f"{N} functions meeting '{problem.objective.describe()}'; fix: use replication "
            "(method='miqp' or 'pipedream') or relax the limits")
    return score(best, problem, method="maxload", solve_seconds=time.perf_counter() - t0)
