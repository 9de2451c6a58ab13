"""candidate_grid (numpy, all configurations at once) against candidates (one at a time)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planners import coarsen, platforms, synthetic
from planners.bounds import candidate_arrays
from planners.candidates import candidates
from planners.problem import Problem
from planners.stage_grid import candidate_grid

from .conftest import small_problem

FIELDS = ("first", "last", "fill", "a_fwd", "a_bwd", "tail", "replicas", "rate", "req")


def assert_same(prob: Problem, b: int) -> None:
    cands = candidates(prob, b)
    grid = candidate_grid(prob, b)
    assert len(grid) == len(cands)
    if not cands:
        return
    want = candidate_arrays(prob, cands)
    for name in FIELDS:  # bit for bit, in the same order
        assert np.array_equal(getattr(grid.arrays, name), getattr(want, name)), name
    assert [grid.stage(v) for v in range(len(grid))] == [
        dataclasses.replace(grid.stage(v), memory_mb=c.memory_mb, mode=c.mode)
        for v, c in enumerate(cands)]
    assert grid.memory_mb.tolist() == [c.memory_mb for c in cands]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("options", [{}, {"cached_input_bytes": 50e6}, {"checkpoint_every": 3},
                                     {"input_cache_bytes": 30e6},
                                     {"allow_recompute": False}, {"replica_options": (1, 2, 4),
                                                                  "global_batch": 8},
                                     {"dots": True}, {"dots": True, "allow_recompute": False},
                                     {"dots": True, "allow_dots": False}])
def test_the_grid_equals_the_candidates_bit_for_bit(seed: int, options: dict[str, object]) -> None:
    prob = small_problem(seed, layers=1 + seed % 5, **options)
    for b in prob.valid_micro_batches:
        assert_same(prob, b)


def test_the_grid_equals_the_candidates_on_a_catalog_platform() -> None:
    prob = Problem(coarsen(synthetic.resnet101_like(), 8), platforms.get("aws-lambda"), 64)
    for b in prob.valid_micro_batches:
        assert_same(prob, b)
