"""Function lifetime: windows, cold starts, checkpoint hand-overs and the concurrency limit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planners import InfeasibleError, Objective, Plan, PlanError, Problem, StagePlan, cost, plan
from planners.exhaustive import enumerate_plans

from .conftest import MIB, small_problem

KINDS = st.sampled_from(["weighted", "time", "budget", "deadline"])


def with_window(prob: Problem, quantile: float, cold: float) -> Problem:
    """``prob`` on a platform whose timeout lets about ``quantile`` of its plans fit a window
    after a cold start of ``cold`` s (seconds do not depend on the timeout)."""
    times = sorted(s.seconds for s in enumerate_plans(prob))
    t = float(np.quantile(times, quantile))
    plat = dataclasses.replace(prob.platform, timeout_s=t + cold + 0.05, cold_start_s=cold)
    return dataclasses.replace(prob, platform=plat)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 4), kind=KINDS,
       quantile=st.floats(0.0, 0.6), cold=st.floats(0.0, 3.0), slack=st.floats(1.0, 1.4),
       schedule=st.sampled_from(["funcpipe", "any"]))
def test_miqp_equals_exhaustive_when_windows_bind(seed, layers, kind, quantile, cold, slack,
                                                  schedule) -> None:
    prob = with_window(small_problem(seed, layers, schedule=schedule, max_functions=4),
                       quantile, cold)
    scored = list(enumerate_plans(prob))
    assert all(cost.fits_lifetime(cost.plan_terms(s.plan, prob), s.seconds) for s in scored)
    if not scored:
        with pytest.raises(InfeasibleError, match="fits one invocation"):
            plan(prob, "miqp")
        return
    fastest = min(s.seconds for s in scored)
    cheapest = min(s.dollars for s in scored)
    obj = {"weighted": Objective.weighted(1e-3), "time": Objective.min_time(),
           "budget": Objective.min_time(cheapest * slack),
           "deadline": Objective.min_cost(fastest * slack)}[kind]
    prob = dataclasses.replace(prob, objective=obj)
    want = plan(prob, "exhaustive")
    for dp in (True, False):
        got = plan(prob, "miqp", dp=dp)
        assert got.status == "optimal"
        assert got.objective_value == pytest.approx(want.objective_value, rel=1e-9)
        assert cost.violations(got, prob) == []


def test_a_window_bills_its_cold_start_and_hand_over(hand_problem) -> None:
    """Stage of 2 MB of parameters, Adam (2 slots): state 6 MB, hand-over 6 s + 6 s at 1 MB/s;
    timeout 100 s, cold start 8 s: a window holds 100 - 8 - 12 = 80 s of iterations and bills
    100 s for them, so the GB-seconds of an iteration cost 100 / 80 of its time; the window's
    checkpoint requests are spread over its 80 s."""
    layers = tuple(dataclasses.replace(x, param_bytes=MIB) for x in hand_problem.profile.layers)
    plat = dataclasses.replace(hand_problem.platform, timeout_s=100.0, cold_start_s=8.0)
    prob = dataclasses.replace(hand_problem, platform=plat, optimizer_slots=2, profile=(
        dataclasses.replace(hand_problem.profile, layers=layers)))
    p = Plan((StagePlan(0, 1, 1024),), 1, 2)
    (t,) = cost.plan_terms(p, prob)
    state = 2 * MIB * 3
    assert t.handover == pytest.approx(2 * state / 1e6)
    assert t.life == pytest.approx(100.0 - 8.0 - t.handover)
    seconds = cost.iteration_time(p, prob)
    assert cost.iteration_cost(p, prob) == pytest.approx(1e-5 * seconds * 100.0 / t.life)
    assert cost.violations(p, prob) == [] and cost.score(p, prob).objective_value < np.inf
    priced = dataclasses.replace(prob, platform=dataclasses.replace(
        plat, price_put=1e-3, price_get=1e-4))  # + 4 PUTs and 3 GETs per window
    assert cost.iteration_cost(p, priced) == pytest.approx(
        1e-5 * seconds * 100.0 / t.life + (4e-3 + 3e-4) * seconds / t.life
        + 1e-3 * t.puts + 1e-4 * t.gets)  # and the iteration's own requests
    short = dataclasses.replace(prob, platform=dataclasses.replace(
        plat, timeout_s=8.0 + t.handover + seconds * 0.99))
    assert cost.score(p, short).objective_value == np.inf
    assert any("does not fit a window" in v for v in cost.violations(p, short))


def test_no_plan_fits_a_window_says_so_with_the_fastest_time() -> None:
    prob = small_problem(4, 3)
    fastest = plan(dataclasses.replace(prob, objective=Objective.min_time()), "exhaustive")
    tight = dataclasses.replace(prob, platform=dataclasses.replace(
        prob.platform, timeout_s=fastest.iteration_seconds * 0.9))
    with pytest.raises(InfeasibleError, match="fits one invocation") as err:
        plan(tight, "miqp")
    assert f"{fastest.iteration_seconds:.10g} s" in str(err.value)


def test_max_functions_above_the_platform_concurrency_is_refused() -> None:
    prob = small_problem(1, 2)
    with pytest.raises(PlanError, match="max_concurrency 3"):
        dataclasses.replace(prob, platform=dataclasses.replace(prob.platform,
                                                                max_concurrency=3))
    ok = dataclasses.replace(prob, max_functions=3, platform=dataclasses.replace(
        prob.platform, max_concurrency=3))
    assert plan(ok, "miqp").num_functions <= 3
