"""PipeDream's partitioner (Narayanan et al., SOSP'19), adapted to functions.

PipeDream's dynamic program splits a layer chain over machines, replicating stages, to minimise
the slowest stage's time per mini-batch. Here every function has the same memory m (enumerated,
as is the micro-batch size b), and

  A(j, n) = min over i < j, d in replicas, d <= n, stage (i..j-1, m, d) fits memory of
            max( A(i, n - d), stage_time(i, j-1, d) ),      A(0, 0) = 0
  stage_time = max(M/d * (F+G), M/d * (U^a+U^g), M/d * (D^a+D^g)) + sync

(per iteration: a replica's share of compute and of each storage lane, plus its all-reduce).
Each (b, m, n <= max_functions) optimum is re-scored by the shared cost model and the best plan
for the problem's objective is returned.
"""

from __future__ import annotations

import math
import time

from planners.cost import StageModel, score
from planners.errors import InfeasibleError
from planners.plans import Plan, StagePlan
from planners.problem import Problem

__all__ = ["plan_pipedream"]


def plan_pipedream(problem: Problem) -> Plan:
    """Best PipeDream-DP plan over micro-batch sizes, homogeneous memories and function counts.

    Raises:
      InfeasibleError: no (b, m) admits a fitting partition within max_functions.
    """
    t0 = time.perf_counter()
    L, N, obj = problem.profile.num_layers, problem.max_functions, problem.objective
    best: Plan | None = None
    for b in problem.valid_micro_batches:
        model = StageModel(problem, b)
        reps = problem.replicas_for(b)
        for m in problem.platform.memory_options_mb:
            stage: dict[tuple[int, int, int], tuple[float, str]] = {}  # (i, j, d) -> (time, mode)
            for i in range(L):
                for j in range(i, L):
                    for d in reps:
                        fit = model.fit(i, j, m, d)
                        if fit is not None:
                            t = fit[1]
                            k = model.M / d
                            stage[i, j, d] = (max(k * (t.fwd + t.bwd), k * (t.act_up + t.grad_up),
                                                  k * (t.act_down + t.grad_down)) + t.sync, fit[0])
            # A[j][n]: best bottleneck for layers 0..j-1 on exactly n functions; back[j, n]: the
            # last stage of that optimum, (first layer i, replicas d, mode)
            A = [[math.inf] * (N + 1) for _ in range(L + 1)]
            A[0][0] = 0.0
            back: dict[tuple[int, int], tuple[int, int, str]] = {}
            for j in range(1, L + 1):
                for i in range(j):
                    for d in reps:
                        entry = stage.get((i, j - 1, d))
                        if entry is None:
                            continue
                        for n in range(d, N + 1):
                            prev = A[i][n - d]
                            if prev < math.inf:
                                val = max(prev, entry[0])
                                if val < A[j][n]:
                                    A[j][n] = val
                                    back[j, n] = (i, d, entry[1])
            for n in range(1, N + 1):
                if A[L][n] == math.inf:
                    continue
                stages: list[StagePlan] = []
                j, k = L, n
                while j > 0:
                    i, d, mode = back[j, k]
                    stages.append(StagePlan(i, j - 1, m, d, mode))
                    j, k = i, k - d
                plan = score(Plan(tuple(stages[::-1]), b, problem.global_batch), problem)
                if best is None or plan.objective_or_inf < best.objective_or_inf:
                    best = plan
    if best is None or not math.isfinite(best.objective_or_inf):
        raise InfeasibleError(
            f"pipedream: no homogeneous-memory partition fits {problem.platform.max_memory_mb} MB "
            f"within {N} functions while meeting '{obj.describe()}'; fix: relax the limits")
    return score(best, problem, method="pipedream", solve_seconds=time.perf_counter() - t0)
