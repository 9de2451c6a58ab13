"""Coarsening balances compute and maps plans back to original layers."""

from __future__ import annotations

import itertools

from planners import Plan, StagePlan, coarsen, expand_plan, groups_of, synthetic
from planners.coarsening import balance_weights


def test_coarsen_balances_and_records_groups() -> None:
    prof = synthetic.resnet101_like()
    coarse = coarsen(prof, 30)
    assert coarse.num_layers == 30
    groups = coarse.meta["groups"]
    assert groups[0][0] == 0 and groups[-1][1] == prof.num_layers - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(groups))
    assert coarse.param_bytes == prof.param_bytes
    w = balance_weights(coarse)
    assert max(w) <= 2.0 * sum(w) / len(w)
    assert coarse.layers[0].boundary_bytes_per_sample == \
        prof.layers[groups[0][1]].boundary_bytes_per_sample


def test_coarsening_twice_composes_and_plans_expand_to_original_indices() -> None:
    prof = synthetic.random_profile(1, 12)
    twice = coarsen(coarsen(prof, 6), 3)
    assert groups_of(twice)[-1] == (groups_of(twice)[-1][0], 11)
    plan = Plan((StagePlan(0, 0, 1024), StagePlan(1, 2, 1024)), 1, 4)
    full = expand_plan(plan, twice)
    assert full.cuts == (groups_of(twice)[1][0],)
    assert full.stages[-1].last_layer == 11 and full.meta["coarse_cuts"] == [1]


def test_names_of_merged_layers() -> None:
    coarse = coarsen(synthetic.random_profile(0, 4), 2)
    assert [layer.name for layer in coarse.layers] in (["l0..l1", "l2..l3"], ["l0", "l1..l3"],
                                                        ["l0..l2", "l3"])
