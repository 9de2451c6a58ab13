"""JSON round trips and validation of the value classes."""

from __future__ import annotations

import json

import pytest

from planners import Objective, Plan, PlanError, Problem, StagePlan, platforms, schedule, synthetic
from planners.profile import LayerProfile, ModelProfile


def test_every_value_survives_a_json_round_trip() -> None:
    prof = synthetic.random_profile(3, 4)
    prof = ModelProfile(prof.model, tuple(
        LayerProfile(**{**layer.to_dict(), "fwd_seconds": {4: 0.5}, "bwd_seconds": {4: 1.0}})
        for layer in prof.layers), 1.0, 1.0, meta={"groups": [[0, 0], [1, 1], [2, 2], [3, 3]]})
    problem = Problem(prof, platforms.get("alibaba-fc"), 8, objective=Objective.min_cost(3.0))
    plan = Plan((StagePlan(0, 1, 1024, 2), StagePlan(2, 3, 3072, 1, "recompute")), 2, 8,
                iteration_seconds=1.5, peak_memory_mb=(10.0, 20.0), gap=0.0, status="optimal")
    sched = schedule.build(plan)
    for value in (prof, problem.platform, problem, plan, sched, problem.objective):
        text = value.to_json()
        json.loads(text)  # strict JSON
        assert type(value).from_json(text) == value
    assert ModelProfile.from_json(prof.to_json()).layers[0].fwd_time(4) == 0.5


def test_plan_cuts_are_the_first_layers_of_stages_after_the_first() -> None:
    plan = Plan((StagePlan(0, 2, 1024), StagePlan(3, 3, 1024), StagePlan(4, 9, 2048)), 1, 4)
    assert plan.cuts == (3, 4)
    assert plan.num_layers == 10 and plan.num_micro_batches == 4 and plan.num_functions == 3


def test_invalid_plan_lists_every_violation() -> None:
    with pytest.raises(PlanError) as err:
        Plan((StagePlan(1, 2, 1024), StagePlan(4, 3, 0, 0, "keep")), 3, 8)
    text = str(err.value)
    assert "start at layer 0" in text and "start at layer 3" in text
    assert "mode in" in text and "must divide global_batch 8" in text


def test_problem_rejects_micro_batches_that_never_divide_the_batch() -> None:
    with pytest.raises(PlanError, match="divides global_batch 6"):
        Problem(synthetic.random_profile(0, 2), platforms.get("local"), 6, micro_batches=(4,))


def test_objective_values_and_feasibility() -> None:
    assert Objective.weighted(2.0).value(3.0, 1.0) == 7.0
    assert Objective.min_time(0.5).value(3.0, 1.0) == 3.0
    assert not Objective.min_time(0.5).feasible(3.0, 1.0)
    assert not Objective.min_cost(2.0).feasible(3.0, 1.0)
    with pytest.raises(PlanError, match="deadline > 0"):
        Objective("deadline")


def test_unknown_profile_field_is_named() -> None:
    data = synthetic.random_profile(0, 1).to_dict() | {"colour": 1}
    with pytest.raises(PlanError, match="colour"):
        ModelProfile.from_dict(data)
