"""LambdaML-style data parallelism: the whole model in every function, the largest memory.

Every replica holds all layers on the platform's largest memory option; the replica count d
and the micro-batch size b (gradient accumulation over B / (b d) micro-batches per replica) are
chosen for the problem's objective. Under FuncPipe's schedule a replica keeps the activations
of all its micro-batches until their backward; under 1F1B (one stage: forward and backward
alternate) it keeps one micro-batch's, as a LambdaML worker accumulating gradients does; with
``schedule="any"`` both are tried. Gradients are averaged with the same pipelined
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
            for schedule in problem.schedules:
                held = 1 if schedule == "1f1b" else None  # 1F1B on one stage accumulates
                fit = model.fit(0, L - 1, m, d, held)
                if fit is None:
                    need = min(need, model.terms(0, L - 1, m, d, "recompute", held).peak_mb)
                    continue
                stage = StagePlan(0, L - 1, m, d, fit[0])
                plan = score(Plan((stage,), b, problem.global_batch, schedule), problem)
                if best is None or plan.objective_or_inf < best.objective_or_inf:
                    best = plan
    if best is None or not math.isfinite(best.objective_or_inf):
        why = (f"the whole model needs at least {need:.0f} MB but the largest option is {m} MB"
               if best is None else f"no (b, d) meets '{problem.objective.describe()}'")
        raise InfeasibleError(f"data-parallel: {why}; fix: use a pipeline method "
                              "(miqp, pipedream, balanced) or relax the limits")
    return score(best, problem, method="data-parallel", solve_seconds=time.perf_counter() - t0)
