"""The band search: its MILP against exhaustive search, one-layer chains, and heap order."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from planners import Objective, Plan, Problem, StagePlan, cost, plan
from planners.band_milp import MilpStatus, Row, band_milp, solve_band
from planners.bounds import Band, Term, candidate_arrays, prune
from planners.boxes import Box, Range
from planners.candidates import candidates

from .conftest import small_problem

KINDS = ["weighted0", "weighted", "time", "budget", "deadline"]


def with_objective(prob: Problem, kind: str, slack: float = 1.3) -> Problem:
    """``prob`` with objective ``kind``; budgets and deadlines ``slack`` above the exhaustive
    cheapest cost and fastest time, so they bind but leave room."""
    def exhaustive(objective: Objective) -> Plan:
        return plan(dataclasses.replace(prob, objective=objective), "exhaustive")

    objective = {
        "weighted0": lambda: Objective.weighted(0.0),
        "weighted": lambda: Objective.weighted(1e-3),
        "time": Objective.min_time,
        "budget": lambda: Objective.min_time(
            exhaustive(Objective.weighted(0.0)).objective_or_inf * slack),
        "deadline": lambda: Objective.min_cost(
            exhaustive(Objective.min_time()).objective_or_inf * slack),
    }[kind]()
    return dataclasses.replace(prob, objective=objective)


def band_milp_plan(prob: Problem, micro_batch: int) -> tuple[Plan, tuple[Row, ...]]:
    """The plan of one band MILP spanning every iteration time of ``micro_batch`` (no incumbent,
    no cutoff), scored by the cost model; and the kinds of its constraint blocks."""
    L = prob.profile.num_layers
    cands = candidates(prob, micro_batch)
    c = candidate_arrays(prob, cands)
    kept = prune(prob, L, c, None, None)
    band = Band(float(kept.t_lb.min()), float(kept.t_max[np.isfinite(kept.t_max)].max()))
    m = band_milp(prob, L, c.take(kept.idx), kept.t_lb, kept.t_max, band)
    assert m.A.shape[0] == sum(n for _, n in m.blocks) == len(m.row_lower)
    res = solve_band(m, time_limit=60.0)
    assert res.status == MilpStatus.OPTIMAL and res.x is not None
    chosen = sorted((cands[int(i)] for i, x in zip(kept.idx, res.x, strict=True) if x > 0.5),
                    key=lambda k: k.first)
    stages = tuple(StagePlan(k.first, k.last, k.memory_mb, k.replicas, k.mode) for k in chosen)
    return (cost.score(Plan(stages, micro_batch, prob.global_batch), prob),
            tuple(row for row, _ in m.blocks))


@pytest.mark.parametrize("kind", KINDS)
def test_one_layer_band_milp_builds_and_solves_to_the_exhaustive_optimum(kind: str) -> None:
    # Regression: the level-set rows (2') were told apart by a tag equal to their row count, L
    # for a cover row and 1 for a sum row, so with L = 1 every sum row was read as a cover row
    # and building the MILP raised "ValueError: setting an array element with a sequence".
    # slack 2: a looser deadline keeps enough candidates for the level sets to exist
    prob = with_objective(small_problem(seed=3, layers=1, micro_batches=(1,)), kind, slack=2.0)
    got, rows = band_milp_plan(prob, 1)
    assert Row.LEVEL_SUM in rows and Row.LEVEL_COVER in rows  # the rows that collided
    want = plan(prob, "exhaustive")
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_one_layer_problem_plans_with_miqp_as_exhaustive(kind: str) -> None:
    prob = with_objective(small_problem(seed=3, layers=1), kind)
    got, want = plan(prob, "miqp"), plan(prob, "exhaustive")
    assert got.status == "optimal" and got.num_layers == 1
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-6)


@pytest.mark.parametrize("seed,layers", [(0, 2), (5, 3), (8, 3)])
def test_band_milp_over_all_times_equals_exhaustive(seed: int, layers: int) -> None:
    prob = small_problem(seed, layers, micro_batches=(2,), replica_options=(1, 2))
    got, rows = band_milp_plan(prob, 2)
    assert rows[:10] == (Row.PATH, Row.BOTTLENECK, Row.BOTTLENECK, Row.BOTTLENECK, Row.TIME,
                         Row.BILLING_FLOW, Row.BILLING_CAP, Row.BILLING_FLOOR, Row.MCCORMICK,
                         Row.FUNCTIONS)
    assert got.objective_value == pytest.approx(plan(prob, "exhaustive").objective_value,
                                                rel=1e-6)


def _flat(box: Box) -> tuple[object, ...]:
    """The 7-tuple a box used to be: (PF_lo, PF_hi, PB_lo, PB_hi, Y_lo, Y_hi, fixed)."""
    return (*itertools.chain.from_iterable(box.ranges), box.fixed)


def test_boxes_order_as_the_flat_tuples_they_replace() -> None:
    # The heap breaks ties between equal bounds by comparing boxes; keeping the old order
    # keeps the search (and its plans) unchanged.
    root = Box().fixing(frozenset({3}))
    below, above = root.halves(Term.BWD, 2.0)
    assert below.ranges[Term.BWD] == Range(0.0, 2.0) and above.ranges[Term.BWD].lo == 2.0
    assert below.fixed == above.fixed == frozenset()  # reduced costs held for the parent only
    boxes = [root, below, above, *below.halves(Term.FWD, 1.0), *above.halves(Term.TAIL, 0.5)]
    for a, b in itertools.product(boxes, repeat=2):
        assert (a < b) == (_flat(a) < _flat(b))


def test_a_no_good_row_cuts_off_exactly_the_plan_it_names() -> None:
    # The band search cuts off every plan a band MILP proposed (so a plan the cost model
    # rejects cannot close its band); the row must exclude that plan and nothing else.
    prob = small_problem(5, 3, micro_batches=(2,), replica_options=(1, 2))
    L = prob.profile.num_layers
    cands = candidates(prob, 2)
    c = candidate_arrays(prob, cands)
    kept = prune(prob, L, c, None, None)
    band = Band(float(kept.t_lb.min()), float(kept.t_max[np.isfinite(kept.t_max)].max()))
    sub = c.take(kept.idx)

    def solve(no_good: list[np.ndarray]) -> tuple[float, list[int]]:
        m = band_milp(prob, L, sub, kept.t_lb, kept.t_max, band, no_good=no_good)
        res = solve_band(m, time_limit=60.0)
        assert res.status == MilpStatus.OPTIMAL and res.x is not None
        return res.bound, [k for k, x in enumerate(res.x) if x > 0.5]

    best, path = solve([])
    second, other = solve([np.array(path)])
    assert other != path and second >= best * (1 - 1e-9)
    third, _ = solve([np.array(path), np.array(other)])
    assert third >= second * (1 - 1e-9)
