"""The homogeneous search of uniform/balanced against the per-stage search it replaced."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from planners import InfeasibleError, Objective, Plan, Problem, coarsen, platforms, synthetic
from planners.cost import StageModel, StageTerms, aggregate
from planners.partition import Partition, balanced_cuts, best_homogeneous, uniform_cuts
from planners.plans import StagePlan
from planners.profile import ModelProfile

from .conftest import small_problem


def reference(problem: Problem, rule: Callable[[ModelProfile, int, int], Partition],
              ) -> Plan | None:
    """The search as it was: StageModel.fit per stage, cost.aggregate per plan."""
    obj, best = problem.objective, None
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
                    fits = [f for i, j in parts if (f := model.fit(i, j, m, d)) is not None]
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
                        best = (value, Plan(stages, b, problem.global_batch))
    return None if best is None else best[1]


PROBLEMS = [small_problem(seed, layers) for seed, layers in [(0, 3), (4, 5), (9, 6)]] + [
    small_problem(2, 4, cached_input_bytes=50e6, allow_recompute=False),
    Problem(coarsen(synthetic.resnet101_like(), 12), platforms.get("aws-lambda"), 64),
    Problem(coarsen(synthetic.amoebanet_d36_like(), 10), platforms.get("aws-lambda"), 64)]
OBJECTIVES = [Objective.weighted(1e-3), Objective.weighted(0.0), Objective.min_time()]


@pytest.mark.parametrize("rule", [uniform_cuts, balanced_cuts])
@pytest.mark.parametrize("k", range(len(PROBLEMS)))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_table_search_chooses_the_plan_the_per_stage_search_chose(
        rule: Callable[[ModelProfile, int, int], Partition], k: int,
        objective: Objective) -> None:
    prob = dataclasses.replace(PROBLEMS[k], objective=objective)
    want = reference(prob, rule)
    if want is None:
        with pytest.raises(InfeasibleError):
            best_homogeneous(prob, rule, "x")
        return
    got = best_homogeneous(prob, rule, "x")
    assert got.stages == want.stages and got.micro_batch == want.micro_batch
