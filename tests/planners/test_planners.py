"""One contract suite over every planner, and the MIQP against exhaustive search."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planners import METHODS, InfeasibleError, Objective, Problem, cost, plan, platforms, synthetic

from .conftest import small_problem


@pytest.mark.parametrize("method", METHODS)
def test_every_planner_returns_a_valid_plan_priced_by_the_cost_model(method) -> None:
    prob = small_problem(seed=5)
    p = plan(prob, method)
    assert p.method == method and p.num_layers == prob.profile.num_layers
    assert cost.violations(p, prob) == []
    assert p.iteration_seconds == pytest.approx(cost.iteration_time(p, prob))
    assert p.iteration_dollars == pytest.approx(cost.iteration_cost(p, prob))
    assert p.objective_value == pytest.approx(prob.objective.value(p.iteration_seconds,
                                                                   p.iteration_dollars))
    assert plan(prob, method).stages == p.stages  # deterministic


def test_miqp_is_never_worse_than_a_rival() -> None:
    prob = small_problem(seed=7, layers=4)
    best = plan(prob, "miqp")
    assert best.status == "optimal" and best.gap == 0.0
    for method in METHODS:
        assert best.objective_value <= plan(prob, method).objective_value * (1 + 1e-6)


OBJECTIVES = st.sampled_from(["weighted0", "weighted", "budget", "deadline", "time"])


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), layers=st.integers(2, 4), kind=OBJECTIVES,
       slack=st.floats(1.0, 1.6), functions=st.integers(2, 5), cached=st.booleans())
def test_miqp_equals_exhaustive(seed, layers, kind, slack, functions, cached) -> None:
    prob = small_problem(seed, layers, max_functions=functions,
                         cached_input_bytes=50e6 if cached else None)
    try:
        fastest = plan(dataclasses.replace(prob, objective=Objective.min_time()), "exhaustive")
        cheapest = plan(dataclasses.replace(prob, objective=Objective.weighted(0)), "exhaustive")
    except InfeasibleError:
        with pytest.raises(InfeasibleError):
            plan(prob, "miqp")
        return
    objective = {"weighted0": Objective.weighted(0.0), "weighted": Objective.weighted(1e-3),
                 "time": Objective.min_time(),
                 "budget": Objective.min_time(cheapest.iteration_dollars * slack),
                 "deadline": Objective.min_cost(fastest.iteration_seconds * slack)}[kind]
    prob = dataclasses.replace(prob, objective=objective)
    want, got = plan(prob, "exhaustive"), plan(prob, "miqp")
    assert got.status == "optimal"
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-6)
    assert objective.feasible(got.iteration_seconds, got.iteration_dollars)


@pytest.mark.parametrize("seed", [1, 4])
def test_band_search_equals_the_single_milp(seed) -> None:
    from planners.miqp import plan_miqp
    prob = small_problem(seed, layers=4, max_functions=5)
    banded, single = plan_miqp(prob), plan_miqp(prob, bands=False)
    assert banded.status == single.status == "optimal"
    assert banded.objective_value == pytest.approx(single.objective_value, rel=1e-6)


def test_infeasible_memory_names_the_layer_and_the_memory_it_needs() -> None:
    prof = synthetic.random_profile(0, 3)
    huge = dataclasses.replace(prof.layers[1], param_bytes=10 * 1024**3)
    prob = dataclasses.replace(small_problem(), profile=dataclasses.replace(
        prof, layers=(prof.layers[0], huge, prof.layers[2])))
    with pytest.raises(InfeasibleError, match=r"layer 1 \('l1'\) needs \d+ MB") as err:
        plan(prob, "miqp")
    assert "3072 MB" in str(err.value) and "fix:" in str(err.value)


def test_impossible_deadline_reports_the_fastest_time() -> None:
    prob = small_problem(seed=2, objective=Objective.min_cost(1e-4))
    with pytest.raises(InfeasibleError, match="fastest plan takes"):
        plan(prob, "miqp")


def test_pareto_frontier_is_non_dominated_and_sorted() -> None:
    from planners import pareto
    front = pareto(small_problem(seed=3, layers=3), points=4)
    times = [p.iteration_seconds for p in front]
    costs = [p.iteration_dollars for p in front]
    assert times == sorted(times) and costs == sorted(costs, reverse=True)
    assert len(set(costs)) == len(costs)


def test_catalog_problem_plans_on_every_platform() -> None:
    prof = synthetic.bert_large_like()
    from planners import coarsen
    for name in platforms.names():
        prob = Problem(coarsen(prof, 4), platforms.get(name), 8, micro_batches=(2,),
                       replica_options=(1, 2), max_functions=8)
        try:
            p = plan(prob, "balanced")
        except InfeasibleError as err:
            assert "fix" in str(err)
            continue
        assert cost.violations(p, prob) == []
