"""Records of the band search (``planners.bands``): heap entries, chains, counters, result."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from planners.bounds import Band, CandidateArrays, FloatArray, IntArray
from planners.boxes import Box
from planners.plans import Plan
from planners.stage_grid import CandidateGrid

__all__: list[str] = []  # internal to planners.bands



class Phase(IntEnum):
    """What a band's next examination does. The value breaks heap ties at equal bounds:
    cheaper phases first, as the search has always done."""

    BOUND = 0  # prune, heuristic paths, cheap bound
    LP = 1  # LP relaxation, LP rounding, reduced-cost fixing
    MILP = 2  # the band MILP


class BandEntry(NamedTuple):
    """One heap entry: a box of a band of chain ``chain`` (a micro-batch size and schedule,
    numbered by micro-batch size, then schedule). Ordered by the lower ``bound`` on its plans'
    objective, then the other fields."""

    bound: float
    phase: Phase
    chain: int
    band: Band
    limit: float  # HiGHS time limit of its MILP, s
    box: Box


@dataclass
class SearchStats:
    """Counters of one band search, logged in ``Plan.meta["milps"]``."""

    bands: int = 0
    heuristic: int = 0
    pruned: int = 0
    lps: int = 0
    milps: int = 0
    split: int = 0
    resolved: int = 0  # band MILPs solved again after their plan was cut off
    dps: int = 0  # bands solved by dynamic programming
    dp_seconds: float = 0.0
    lp_seconds: float = 0.0
    milp_seconds: float = 0.0


class Chain(NamedTuple):
    """The candidates of one micro-batch size and schedule that survived the global pruning:
    positions in its grid, their MILP data and global time caps T_lb, T_max (valid for the
    rest of the search, since the incumbent only improves; recomputed when it has improved).
    Candidate indices everywhere else in the search are positions in ``arrays``; their edges
    run on the chain 0..L (the layers, or ``planners.grid_1f1b``'s expanded chain)."""

    micro_batch: int
    L: int
    grid: CandidateGrid
    pos: IntArray
    arrays: CandidateArrays
    t_lb: FloatArray
    t_max: FloatArray
    value: float  # the incumbent's objective when the caps were computed

    def near(self, band: Band) -> IntArray:
        """Candidates whose global caps allow T in ``band`` (lo <= T_max, T_lb <= hi)."""
        return np.flatnonzero((self.t_lb <= band.hi * (1 + 1e-9))
                              & (self.t_max >= band.lo * (1 - 1e-9)))


class BandSearch(NamedTuple):
    """Result of ``plan_bands``: the best plan (None: none found), a proven lower bound on the
    optimum, the log (one dict per micro-batch size, then the ``SearchStats``), and whether the
    search finished (False: the time limit stopped it, so ``best is None`` proves nothing)."""

    best: Plan | None
    lower: float
    log: list[dict[str, object]]
    complete: bool
