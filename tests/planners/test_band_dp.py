"""The band DP: dominance by hand, one band over all times against enumeration, and the band
search with the DP against the same search with band LPs and MILPs (the stated model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planners import InfeasibleError, band_dp, bands, plan
from planners.band_dp import dominates, pareto, solve_band_dp
from planners.bounds import Band, prune
from planners.cost import score
from planners.miqp import plan_miqp
from planners.plans import Plan
from planners.stage_grid import candidate_grid

from .conftest import small_problem
from .test_bands import KINDS, with_objective
from .test_limits import BELOW, limited


def label(F: float, R: float = 1.0, Q: float = 1.0, n: float = 1.0, mF: float = 0.0,
          mB: float = 0.0, mY: float = 0.0, mH: float = 0.0) -> list[float]:
    return [F, R, Q, n, mF, mB, mY, mH]


def test_a_faster_fill_pays_for_a_larger_bottleneck() -> None:
    # a: F = 1, mF = 2; b: F = 3, mF = 1. For any continuation with bottleneck x,
    # 1 + max(2, x) <= 3 + max(1, x), so a dominates b although its mF is larger.
    a, b = np.array([label(1.0, mF=2.0)]), np.array([label(3.0, mF=1.0)])
    assert dominates(a, b)[0, 0] and not dominates(b, a)[0, 0]
    c = np.array([label(1.5, mF=2.0)])  # 1.5 + (2 - 1) = 2.5 <= 3: c dominates b too
    assert dominates(c, b)[0, 0]
    d = np.array([label(2.5, mF=2.0)])  # 2.5 + 1 > 3: not for x < 2
    assert not dominates(d, b)[0, 0]
    e = np.array([label(1.0, R=2.0)])  # dearer per second: never dominates b
    assert not dominates(e, b)[0, 0]
    h = np.array([label(1.0, mH=1.0)])  # a window that holds a shorter iteration: neither
    assert not dominates(h, b)[0, 0]
    rows = np.concatenate([b, a, d, e, a])
    assert sorted(pareto(rows).tolist()) == [1, 3]  # a once (equal rows), and e


def test_a_dearer_label_dominates_when_it_is_faster_enough_in_the_band() -> None:
    # a: 2 s less fill at 0.1 $/s more. For T_b in [10, 12] and T_a = T_b - 2,
    # 1.1 (T_b - 2) + Q < 1.0 T_b + Q, so a is cheaper and faster there; a2 saves only 0.5 s.
    a, b = np.array([label(8.0, R=1.1)]), np.array([label(10.0, R=1.0)])
    a2 = np.array([label(9.5, R=1.1)])
    trade = band_dp.Trade(10.0, 12.0, 0.0)
    assert not dominates(a, b)[0, 0] and dominates(a, b, trade)[0, 0]
    assert not dominates(a2, b, trade)[0, 0]
    assert dominates(a2, b, band_dp.Trade(10.0, 12.0, 2.0))[0, 0]  # the suffix pays 2 $/s too


def test_trade_dominance_holds_for_every_completion_in_the_band() -> None:
    # random labels and completions: whenever a dominates b under the band's trade, every
    # completion putting b's plan in the band makes a's no slower and no dearer
    rng = np.random.default_rng(0)
    lo, hi, suffix_rate = 10.0, 12.0, 0.3
    labels = rng.uniform(0.0, 1.0, (300, 8)) * [6.0, 1.0, 1.0, 3.0, 2.0, 2.0, 1.0, 0.0]
    dom = dominates(labels, labels, band_dp.Trade(lo, hi, suffix_rate))  # [i, o]: o beats i
    pairs = np.argwhere(dom & ~np.eye(len(labels), dtype=bool))
    assert len(pairs) > 100
    for _ in range(200):
        fill, rate = rng.uniform(0.0, 8.0), suffix_rate + rng.uniform(0.0, 1.0)
        req, maxima = rng.uniform(0.0, 1.0), rng.uniform(0.0, 2.5, 3)
        t = labels[:, 0] + fill + np.maximum(labels[:, 4:7], maxima).sum(axis=1)
        dollars = (labels[:, 1] + rate) * t + labels[:, 2] + req
        b, a = pairs[:, 0], pairs[:, 1]
        inside = (t[b] >= lo) & (t[b] <= hi)
        assert np.all(t[a][inside] <= t[b][inside] + 1e-12)
        assert np.all(dollars[a][inside] <= dollars[b][inside] + 1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed,layers", [(0, 2), (5, 3), (8, 4), (3, 1)])
def test_one_band_over_all_times_solved_by_dp_is_the_exhaustive_optimum(
        kind: str, seed: int, layers: int) -> None:
    prob = with_objective(small_problem(seed, layers, micro_batches=(2,)), kind)
    L = prob.profile.num_layers
    grid = candidate_grid(prob, 2)
    kept = prune(prob, L, grid.arrays, None, None)
    sub = grid.arrays.take(kept.idx)
    band = Band(0.0, float(np.max(kept.t_max[np.isfinite(kept.t_max)], initial=1e9)) * 2)
    paths = solve_band_dp(prob, L, sub, band, np.inf)
    assert paths is not None
    plans = [score(Plan(tuple(grid.stage(int(kept.idx[v])) for v in path), 2, 4), prob)
             for path in paths]
    best = next(p for p in plans if np.isfinite(p.objective_or_inf))
    assert best.objective_value == pytest.approx(plan(prob, "exhaustive").objective_value,
                                                 rel=1e-9)


def test_a_band_with_too_many_labels_falls_back_to_its_lp_and_milp(monkeypatch) -> None:
    prob = small_problem(seed=7, layers=4)
    monkeypatch.setattr(band_dp, "MAX_LABELS", 0)  # every band with a label gives up
    monkeypatch.setattr(bands, "QUICK", 0)
    got = plan_miqp(prob)
    assert got.meta["milps"][-1]["lps"] > 0
    monkeypatch.undo()
    want = plan_miqp(prob)
    assert want.meta["milps"][-1]["dps"] > 0 and want.meta["milps"][-1]["milps"] == 0
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_a_beam_gives_real_plans_no_better_than_the_band_optimum(kind: str) -> None:
    prob = with_objective(small_problem(5, 4, micro_batches=(2,)), kind)
    L = prob.profile.num_layers
    grid = candidate_grid(prob, 2)
    kept = prune(prob, L, grid.arrays, None, None)
    sub = grid.arrays.take(kept.idx)
    band = Band(0.0, float(np.max(kept.t_max[np.isfinite(kept.t_max)], initial=1e9)) * 2)

    def values(paths: list[list[int]] | None) -> list[float]:
        assert paths
        return [score(Plan(tuple(grid.stage(int(kept.idx[v])) for v in path), 2, 4),
                      prob).objective_or_inf for path in paths]

    exact = min(values(solve_band_dp(prob, L, sub, band, np.inf)))
    beam = values(solve_band_dp(prob, L, sub, band, np.inf, best=4, beam=2))
    assert all(v >= exact * (1 - 1e-12) for v in beam) and np.isfinite(min(beam))


def test_the_search_through_beams_finds_the_same_optimum(monkeypatch) -> None:
    # QUICK = 0: every band DP gives up at once, runs a beam, then the full DP
    prob = small_problem(seed=7, layers=5)
    want = plan_miqp(prob)
    monkeypatch.setattr(bands, "QUICK", 0)
    got = plan_miqp(prob)
    assert got.meta["milps"][-1]["dps"] > 0
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-9)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), layers=st.integers(3, 6),
       kind=st.sampled_from(["weighted0", "weighted", "time", "budget", "deadline"]),
       rank=st.integers(0, 40), below=st.sampled_from(BELOW), functions=st.integers(2, 6))
def test_the_band_dp_equals_the_band_milp(seed: int, layers: int, kind: str, rank: int,
                                          below: float, functions: int) -> None:
    prob = small_problem(seed, layers, max_functions=functions, replica_options=(1, 2),
                         micro_batches=(1, 2))
    prob = limited(prob, kind, rank, below) if layers <= 4 else with_objective(
        prob, "weighted" if kind in ("budget", "deadline") else kind)
    try:
        milp = plan_miqp(prob, dp=False)
    except InfeasibleError as err:
        with pytest.raises(InfeasibleError) as again:
            plan_miqp(prob)
        assert str(again.value) == str(err)
        return
    got = plan_miqp(prob)
    assert got.status == milp.status == "optimal"
    assert got.objective_value == pytest.approx(milp.objective_value, rel=1e-6)


def test_dp_search_solves_every_band_without_a_solver_on_a_benchmark_shape() -> None:
    from planners import coarsen, platforms, synthetic
    from planners.problem import Problem
    prob = Problem(coarsen(synthetic.resnet101_like(), 10), platforms.get("aws-lambda"), 64)
    got, milp = plan_miqp(prob), plan_miqp(prob, dp=False)
    stats = got.meta["milps"][-1]
    assert stats["lps"] == stats["milps"] == 0 and got.status == "optimal"
    assert got.objective_value == pytest.approx(milp.objective_value, rel=1e-6)
    assert dataclasses.replace(got, meta={}).stages == got.stages
