"""The schedule in the search: 1F1B and ``schedule="any"`` against exhaustive search."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planners import InfeasibleError, Objective, Plan, StagePlan, cost, plan, simulate
from planners.exhaustive import enumerate_plans
from planners.grid_1f1b import candidate_grid_1f1b, depth

from .conftest import small_problem

KINDS = st.sampled_from(["weighted0", "weighted", "time", "budget", "deadline"])


def objective(prob, kind: str, slack: float) -> Objective | None:
    """``kind`` with its budget or deadline ``slack`` times the cheapest cost or fastest time
    (None when the problem has no plan)."""
    try:
        fastest = plan(dataclasses.replace(prob, objective=Objective.min_time()), "exhaustive")
        cheapest = plan(dataclasses.replace(prob, objective=Objective.weighted(0)), "exhaustive")
    except InfeasibleError:
        return None
    return {"weighted0": Objective.weighted(0.0), "weighted": Objective.weighted(1e-3),
            "time": Objective.min_time(),
            "budget": Objective.min_time(cheapest.iteration_dollars * slack),
            "deadline": Objective.min_cost(fastest.iteration_seconds * slack)}[kind]


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 4), kind=KINDS,
       slack=st.floats(1.0, 1.5), functions=st.integers(1, 5),
       schedule=st.sampled_from(["1f1b", "any"]), batch=st.sampled_from([4, 8]),
       dots=st.booleans())
def test_miqp_equals_exhaustive_over_schedules(seed, layers, kind, slack, functions, schedule,
                                               batch, dots) -> None:
    prob = small_problem(seed, layers, dots, max_functions=functions, schedule=schedule,
                         global_batch=batch, micro_batches=(1, 2, 4))
    obj = objective(prob, kind, slack)
    if obj is None:
        with pytest.raises(InfeasibleError):
            plan(prob, "miqp")
        return
    prob = dataclasses.replace(prob, objective=obj)
    want = plan(prob, "exhaustive")
    for dp in (True, False):  # the band DP and the band LP/MILP on the expanded chain
        got = plan(prob, "miqp", dp=dp)
        assert got.status == "optimal" and got.gap == 0.0
        assert got.objective_value == pytest.approx(want.objective_value, rel=1e-9)
        assert got.schedule in prob.schedules and cost.violations(got, prob) == []
        assert got.iteration_seconds == pytest.approx(cost.iteration_time(got, prob), rel=1e-12)
        if got.schedule == "1f1b":  # equal replicas on every stage: the schedule never
            assert len(set(got.stage_replicas)) == 1  # deadlocks (replayed here)
            assert simulate.simulate(got, prob).iteration_seconds > 0


def test_any_is_funcpipe_plus_one_stage_1f1b() -> None:
    """``any`` holds FuncPipe-ordered plans and one-stage 1F1B plans (accumulating data
    parallelism), not multi-stage 1F1B ones, whose closed form the simulator does not confirm."""
    for seed in range(6):
        base = small_problem(seed, 3, global_batch=8, micro_batches=(1, 2, 4))
        try:
            funcpipe = plan(base, "miqp").objective_value
        except InfeasibleError:
            funcpipe = np.inf
        one = dataclasses.replace(base, schedule="1f1b")
        accumulate = min((one.objective.value(s.seconds, s.dollars)
                          for s in enumerate_plans(one) if len(s.plan.stages) == 1),
                         default=np.inf)
        got = plan(dataclasses.replace(base, schedule="any"), "miqp")
        assert got.objective_value == pytest.approx(min(funcpipe, accumulate), rel=1e-9)
        assert got.schedule == "funcpipe" or len(got.stages) == 1


def test_expanded_chain_edges_are_priced_as_the_cost_model_prices_their_position() -> None:
    """Every edge node(i, r) -> node(j+1, r-1) carries the terms ``cost.plan_terms`` gives a
    stage of layers i..j with r - 1 stages after it, in the memory and mode the edge says."""
    prob = small_problem(3, 4, global_batch=8, micro_batches=(2,), max_functions=8)
    L = prob.profile.num_layers
    R, loops = depth(prob, 2, 1)
    assert (R, loops) == (4, False) and depth(prob, 2, 2) == (2, True)
    grid = candidate_grid_1f1b(prob, 2, 1)
    c = grid.arrays
    assert grid.layers is not None and grid.nodes == L * (R + 1)

    def stages_to_come(node: int) -> tuple[int, int]:  # (layer, r) of a node >= 1
        layer, offset = divmod(node - 1, R + 1)
        return layer + 1, R - offset

    for v in range(len(grid)):
        i, j = int(grid.layers[0][v]), int(grid.layers[1][v])
        end_layer, after = stages_to_come(int(c.last[v]) + 1)
        assert end_layer == j + 1
        if i > 0:
            assert stages_to_come(int(c.first[v])) == (i, after + 1)
        # a plan putting this stage at position s of S = s + 1 + after stages
        before = [StagePlan(k, k, 3072) for k in range(i)]
        tail = [StagePlan(j + 1 + k, j + 1 + k, 3072) for k in range(after - 1)]
        if after:
            tail.append(StagePlan(j + after, L - 1, 3072))
        stages = (*before, grid.stage(v), *tail)
        p = Plan(tuple(stages), 2, 8, "1f1b")
        t = cost.plan_terms(p, prob)[len(before)]
        assert t.peak_mb <= grid.stage(v).memory_mb
        assert c.fill[v] == t.fill_fwd + t.fill_bwd
        assert c.a_fwd[v] == (t.per_replica - 1) * t.period_1f1b and c.a_bwd[v] == 0.0
        assert c.tail[v] == t.sync + t.update


def test_accumulating_data_parallelism_is_a_point_of_the_search() -> None:
    """A model whose activations fit one micro-batch at a time but not all of them: FuncPipe's
    order needs recompute or a pipeline; 1F1B on one stage (gradient accumulation) runs in
    stash mode, and ``any`` finds it, as ``data-parallel`` does."""
    prob = small_problem(11, 2, global_batch=8, micro_batches=(1,), replica_options=(1,),
                         max_functions=1, allow_recompute=False)
    prob = dataclasses.replace(prob, profile=dataclasses.replace(prob.profile, layers=tuple(
        dataclasses.replace(layer, param_bytes=1 << 20, stash_bytes_per_sample=300 * (1 << 20))
        for layer in prob.profile.layers)))
    with pytest.raises(InfeasibleError):
        plan(prob, "miqp")  # 8 micro-batches x 600 MB of residuals fit no 3 GB function
    prob = dataclasses.replace(prob, schedule="any")
    got, dp = plan(prob, "miqp"), plan(prob, "data-parallel")
    assert got.schedule == dp.schedule == "1f1b" and len(got.stages) == 1
    assert got.stages[0].mode == "stash" and got.objective_value == dp.objective_value
    assert got.objective_value == min(
        prob.objective.value(s.seconds, s.dollars) for s in enumerate_plans(prob))
