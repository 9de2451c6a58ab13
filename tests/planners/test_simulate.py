"""The simulator on hand-computed schedules, and against the closed form."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from planners import Plan, StagePlan, cost, simulate

from .conftest import hand_profile


def test_two_stage_pipeline_matches_the_hand_timeline(hand_problem) -> None:
    plan = Plan((StagePlan(0, 0, 1024), StagePlan(1, 1, 1024)), 1, 2)
    res = simulate.simulate(plan, hand_problem)
    assert res.iteration_seconds == pytest.approx(14.0)
    spans = {(e.rank, e.kind, e.micro_batch): (e.start, e.end) for e in res.timeline}
    assert spans[(1, "FWD", 1)] == (5.0, 6.0)  # stage 1 receives micro-batch 1 at 4..5
    assert spans[(1, "BWD", 1)] == (6.0, 8.0)  # backward starts with the last micro-batch
    assert spans[(0, "BWD", 0)] == (12.0, 14.0)
    trace = res.chrome_trace()
    assert any(ev["ph"] == "X" and ev["name"] == "BWD 0" and ev["dur"] == 2e6
               for ev in trace["traceEvents"])


@pytest.mark.parametrize("M,stages", list(itertools.product([1, 2, 5], [1, 2, 3])))
def test_closed_form_is_exact_without_replicas(hand_problem, M, stages) -> None:
    prob = dataclasses.replace(hand_problem, profile=hand_profile(3), global_batch=M)
    cuts = {1: [(0, 2)], 2: [(0, 0), (1, 2)], 3: [(0, 0), (1, 1), (2, 2)]}[stages]
    plan = Plan(tuple(StagePlan(a, b, 2048) for a, b in cuts), 1, M)
    assert simulate.simulate(plan, prob).iteration_seconds == pytest.approx(
        cost.iteration_time(plan, prob))


@pytest.mark.parametrize("reps", [(1, 2), (2, 1), (1, 4), (2, 2)])
def test_closed_form_with_replicas_stays_within_a_third_of_the_simulator(hand_problem,
                                                                         reps) -> None:
    # Replica fan-in/out and per-stage sync are where the closed form is only approximate:
    # it ignores the (d-1) arrivals a replicated stage waits for, and bounds sync by the max.
    prob = dataclasses.replace(hand_problem, global_batch=8, replica_options=(1, 2, 4))
    plan = Plan((StagePlan(0, 0, 1024, reps[0]), StagePlan(1, 1, 1024, reps[1])), 1, 8)
    closed, sim = cost.iteration_time(plan, prob), simulate.simulate(plan, prob).iteration_seconds
    assert abs(closed - sim) / sim <= 1 / 3


def test_1f1b_replays_without_deadlock(hand_problem) -> None:
    prob = dataclasses.replace(hand_problem, profile=hand_profile(3), global_batch=4,
                               replica_options=(1, 2))
    plan = Plan((StagePlan(0, 0, 1024, 1), StagePlan(1, 1, 1024, 2), StagePlan(2, 2, 1024, 1)),
                1, 4, schedule="1f1b")
    res = simulate.simulate(plan, prob)
    assert res.iteration_seconds >= cost.iteration_time(plan, prob) * 0.5
    assert len([e for e in res.timeline if e.kind == "BWD"]) == 12
