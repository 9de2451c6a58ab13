"""The dots mode in the planners: hand-computed choice, exhaustive search, profile values."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planners import (
    InfeasibleError,
    LayerProfile,
    ModelProfile,
    Objective,
    PlanError,
    Problem,
    coarsen,
    cost,
    plan,
    synthetic,
)

from .conftest import MIB, hand_platform, small_problem


def dots_problem(**kw: object) -> Problem:
    """One layer: 400 MiB stash or 40 MiB dots residuals per sample; backward 2 s per sample in
    stash mode, 2.5 s in dots mode, 2 + 1 (the forward again) in recompute mode. B = 4, b = 1,
    one 1024 MB function: stash needs 4 x 400 MiB and does not fit, dots (4 x 40 + 360) and
    recompute (4 inputs + 400) do."""
    layer = LayerProfile("conv", 0, 400.0 * MIB, 0.0, 0.0, 1.0, 0.0, 2.0,
                         dots_stash_bytes_per_sample=40.0 * MIB, dots_bwd_alpha=0.0,
                         dots_bwd_beta=2.5)
    prof = ModelProfile("one", (layer,), input_bytes_per_sample=1e6, reference_cpus=1.0)
    prob = Problem(prof, hand_platform(memory_options_mb=(1024,)), global_batch=4,
                   micro_batches=(1,), replica_options=(1,), update_seconds_per_byte=0.0,
                   objective=Objective.min_time())
    return dataclasses.replace(prob, **kw)


def test_dots_is_chosen_when_stash_does_not_fit_and_beats_recompute() -> None:
    prob = dots_problem()
    model = cost.StageModel(prob, 1)
    stash, dots, rec = (model.terms(0, 0, 1024, 1, m) for m in ("stash", "dots", "recompute"))
    io = 2 * 1e6 / MIB  # the double-buffered input; a last stage sends nothing
    assert stash.peak_mb == pytest.approx(4 * 400 + io + 150)  # > 1024
    assert dots.peak_mb == pytest.approx(4 * 40 + (400 - 40) + io + 150)
    assert rec.peak_mb == pytest.approx(4 * 1e6 / MIB + 400 + io + 150)
    assert (stash.bwd, dots.bwd, rec.bwd) == (2.0, 2.5, 3.0)
    assert model.fit(0, 0, 1024, 1) == ("dots", dots)
    for method in ("exhaustive", "miqp", "data-parallel"):
        best = plan(prob, method)
        assert [st.mode for st in best.stages] == ["dots"], method
        # fill 1 + 2.5 (input download 1 s), bottleneck 3 x (1 + 2.5)
        assert best.iteration_seconds == pytest.approx(1 + 1 + 2.5 + 3 * 1 + 3 * 2.5)
    without = plan(dataclasses.replace(prob, allow_dots=False), "exhaustive")
    assert [st.mode for st in without.stages] == ["recompute"]
    assert (without.iteration_seconds or 0.0) - (best.iteration_seconds or 0.0) == \
        pytest.approx(4 * 0.5)
    with pytest.raises(InfeasibleError):
        plan(dataclasses.replace(prob, allow_dots=False, allow_recompute=False), "miqp")


def test_fit_takes_the_fastest_mode_that_fits_even_against_the_usual_order() -> None:
    # a noisy profile whose dots backward is below the stash one: dots wins where both fit
    prob = dots_problem(global_batch=1)  # one micro-batch: stash fits too
    fast = dataclasses.replace(prob.profile.layers[0], dots_bwd_beta=1.5)
    prob = dataclasses.replace(prob, profile=dataclasses.replace(prob.profile, layers=(fast,)))
    assert cost.StageModel(prob, 1).fit(0, 0, 1024, 1)[0] == "dots"  # type: ignore[index]
    assert cost.StageModel(dataclasses.replace(prob, allow_dots=False), 1).fit(
        0, 0, 1024, 1)[0] == "stash"  # type: ignore[index]


def test_dots_needs_a_dots_profile_of_every_layer_of_the_stage() -> None:
    prof = synthetic.random_profile(3, 4, dots=True)
    missing = [i for i, x in enumerate(prof.layers) if not x.has_dots]
    assert missing, "seed 3 should leave a layer without a dots profile"
    model = cost.StageModel(Problem(prof, hand_platform(), 4), 1)
    k = missing[0]
    assert "dots" not in model.dots.modes(model.problem, 0, 3)
    assert model.dots.modes(model.problem, k, k) == ("stash", "recompute")
    with pytest.raises(PlanError, match="dots-mode profile"):
        model.terms(0, 3, 1024, 1, "dots")


def test_dots_fields_survive_json_and_add_up_when_coarsened() -> None:
    prof = synthetic.random_profile(5, 6, dots=True)
    assert ModelProfile.from_json(prof.to_json()) == prof
    merged = coarsen(prof, 2)
    for group, (a, b) in zip(merged.layers, merged.meta["groups"], strict=True):
        members = prof.layers[a:b + 1]
        assert group.has_dots == all(x.has_dots for x in members)
        if group.has_dots:
            assert group.dots_stash_bytes_per_sample == pytest.approx(
                sum(x.dots_stash_bytes_per_sample or 0.0 for x in members))
            assert group.dots_bwd_time(4) == pytest.approx(sum(x.dots_bwd_time(4)
                                                               for x in members))
    with pytest.raises(PlanError, match="all given or all None"):
        dataclasses.replace(prof.layers[0], dots_bwd_alpha=None)


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), layers=st.integers(2, 4), functions=st.integers(2, 5),
       weight=st.sampled_from([0.0, 1e-3, None]), recompute=st.booleans())
def test_miqp_equals_exhaustive_with_dots_profiles(seed, layers, functions, weight,
                                                   recompute) -> None:
    objective = Objective.min_time() if weight is None else Objective.weighted(weight)
    prob = small_problem(seed, layers, dots=True, max_functions=functions, objective=objective,
                         allow_recompute=recompute)
    try:
        want = plan(prob, "exhaustive")
    except InfeasibleError:
        with pytest.raises(InfeasibleError):
            plan(prob, "miqp")
        return
    got = plan(prob, "miqp")
    assert got.status == "optimal"
    assert got.objective_value == pytest.approx(want.objective_value, rel=1e-6)
