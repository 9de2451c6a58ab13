"""The default miqp solver: best-first search over iteration-time bands, each a MILP on HiGHS.

For each micro-batch size and schedule (a *chain*: the layer chain for FuncPipe's order,
``planners.grid_1f1b``'s expanded chain for 1F1B) the range of iteration times
[T_min, T_max] is cut into bands
lo <= T <= hi, each solved as a band MILP (``planners.band_milp``). ``plan_bands`` examines the
bands cheapest bound first, each in three ``Phase``s: prune and bound (``planners.bounds``) with
heuristic paths; the LP relaxation with LP rounding and reduced-cost fixing; the MILP. A band
whose MILP times out splits in T, then in its bottleneck ``Box`` (``planners.boxes``).
``planners.miqp.plan_miqp`` calls it by default. The exactness argument is in
planners/README.md.

Notation: L layers, V candidates; ``b`` a micro-batch size; a band is ``Band(lo, hi)``, in
seconds of iteration time.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Sequence

import numpy as np

from planners.band_dp import BEST, solve_band_dp
from planners.band_milp import MilpStatus, band_milp, solve_band, solve_lp
from planners.band_records import BandEntry, BandSearch, Chain, Phase, SearchStats
from planners.bounds import (
    Band,
    BoolArray,
    CandidateArrays,
    FloatArray,
    Incumbent,
    IntArray,
    band_bound,
    lagrange_plans,
    prune,
    shortest_path,
)
from planners.boxes import Box, boxed, split
from planners.cost import score
from planners.grid_1f1b import grids
from planners.plans import Plan
from planners.problem import Problem
from planners.stage_grid import CandidateGrid

__all__: list[str] = []  # internal to planners.miqp

RESOLVES = 8  # most re-solves of one band MILP after cutting off the plan it proposed
CLOSE = 1e-7  # a band MILP's bound this close (relative) to the incumbent closes the band
LIMIT = 4.0  # first HiGHS time limit of a band MILP, s (doubled when a band cannot split)
REFRESH = 1e-3  # incumbent improvement (relative) that recomputes a chain's global caps
QUICK = 500  # labels per node of a band DP's first try; past it a beam search runs first
BEAM = 64  # labels per node of that beam search (a heuristic: its plans become incumbents)
BAND_DP = 0.1  # initial width of an iteration-time band, relative to its lower end: with the
BAND_MILP = 0.02  # band DP (whose labels are few), and when every band is a MILP (dp=False)

# --- the search -----------------------------------------------------------------------------


def _to_plan(problem: Problem, b: int, grid: CandidateGrid, chosen: Sequence[int]) -> Plan:
    """The plan of candidates ``chosen`` of ``grid`` (micro-batch b), scored."""
    stages = sorted((grid.stage(v) for v in chosen), key=lambda st: st.first_layer)
    return score(Plan(tuple(stages), b, problem.global_batch, grid.schedule), problem)


def _closed(bound: float, value: float, rel: float = 1e-9) -> bool:
    """Whether a lower bound proves that nothing beats the incumbent's objective ``value``
    (to ``rel``)."""
    return bound >= value - rel * abs(value)


def _band_edges(lo: float, hi: float, width: float) -> list[float]:
    """Edges of bands of relative width ``width`` from lo to hi (two equal edges when lo =
    hi)."""
    edges = [lo]
    while edges[-1] < hi * (1 - 1e-12):
        edges.append(min(edges[-1] * (1 + width) if edges[-1] > 0 else hi, hi))
    if len(edges) == 1:
        edges.append(lo)
    return edges


class _Search:
    """State of one band search: the incumbent, the heap of band boxes and the counters."""

    def __init__(self, problem: Problem, time_limit: float, best: Plan | None,
                 dp: bool) -> None:
        self.problem = problem
        self.dp = dp
        self.t_end = time.perf_counter() + time_limit * len(
            problem.valid_micro_batches) * len(problem.schedules)
        self.best = best
        self.chains: dict[int, Chain] = {}  # per (b, schedule), numbered
        self.heap: list[BandEntry] = []
        self.log: list[dict[str, object]] = []
        self.stats = SearchStats()
        self.scored: dict[int, list[frozenset[int]]] = {}  # per chain: plans a MILP proposed
        self.timed_out = False

    @property
    def incumbent(self) -> Incumbent | None:
        best = self.best
        if best is None or best.iteration_seconds is None or best.iteration_dollars is None:
            return None
        return Incumbent(best.iteration_seconds, best.iteration_dollars)

    def value(self) -> float:
        """Objective of the incumbent (inf when there is none)."""
        return math.inf if self.best is None else self.best.objective_or_inf

    def offer(self, plan: Plan) -> None:
        """Make ``plan`` the incumbent if it is better."""
        if plan.objective_or_inf < self.value():
            self.best = plan

    def push(self, entry: BandEntry) -> None:
        heapq.heappush(self.heap, entry)

    def seed(self) -> None:
        """Candidates of every micro-batch size and schedule, pruned globally, and their bands
        on the heap."""
        L = self.problem.profile.num_layers
        chains = [(b, g) for b in self.problem.valid_micro_batches
                  for g in grids(self.problem, b)]
        for key, (b, grid) in enumerate(chains):
            entry: dict[str, object] = {"micro_batch": b, "schedule": grid.schedule,
                                        "candidates": len(grid)}
            self.log.append(entry)
            if not len(grid):
                continue
            c, sink = grid.arrays, grid.sink(L)
            kept = prune(self.problem, sink, c, self.incumbent, None)
            entry["after_bounds"] = len(kept.idx)
            if len(kept.idx) == 0:
                continue
            self.chains[key] = Chain(b, sink, grid, kept.idx, c.take(kept.idx), kept.t_lb,
                                     kept.t_max, self.value())
            lo = float(kept.t_lb.min())
            finite = kept.t_max[np.isfinite(kept.t_max)]
            hi = max(float(finite.max(initial=kept.t_lb.max())), lo)
            edges = _band_edges(lo, hi, BAND_DP if self.dp else BAND_MILP)
            entry["bands"] = len(edges) - 1
            for a, z in itertools.pairwise(edges):
                self.push(BandEntry(-math.inf, Phase.BOUND, key, Band(a, z), LIMIT, Box()))

    def run(self) -> None:
        """Examine bands cheapest bound first until every one is closed or time is up."""
        while self.heap:
            entry = self.heap[0]
            if _closed(entry.bound, self.value()):
                break  # every remaining band is bounded by the incumbent
            if time.perf_counter() > self.t_end:
                self.timed_out = True
                break
            heapq.heappop(self.heap)
            idx, sub, t_lb, t_max = self._candidates(entry)
            if entry.phase == Phase.BOUND:
                self._bound(entry, idx, sub, t_lb)
            elif len(idx) == 0:
                continue
            elif entry.phase == Phase.LP:
                self._lp(entry, idx, sub, t_lb, t_max)
            else:
                self._milp(entry, idx, sub, t_lb, t_max)

    def _candidates(self, entry: BandEntry,
                    ) -> tuple[IntArray, CandidateArrays, FloatArray, FloatArray]:
        """Candidates of a band box after fixings and pruning: indices into the micro-batch's
        candidate list, their data and time caps."""
        idx0, c_box = self._boxed(entry)
        if entry.box.fixed:  # candidates fixed to 0 by reduced costs in this band
            free: BoolArray = np.array([i not in entry.box.fixed for i in idx0], bool)
            idx0, c_box = idx0[free], c_box.take(free)
        kept = prune(self.problem, self._L(entry), c_box, self.incumbent, entry.band)
        return idx0[kept.idx], c_box.take(kept.idx), kept.t_lb, kept.t_max

    def _L(self, entry: BandEntry) -> int:
        """The sink of the entry's chain (its number of layers, or expanded nodes)."""
        return self.chains[entry.chain].L

    def _refresh(self, b: int) -> Chain:
        """Chain ``b``, its global caps recomputed when the incumbent has improved by
        more than REFRESH since they were (candidates pruned now get T_lb = inf)."""
        chain = self.chains[b]
        value = self.value()
        if not value < chain.value * (1 - REFRESH):
            return chain
        live = np.flatnonzero(np.isfinite(chain.t_lb))
        kept = prune(self.problem, chain.L, chain.arrays.take(live), self.incumbent, None)
        t_lb, t_max = np.full(len(chain.arrays), np.inf), np.zeros(len(chain.arrays))
        t_lb[live[kept.idx]], t_max[live[kept.idx]] = kept.t_lb, kept.t_max
        self.chains[b] = chain = chain._replace(t_lb=t_lb, t_max=t_max, value=value)
        return chain

    def _boxed(self, entry: BandEntry) -> tuple[IntArray, CandidateArrays]:
        """``boxes.boxed`` over the chain's candidates near the entry's band."""
        chain = self._refresh(entry.chain)
        near = chain.near(entry.band)
        idx, c_box = boxed(chain.arrays.take(near), entry.box)
        return near[idx], c_box

    def _plan_of(self, entry: BandEntry, chosen: Sequence[int]) -> Plan:
        chain = self.chains[entry.chain]
        return _to_plan(self.problem, chain.micro_batch, chain.grid,
                        [int(chain.pos[v]) for v in chosen])

    def _path_plan(self, entry: BandEntry, idx: IntArray, path: Sequence[int]) -> Plan:
        """The plan of ``path``, positions into the band's candidates ``idx``."""
        return self._plan_of(entry, [int(idx[k]) for k in path])

    def _bound(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays,
               t_lb: FloatArray) -> None:
        """Phase BOUND: heuristic paths, then the cheap bound; on to the LP."""
        self.stats.bands += 1
        if len(idx) == 0:
            self.stats.pruned += 1
            return
        for path in lagrange_plans(self.problem, self._L(entry), sub, entry.band.lo):
            self.stats.heuristic += 1
            self.offer(self._path_plan(entry, idx, path))
        bound = max(entry.bound, band_bound(self.problem, self._L(entry), sub, t_lb,
                                            entry.band))
        self.push(entry._replace(bound=bound, phase=Phase.LP))

    def _lp(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays, t_lb: FloatArray,
            t_max: FloatArray) -> None:
        """Phase LP: solve the band by dynamic programming (``planners.band_dp``) when its
        labels stay few, which closes it; else solve the LP relaxation, round it to a plan, fix
        candidates by reduced cost; on to the MILP unless the LP closes the band."""
        if self.dp and self._dp(entry, idx, sub):
            return
        m = band_milp(self.problem, self._L(entry), sub, t_lb, t_max, entry.band, self.value())
        t = time.perf_counter()
        lp = solve_lp(m, self.t_end - t)
        self.stats.lps += 1
        self.stats.lp_seconds += time.perf_counter() - t
        if lp.x is not None:  # LP rounding: cheapest path with -log x_v as weight
            path = shortest_path(self._L(entry), sub.first, sub.last,
                                 -np.log(np.clip(lp.x, 1e-9, 1.0)))
            if path and sub.replicas[path].sum() <= self.problem.max_functions:
                self.stats.heuristic += 1
                self.offer(self._path_plan(entry, idx, path))
        value = self.value()
        if _closed(lp.value, value):
            return
        box = entry.box
        if lp.reduced is not None:  # reduced-cost fixing: drop v with lp + r_v > incumbent
            fixed = idx[lp.value + lp.reduced > value + 1e-7 * abs(value)]
            box = box.fixing(frozenset(int(i) for i in fixed))
        self.push(entry._replace(bound=max(entry.bound, lp.value), phase=Phase.MILP, box=box))

    def _dp(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays) -> bool:
        """Whether the band DP solved the band: its paths are scored best first until the cost
        model accepts one (the band's optimum, offered); all rejected closes the band too,
        unless the DP returned as many paths as it may (then the LP and MILP decide)."""
        t = time.perf_counter()
        L, band = self._L(entry), entry.band
        paths = solve_band_dp(self.problem, L, sub, band, self.value(), max_labels=QUICK)
        if paths is None:  # many labels: a near-optimal incumbent first prunes most of them
            for path in solve_band_dp(self.problem, L, sub, band, self.value(), best=4,
                                      beam=BEAM) or []:
                self.offer(self._path_plan(entry, idx, path))
            paths = solve_band_dp(self.problem, L, sub, band, self.value())
        self.stats.dp_seconds += time.perf_counter() - t
        if paths is None:
            return False
        self.stats.dps += 1
        for path in paths:
            plan = self._path_plan(entry, idx, path)
            self.offer(plan)
            if math.isfinite(plan.objective_or_inf):
                return True
        return len(paths) < BEST

    def _no_good(self, b: int, idx: IntArray) -> list[IntArray]:
        """Positions in ``idx`` of every plan of chain ``b`` a MILP proposed before,
        for the plans whose candidates are all still in ``idx``."""
        where = {int(v): k for k, v in enumerate(idx)}
        return [np.array([where[v] for v in sorted(plan)], dtype=np.int64)
                for plan in self.scored.get(b, []) if all(v in where for v in plan)]

    def _milp(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays, t_lb: FloatArray,
              t_max: FloatArray) -> None:
        """Phase MILP: solve the band MILP. Every plan it proposes is scored by the cost model
        and offered, then cut off (a no-good row), so a plan the cost model rejects (HiGHS's
        tolerances let it break the budget or deadline by ~1e-7) never closes the band: the
        band closes when the MILP is infeasible or its bound reaches the incumbent, else it is
        solved again (up to RESOLVES times). On a timeout split the band (or give it twice the
        time when it cannot split)."""
        res = None
        for attempt in range(RESOLVES + 1):
            if attempt:
                self.stats.resolved += 1
            m = band_milp(self.problem, self._L(entry), sub, t_lb, t_max, entry.band,
                          self.value(), self._no_good(entry.chain, idx))
            t = time.perf_counter()
            res = solve_band(m, min(entry.limit, self.t_end - t))
            self.stats.milps += 1
            self.stats.milp_seconds += time.perf_counter() - t
            if res.x is not None:
                chosen = [int(i) for i, v in zip(idx, res.x, strict=True) if v > 0.5]
                self.offer(self._plan_of(entry, chosen))
                self.scored.setdefault(entry.chain, []).append(frozenset(chosen))
            if res.status == MilpStatus.INFEASIBLE:
                return
            if res.status != MilpStatus.OPTIMAL:
                break
            if _closed(res.bound, self.value(), CLOSE):
                return
        assert res is not None
        bound = max(entry.bound, res.bound)
        self.stats.split += 1
        children = split(entry.band, entry.box, sub)
        for band, box in children:
            self.push(BandEntry(bound, Phase.BOUND, entry.chain, band, entry.limit, box))
        if not children:  # nothing left to split: more time
            self.push(entry._replace(bound=bound, limit=2 * entry.limit))

    def lower_bound(self) -> float:
        """Smallest bound of the bands left (time is up: unexamined ones bounded cheaply)."""
        lower = math.inf
        for entry in self.heap:
            bound = entry.bound
            if bound == -math.inf and lower > -math.inf:
                _, c_box = self._boxed(entry)
                L = self._L(entry)
                kept = prune(self.problem, L, c_box, self.incumbent, entry.band)
                bound = (band_bound(self.problem, L, c_box.take(kept.idx), kept.t_lb,
                                    entry.band) if len(kept.idx) else math.inf)
            lower = min(lower, bound)
        return lower


def plan_bands(problem: Problem, time_limit: float, best: Plan | None,
               dp: bool = True) -> BandSearch:
    """Best-first search over (micro-batch, time band) boxes, starting from incumbent ``best``;
    each band is solved by the band DP (``dp``) or, when its labels grow too many or ``dp`` is
    False, by its LP and MILP.

    Stops when every band is closed (the result is optimal) or after ``time_limit`` seconds per
    micro-batch size."""
    search = _Search(problem, time_limit, best, dp)
    search.seed()
    search.run()
    lower = search.lower_bound()
    search.log.append(dataclasses.asdict(search.stats))
    return BandSearch(search.best, lower, search.log, not search.timed_out)
