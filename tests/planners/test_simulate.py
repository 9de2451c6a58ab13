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


def _sampled_plans(schedule: str, keep, seeds=range(12), per=40):
    """(problem, plan, closed-form seconds) for up to ``per`` plans a problem (random
    parameterised 3-layer chains, B = 8, b in {1, 2}, d in {1, 2, 4}) that ``keep`` accepts."""
    import random

    from planners.exhaustive import enumerate_plans

    from .conftest import small_problem

    rng = random.Random(0)
    for seed in seeds:
        prob = small_problem(seed, 3, schedule=schedule, global_batch=8, micro_batches=(1, 2),
                             replica_options=(1, 2, 4), max_functions=8)
        found = [s for s in enumerate_plans(prob) if keep(s.plan)]
        for s in rng.sample(found, min(per, len(found))):
            yield prob, s.plan, s.seconds


@pytest.mark.parametrize("schedule", ["funcpipe", "1f1b"])
def test_one_stage_plans_are_simulated_exactly_by_the_closed_form(schedule) -> None:
    """Data parallelism, accumulating (1F1B) or not, any d, with parameters, sync and updates:
    the closed form is the simulator's makespan."""
    for prob, plan, seconds in _sampled_plans(schedule, lambda p: len(p.stages) == 1):
        assert seconds == pytest.approx(simulate.simulate(plan, prob).iteration_seconds,
                                        rel=1e-12)


def test_closed_form_bounds_the_simulator_within_the_updates_without_replicas() -> None:
    """FuncPipe order, d = 1, parameterised layers: the closed form charges every stage's
    update after stage 0's last backward, while later stages update during it, so
    simulator <= closed form <= simulator + max_s update_s (on these plans up to 5.5 % above)."""
    count = 0
    for prob, plan, seconds in _sampled_plans(
            "funcpipe", lambda p: len(p.stages) > 1 and max(p.stage_replicas) == 1):
        sim = simulate.simulate(plan, prob).iteration_seconds
        updates = max(t.update for t in cost.plan_terms(plan, prob))
        assert sim * (1 - 1e-12) <= seconds <= sim + updates * (1 + 1e-9)
        count += 1
    assert count > 100


@pytest.mark.parametrize("schedule,band", [("funcpipe", (0.9, 1.75)), ("1f1b", (0.55, 1.55))])
def test_multi_stage_plans_stay_in_the_measured_band(schedule, band) -> None:
    """Where the closed form is only approximate (planners/README.md states these bands):
    replicated FuncPipe pipelines, 0.95-1.70x of the simulator on 2880 random plans; 1F1B
    pipelines, 0.61-1.47x (one reason ``schedule="any"`` keeps only one-stage 1F1B plans)."""
    for prob, plan, seconds in _sampled_plans(
            schedule, lambda p: len(p.stages) > 1 and (schedule == "1f1b"
                                                       or max(p.stage_replicas) > 1)):
        ratio = seconds / simulate.simulate(plan, prob).iteration_seconds
        assert band[0] <= ratio <= band[1]
