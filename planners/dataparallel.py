"""LambdaML-style data parallelism: the whole model in every function, the largest memory.

Every replica holds all layers on the platform's largest memory option; the replica count d
and the micro-batch size b (gradient accumulation over B / (b d) micro-batches per replica) are
chosen for the problem's objective. Gradients are averaged with the same pipelined
scatter-reduce as pipeline stages, so the comparison isolates partitioning.
"""

from __future__ import annotations

import math
import time

from planners.cost import StageModel, score
from planners.errors import InfeasibleError
from planners.plans import Plan, StagePlan
from planners.problem import Problem

__all__ = ["plan_data_parallel"]


def plan_data_parallel(problem: Problem) -> Plan:
    """Best single-stage plan on the largest memory option.

    Raises:
      InfeasibleError: the whole model does not fit the largest memory with any (b, d).
    """
    t0 = time.perf_counter()
    L, m = problem.profile.num_layers, problem.platform.max_memory_mb
    best: Plan | None = None
    need = math.inf
    for b in problem.valid_micro_batches:
        model = StageModel(problem, b)
        for d in problem.replicas_for(b):
            fit = model.fit(0, L - 1, m, d)
            if fit is None:
                need = min(need, model.terms(0, L - 1, m, d, "recompute").peak_mb)
                continue
            plan = score(Plan((StagePlan(0, L - 1, m, d, fit[0]),), b, problem.global_batch),
                         problem)
            if best is None or plan.objective_or_inf < best.objective_or_inf:
                best = plan
    if best is None or not math.isfinite(best.objective_or_inf):
        why = (f"the whole model needs at least {need:.0f} MB but the largest option is {m} MB"
               if best is None else f"no (b, d) meets '{problem.objective.describe()}'")
        raise InfeasibleError(f"data-parallel: {why}; fix: use a pipeline method "
                              "(miqp, pipedream, balanced) or relax the limits")
    return score(best, problem, method="data-parallel", solve_seconds=time.perf_counter() - t0)
