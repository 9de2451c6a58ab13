"""The CPU-share model: Amdahl's law per layer in the cost model, the grid and the planner."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from planners import LayerProfile, ModelProfile, Objective, PlanError, Problem, coarsen, plan
from planners.cost import StageModel
from planners.cpu_share import amdahl_split, compute_factors, fit_parallel_fraction

from .conftest import hand_platform, small_problem
from .test_stage_grid import assert_same


def with_fractions(prob: Problem, fractions: Sequence[float | None], ref: float = 1.0,
                   ) -> Problem:
    prof = prob.profile
    layers = tuple(dataclasses.replace(x, parallel_fraction=p)
                   for x, p in zip(prof.layers, fractions, strict=True))
    return dataclasses.replace(prob, profile=dataclasses.replace(prof, layers=layers,
                                                                 reference_cpus=ref))


@pytest.mark.parametrize("ref", [1.0, 2.0, 3.0, 0.7])
@pytest.mark.parametrize("seed", range(3))
def test_p_one_reproduces_the_perfect_scaling_model_bit_for_bit(seed: int, ref: float) -> None:
    prob = small_problem(seed, layers=4)
    for fractions in ([1.0] * 4, [None] * 4):
        p1 = with_fractions(prob, fractions, ref)
        for b in p1.valid_micro_batches:
            model = StageModel(p1, b)
            # the model before Amdahl: r * (prefix sum of fwd_l(b)), r = reference / c
            fwd_pre, bwd_pre = [0.0], [0.0]
            for layer in p1.profile.layers:
                fwd_pre.append(fwd_pre[-1] + layer.fwd_time(b))
                bwd_pre.append(bwd_pre[-1] + layer.bwd_time(b))
            for m in p1.platform.memory_options_mb:
                r = ref / p1.platform.cpus(m)
                for i in range(4):
                    for j in range(i, 4):
                        for mode in ("stash", "recompute"):
                            t = model.terms(i, j, m, 1, mode)
                            fwd = r * (fwd_pre[j + 1] - fwd_pre[i])
                            bwd = r * (bwd_pre[j + 1] - bwd_pre[i]) + (
                                fwd if mode == "recompute" else 0.0)
                            assert (t.fwd, t.bwd) == (fwd, bwd)


def test_a_layer_at_half_one_and_four_cpus_by_hand() -> None:
    # 3 s forward, 6 s backward at 2 reference CPUs with p = 0.5: on one CPU t1 = 3 / (0.5 +
    # 0.5 / 2) = 4 s and 8 s; on c CPUs t1 ((1 - p) / min(c, 1) + p / c):
    # c = 0.5: 4 (1 + 1) = 8, c = 1: 4, c = 4: 4 (0.5 + 0.125) = 2.5 (backward twice that)
    plat = hand_platform(memory_options_mb=(512, 1024, 4096),
                         cpu_table={512: 0.5, 1024: 1.0, 4096: 4.0}, max_cpus=4.0)
    layer = LayerProfile("l", 0, 1.0, 1.0, 0.0, 3.0, 0.0, 6.0, parallel_fraction=0.5)
    prof = ModelProfile("one", (layer,), 1.0, reference_cpus=2.0)
    model = StageModel(Problem(prof, plat, 1, micro_batches=(1,), replica_options=(1,)), 1)
    for m, fwd in ((512, 8.0), (1024, 4.0), (4096, 2.5)):
        t = model.terms(0, 0, m, 1)
        assert t.fwd == pytest.approx(fwd, rel=1e-12)
        assert t.bwd == pytest.approx(2 * fwd, rel=1e-12)
        assert model.terms(0, 0, m, 1, "recompute").bwd == pytest.approx(3 * fwd, rel=1e-12)
    # at the reference share the time is the profile's
    (serial, parallel), (q, r) = amdahl_split(3.0, 0.5, 2.0), compute_factors(2.0, 2.0)
    assert q * serial + r * parallel == pytest.approx(3.0)


def test_the_fit_inverts_amdahl_and_clips() -> None:
    t1, p = 10.0, 0.3
    for n in (2, 4, 6):
        assert fit_parallel_fraction(t1, t1 * (1 - p + p / n), n) == pytest.approx(p)
    assert fit_parallel_fraction(1.0, 1.2, 2) == 0.0  # slower on more cores
    assert fit_parallel_fraction(1.0, 0.3, 2) == 1.0  # super-linear noise
    with pytest.raises(ValueError, match="cpus >= 2"):
        fit_parallel_fraction(1.0, 1.0, 1)


@pytest.mark.parametrize("dots", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_the_grid_equals_the_cost_model_with_measured_fractions(seed: int, dots: bool) -> None:
    base = small_problem(seed, layers=1 + seed % 4, dots=dots)  # dots: its backward split too
    L = base.profile.num_layers
    fractions = [(0.13 * (k + seed)) % 1.0 for k in range(L)]
    for ref in (1.0, 2.0):
        prob = with_fractions(base, list(fractions), ref)
        for b in prob.valid_micro_batches:
            assert_same(prob, b)
    # the model-wide default applies to layers without their own
    prob = with_fractions(base, [None] * L)
    prob = dataclasses.replace(prob, profile=dataclasses.replace(prob.profile,
                                                                 parallel_fraction=0.2))
    assert prob.profile.parallel_fractions() == (0.2,) * L
    for b in prob.valid_micro_batches:
        assert_same(prob, b)


def smallest_fit(model: StageModel, first: int, last: int, replicas: int, mode: str,
                 options: tuple[int, ...]) -> int:
    return min(m for m in options
               if model.terms(first, last, m, replicas, mode).peak_mb <= m)


@pytest.mark.parametrize("seed", range(6))
def test_with_serial_layers_the_planner_buys_no_cpu_it_cannot_use(seed: int) -> None:
    # small_platform: 1024, 2048, 3072 MB with 1, 2, 3 CPUs. With p = 0 and a free optimizer
    # step, memory above the smallest that fits buys nothing, so every stage of the optimal
    # plan takes the smallest that fits it; the MIQP's plan is exhaustive search's.
    base = small_problem(seed, layers=3, max_functions=4, update_seconds_per_byte=0.0,
                         objective=Objective.weighted(1e-3))
    serial = with_fractions(base, [0.0] * 3)
    want, got = plan(serial, "exhaustive"), plan(serial, "miqp")
    assert got.status == "optimal"
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-6)
    options = serial.platform.memory_options_mb
    model = StageModel(serial, got.micro_batch)
    for st in got.stages:
        assert st.memory_mb == smallest_fit(model, st.first_layer, st.last_layer, st.replicas,
                                            st.mode, options)
    perfect = with_fractions(base, [1.0] * 3)
    fast = plan(perfect, "miqp")
    assert fast.objective_value == pytest.approx(plan(perfect, "exhaustive").objective_value,
                                                 rel=1e-6)
    assert max(st.memory_mb for st in got.stages) <= max(st.memory_mb for st in fast.stages)


def test_some_perfectly_scaling_plan_buys_memory_it_does_not_need() -> None:
    # the contrast of the test above: with p = 1 the optimum pays for CPUs (larger memory)
    bigger = 0
    for seed in range(6):
        prob = small_problem(seed, layers=3, max_functions=4, update_seconds_per_byte=0.0,
                             objective=Objective.weighted(1e-3))
        p = plan(with_fractions(prob, [1.0] * 3), "miqp")
        model = StageModel(prob, p.micro_batch)
        bigger += any(st.memory_mb > smallest_fit(model, st.first_layer, st.last_layer,
                                                  st.replicas, st.mode,
                                                  prob.platform.memory_options_mb)
                      for st in p.stages)
    assert bigger > 0


def test_coarsening_weights_the_fractions_by_time() -> None:
    prob = small_problem(3, layers=4)
    prob = with_fractions(prob, [0.0, 1.0, 0.5, None], ref=2.0)
    prof = dataclasses.replace(prob.profile, parallel_fraction=0.25)
    coarse = coarsen(prof, 2, micro_batch=2)
    fine, merged = StageModel(dataclasses.replace(prob, profile=prof), 2), \
        StageModel(dataclasses.replace(prob, profile=coarse), 2)
    groups = coarse.meta["groups"]
    for g, (a, b) in enumerate(groups):
        for m in prob.platform.memory_options_mb:  # exact at the coarsening micro-batch size
            want = fine.terms(a, b, m, 1)
            got = merged.terms(g, g, m, 1)
            assert got.fwd + got.bwd == pytest.approx(want.fwd + want.bwd, rel=1e-9)
    assert coarsen(small_problem(3, layers=4).profile, 2).layers[0].parallel_fraction is None


def test_profiles_check_and_round_trip_their_fractions() -> None:
    layer = LayerProfile("l", 0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, parallel_fraction=0.4)
    prof = ModelProfile("m", (layer, dataclasses.replace(layer, parallel_fraction=None)), 1.0,
                        1.0, parallel_fraction=0.9)
    again = ModelProfile.from_json(prof.to_json())
    assert again == prof and again.parallel_fractions() == (0.4, 0.9)
    old = prof.to_dict()
    del old["parallel_fraction"]
    for x in old["layers"]:
        del x["parallel_fraction"]
    assert ModelProfile.from_dict(old).parallel_fractions() == (1.0, 1.0)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(PlanError, match="parallel_fraction must be in"):
            dataclasses.replace(layer, parallel_fraction=bad)
        with pytest.raises(PlanError, match="parallel_fraction must be in"):
            dataclasses.replace(prof, parallel_fraction=bad)
