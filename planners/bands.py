"""The default miqp solver: best-first search over iteration-time bands, each a MILP on HiGHS.

For each micro-batch size the range of iteration times [T_min, T_max] is cut into bands
lo <= T <= hi. A band's MILP is the formulation of ``planners.miqp`` plus lo <= T <= hi, the
McCormick row z_v >= T - hi (1 - x_v), the (2') bottleneck level sets and an incumbent cutoff,
built as scipy arrays (``band_milp``, a ``BandMilp`` of named ``Row`` blocks) and solved by
HiGHS through ``scipy.optimize`` (``solve_band``; its LP relaxation with reduced costs,
``solve_lp``). ``plan_bands`` examines bands cheapest bound first, each in three ``Phase``s:
prune and bound (``planners.bounds``) with heuristic paths, then the LP with reduced-cost
fixing, then the MILP; a band whose MILP times out splits in T, then in its bottleneck ``Box``
(``split``). ``planners.miqp.plan_miqp`` calls it by default. The exactness argument is in
planners/README.md.

Notation: L layers, V candidates, U level-set variables. MILP columns are, in order,
x (V), z (V), T, P^F, P^B, Y, u (U); see ``Col``.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import NamedTuple

import numpy as np

from planners._scipy import (
    Sparse,
    dense,
    diags,
    hstack,
    identity,
    linprog,
    milp,
    triplets,
    vstack,
    zeros,
)
from planners.bounds import (
    Band,
    BoolArray,
    CandidateArrays,
    FloatArray,
    Incumbent,
    IntArray,
    Term,
    band_bound,
    candidate_arrays,
    lagrange_plans,
    prune,
    shortest_path,
)
from planners.candidates import Candidate, candidates
from planners.cost import score
from planners.plans import Plan, StagePlan
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.miqp

SPLIT = 0.004  # bands narrower than this (relative) get more time instead of a split
LIMIT = 4.0  # first HiGHS time limit of a band MILP, s (doubled when a band cannot split)
LEVELS = 6  # bottleneck levels per term in constraint (2')
BAND = 0.02  # initial width of an iteration-time band, relative to its lower end

# --- records ------------------------------------------------------------------------------


class Phase(IntEnum):
    """What a band's next examination does. The value breaks heap ties at equal bounds:
    cheaper phases first, as the search has always done."""

    BOUND = 0  # prune, heuristic paths, cheap bound
    LP = 1  # LP relaxation, LP rounding, reduced-cost fixing
    MILP = 2  # the band MILP


class Range(NamedTuple):
    """lo <= P_k <= hi for one bottleneck term, in seconds."""

    lo: float
    hi: float


_UNBOUNDED = (Range(0.0, math.inf), Range(0.0, math.inf), Range(0.0, math.inf))


@dataclass(frozen=True, order=True)
class Box:
    """The part of a band a heap entry covers: a range of every bottleneck term, plus the
    candidates reduced-cost fixing has fixed to 0 there.

    Ordered as the flat tuple (PF_lo, PF_hi, PB_lo, PB_hi, Y_lo, Y_hi, fixed), so heap ties
    break as before.

    Attributes:
      ranges: one ``Range`` per ``Term``, in ``Term`` order.
      fixed: candidate indices (into the micro-batch's candidate list) fixed to 0.
    """

    ranges: tuple[Range, Range, Range] = _UNBOUNDED
    fixed: frozenset[int] = field(default_factory=frozenset[int])

    def fixing(self, more: frozenset[int]) -> Box:
        """This box with the candidates ``more`` fixed to 0 as well."""
        return dataclasses.replace(self, fixed=more | self.fixed)

    def halves(self, k: Term, mid: float) -> tuple[Box, Box]:
        """"P_k <= mid" and "P_k >= mid"; neither keeps fixings (reduced costs were for this
        box's LP only)."""
        below, above = list(self.ranges), list(self.ranges)
        below[k] = Range(self.ranges[k].lo, mid)
        above[k] = Range(mid, self.ranges[k].hi)
        return Box((below[0], below[1], below[2])), Box((above[0], above[1], above[2]))


class BandEntry(NamedTuple):
    """One heap entry: a box of a band of micro-batch size ``micro_batch``. Ordered by the
    lower ``bound`` on its plans' objective, then the other fields."""

    bound: float
    phase: Phase
    micro_batch: int
    band: Band
    limit: float  # HiGHS time limit of its MILP, s
    box: Box


class Chain(NamedTuple):
    """The candidates of one micro-batch size and their MILP data (same order)."""

    candidates: list[Candidate]
    arrays: CandidateArrays


@dataclass
class SearchStats:
    """Counters of one band search, logged in ``Plan.meta["milps"]``."""

    bands: int = 0
    heuristic: int = 0
    pruned: int = 0
    lps: int = 0
    milps: int = 0
    split: int = 0
    lp_seconds: float = 0.0
    milp_seconds: float = 0.0


class BandSearch(NamedTuple):
    """Result of ``plan_bands``: the best plan (None: none found), a proven lower bound on the
    optimum, and the log (one dict per micro-batch size, then the ``SearchStats``)."""

    best: Plan | None
    lower: float
    log: list[dict[str, object]]


# --- the band MILP --------------------------------------------------------------------------


class Row(Enum):
    """Constraint blocks of a band MILP, numbered as in planners/README.md."""

    PATH = "(1) path"
    BOTTLENECK = "(2) bottleneck, one row per layer"
    TIME = "(3) time"
    BILLING_FLOW = "(4) billing flow of value T"
    BILLING_CAP = "(4) z <= T_max x"
    BILLING_FLOOR = "(4) z >= T_lb x"
    MCCORMICK = "z >= T - hi (1 - x)"
    FUNCTIONS = "(5) functions"
    LEVEL_COVER = "(2') u_kt >= cover of the candidates with term_k >= theta_t, per layer"
    LEVEL_SUM = "(2') P_k >= sum_t (theta_t - theta_t-1) u_kt"
    BUDGET = "cost <= budget"
    CUTOFF = "objective <= incumbent"


class Block(NamedTuple):
    """Rows lower <= matrix @ columns <= upper of one kind."""

    row: Row
    matrix: Sparse
    lower: float | FloatArray
    upper: float | FloatArray


class Col:
    """Column positions of a band MILP with V candidates: x (V), z (V), T, P^F, P^B, Y, u."""

    def __init__(self, V: int) -> None:
        self.V = V
        self.T = 2 * V
        self.u = 2 * V + 4  # first level-set variable

    def P(self, k: Term) -> int:
        """Column of P^F, P^B or Y."""
        return self.T + 1 + k


@dataclass(frozen=True)
class BandMilp:
    """One band MILP as ``scipy.optimize.milp`` arrays (in scaled units).

    Attributes:
      cost: objective coefficients per column; times ``scale`` gives the problem objective.
      A, row_lower, row_upper: the constraints row_lower <= A @ columns <= row_upper.
      var_lower, var_upper, integrality: bounds and integrality of every column.
      scale: objective units -> problem objective value.
      num_candidates: V, the x columns that come first.
      blocks: (kind, number of rows) of every block of A, in order.
    """

    cost: FloatArray
    A: Sparse
    row_lower: FloatArray
    row_upper: FloatArray
    var_lower: FloatArray
    var_upper: FloatArray
    integrality: FloatArray
    scale: float
    num_candidates: int
    blocks: tuple[tuple[Row, int], ...]


class _Layout(NamedTuple):
    """Scaled incidence data shared by the blocks of one band MILP."""

    L: int
    V: int
    t0: float  # seconds per unit of T
    c0: float  # currency per unit of cost
    flow: Sparse  # (L, V): row 0 leaves the source, rows 1..L-1 conserve flow
    cover: Sparse  # (L, V): cover[l, v] = 1 when candidate v holds layer l
    source: FloatArray  # (L,): 1 at node 0, the right-hand side of the path


class Incidence(NamedTuple):
    """Candidates on the chain: ``flow`` (L, V), row 0 leaving the source (+1 for every v
    with i_v = 0) and rows 1..L-1 conserving flow at node k (+1 if i_v = k, -1 if
    j_v + 1 = k); ``cover`` (L, V), 1 where candidate v holds layer l."""

    flow: Sparse
    cover: Sparse


def incidence(L: int, c: CandidateArrays) -> Incidence:
    """The path and cover matrices of candidates ``c`` on a chain of L layers."""
    V = len(c)
    cols = np.arange(V)
    start = triplets(np.ones(V), c.first, cols, (L + 1, V))
    end = triplets(np.ones(V), c.last + 1, cols, (L + 1, V))
    flow = (start - end)[:L].tocsr()
    lens = c.last - c.first + 1
    rows = np.concatenate([np.arange(a, b + 1, dtype=np.int64)
                           for a, b in zip(c.first.tolist(), c.last.tolist(), strict=True)])
    cover = triplets(np.ones(len(rows)), rows, np.repeat(cols, lens), (L, V))
    return Incidence(flow, cover)


def _layout(L: int, c: CandidateArrays, t_lb: FloatArray, band: Band) -> _Layout:
    t0 = float(max(0.5 * (band.lo + band.hi), 1e-9))
    c0 = float(max(np.median(c.rate * t_lb + c.req), 1e-15))
    flow, cover = incidence(L, c)
    source = np.zeros(L)
    source[0] = 1.0
    return _Layout(L, len(c), t0, c0, flow, cover, source)


def _core_blocks(problem: Problem, lay: _Layout, c: CandidateArrays, t_lb: FloatArray,
                 t_max: FloatArray, band: Band) -> list[Block]:
    """Constraints (1)-(5) and the McCormick row over the columns x, z, T, P^F, P^B, Y."""
    L, V, t0 = lay.L, lay.V, lay.t0
    O_LV, O_L4 = zeros(L, V), zeros(L, 4)
    eye4 = np.eye(4)  # rows pick T, P^F, P^B, Y
    ident = identity(V)
    cap = np.minimum(t_max, band.hi) / t0
    low = np.minimum(np.maximum(t_lb, band.lo), cap * t0) / t0
    bottlenecks = [
        Block(Row.BOTTLENECK, hstack([-lay.cover @ diags(c.term(k) / t0), O_LV,
                                         dense(np.tile(eye4[k + 1], (L, 1)))]),
              0.0, np.inf)
        for k in Term]
    return [
        Block(Row.PATH, hstack([lay.flow, O_LV, O_L4]), lay.source, lay.source),
        *bottlenecks,
        Block(Row.TIME, hstack([dense(-c.fill[None, :] / t0), zeros(1, V),
                                   dense([[1.0, -1.0, -1.0, -1.0]])]), 0.0, np.inf),
        Block(Row.BILLING_FLOW, hstack([O_LV, lay.flow,  # row 0 (the source) also has -T
                                        dense(-(lay.source[:, None] * eye4[0][None, :]))]),
              0.0, 0.0),
        Block(Row.BILLING_CAP, hstack([-diags(cap), ident, zeros(V, 4)]),
              -np.inf, 0.0),
        Block(Row.BILLING_FLOOR, hstack([-diags(low), ident, zeros(V, 4)]),
              0.0, np.inf),
        Block(Row.MCCORMICK, hstack([-diags(np.full(V, band.hi / t0)), ident,
                                        dense(np.tile(-eye4[0], (V, 1)))]),
              -band.hi / t0, np.inf),
        Block(Row.FUNCTIONS, hstack([dense(c.replicas[None, :].astype(float)),
                                        zeros(1, V + 4)]),
              -np.inf, float(problem.max_functions)),
    ]


def _levels(lay: _Layout, a: FloatArray) -> FloatArray:
    """Levels theta_1 < ... of one bottleneck term with values ``a`` (scaled), empty when no
    candidate exceeds theta_1 = max_l min_{v covers l} a_v, the level every plan reaches."""
    cover = lay.cover
    base = max(float(a[cover.indices[cover.indptr[layer]:cover.indptr[layer + 1]]].min())
               for layer in range(lay.L))
    above = np.unique(a[a > base * (1 + 1e-9)])
    if len(above) == 0:
        return np.zeros(0)
    return np.concatenate([[base], np.unique(np.quantile(
        above, np.linspace(0.0, 1.0, LEVELS + 1)[:-1], method="lower"))])


def _level_blocks(lay: _Layout, c: CandidateArrays) -> tuple[list[Block], int]:
    """Constraints (2') over all columns, and U, the number of u columns they use.

    u_kt >= [some chosen v has term_k >= theta_t] (one chosen candidate covers each layer), and
    P_k >= sum_t (theta_t - theta_{t-1}) u_kt."""
    levels = [_levels(lay, c.term(k) / lay.t0) for k in Term]
    U = sum(len(thetas) for thetas in levels)
    L, V = lay.L, lay.V
    col = Col(V)
    width = col.u + U
    blocks: list[Block] = []
    first_u = 0
    for k, thetas in zip(Term, levels, strict=True):
        if len(thetas) == 0:
            continue
        a = c.term(k) / lay.t0
        for t, theta in enumerate(thetas):
            masked = lay.cover @ diags((a >= theta).astype(float))
            u = triplets(np.ones(L), np.arange(L), np.full(L, first_u + t), (L, U))
            blocks.append(Block(Row.LEVEL_COVER, hstack([-masked, zeros(L, V + 4),
                                                            u]), 0.0, np.inf))
        deltas = np.diff(np.concatenate([[0.0], thetas]))
        r = np.zeros((1, width))
        r[0, col.P(k)] = 1.0
        r[0, col.u + first_u:col.u + first_u + len(deltas)] = -deltas
        blocks.append(Block(Row.LEVEL_SUM, dense(r), 0.0, np.inf))
        first_u += len(thetas)
    return blocks, U


def _objective(problem: Problem, lay: _Layout, c: CandidateArrays,
               U: int) -> tuple[FloatArray, float, list[Block]]:
    """(cost per column, scale to the problem objective, the budget row if any).

    cost = sum_v req_v x_v + sum_v rate_v z_v; weighted: min cost + w T; budget: min T s.t.
    cost <= budget; deadline: min cost (T <= deadline is a column bound)."""
    V, t0, c0 = lay.V, lay.t0, lay.c0
    cost = np.concatenate([c.req / c0, c.rate * t0 / c0, np.zeros(4 + U)])
    obj = problem.objective
    if obj.kind == "weighted":
        cost[Col(V).T] = obj.weight * t0 / c0
        return cost, c0, []
    if obj.kind == "budget":
        money = cost.copy()
        cost = np.zeros(2 * V + 4 + U)
        cost[Col(V).T] = 1.0
        rows = [] if obj.budget is None else [
            Block(Row.BUDGET, dense(money[None, :]), -np.inf, obj.budget / c0)]
        return cost, t0, rows
    return cost, c0, []


def band_milp(problem: Problem, L: int, c: CandidateArrays, t_lb: FloatArray,
              t_max: FloatArray, band: Band, cutoff: float = math.inf) -> BandMilp:
    """The MILP of ``planners.miqp``'s docstring over candidates ``c`` (already pruned), with
    ``band.lo <= T <= band.hi``, the level sets (2') and, when ``cutoff`` is finite, objective
    <= cutoff; as scipy.optimize.milp arrays."""
    lay = _layout(L, c, t_lb, band)
    V, t0 = lay.V, lay.t0
    levels, U = _level_blocks(lay, c)
    cost, scale, budget = _objective(problem, lay, c, U)
    blocks = [Block(b.row, hstack([b.matrix, zeros(b.matrix.shape[0], U)]),
                    b.lower, b.upper)
              for b in _core_blocks(problem, lay, c, t_lb, t_max, band)]
    blocks += levels + budget
    if np.isfinite(cutoff):  # only plans better than the incumbent
        blocks.append(Block(Row.CUTOFF, dense(cost[None, :]), -np.inf,
                            cutoff / scale + 1e-7 * abs(cutoff / scale)))
    counts = [int(b.matrix.shape[0]) for b in blocks]
    col = Col(V)
    width = col.u + U
    var_lower, var_upper = np.zeros(width), np.full(width, np.inf)
    var_upper[:V] = 1.0
    var_upper[col.u:] = 1.0
    hi = band.hi
    if problem.objective.kind == "deadline" and problem.objective.deadline is not None:
        hi = min(hi, problem.objective.deadline)
    var_lower[col.T], var_upper[col.T] = band.lo / t0, hi / t0
    integrality = np.zeros(width)
    integrality[:V] = 1
    return BandMilp(
        cost=cost, A=vstack([b.matrix for b in blocks]).tocsr(),
        row_lower=_per_row([b.lower for b in blocks], counts),
        row_upper=_per_row([b.upper for b in blocks], counts),
        var_lower=var_lower, var_upper=var_upper, integrality=integrality, scale=scale,
        num_candidates=V, blocks=tuple((b.row, n) for b, n in zip(blocks, counts, strict=True)))


def _per_row(values: Sequence[float | FloatArray], counts: list[int]) -> FloatArray:
    """One bound per row from one scalar or array per block."""
    return np.concatenate([np.broadcast_to(np.asarray(v, float), (n,))
                           for v, n in zip(values, counts, strict=True)])


# --- solving --------------------------------------------------------------------------------


class MilpStatus(Enum):
    """How a band MILP ended."""

    OPTIMAL = "optimal"  # solved: nothing in the band beats its plan (or the incumbent)
    FEASIBLE = "feasible"  # time limit, with a plan
    TIMEOUT = "timeout"  # time limit, no plan
    INFEASIBLE = "infeasible"  # no plan in the band beats the incumbent


class BandResult(NamedTuple):
    """A band MILP's status, its x (None without a plan) and dual bound (objective units)."""

    status: MilpStatus
    x: FloatArray | None
    bound: float


class LpResult(NamedTuple):
    """A band LP: value (inf: infeasible; -inf: unsolved), the reduced cost of every x_v and
    x (both None unless solved), in objective units."""

    value: float
    reduced: FloatArray | None
    x: FloatArray | None


def solve_band(m: BandMilp, time_limit: float) -> BandResult:
    """Solve one band MILP on HiGHS within ``time_limit`` seconds."""
    res = milp(m.cost, m.A, m.row_lower, m.row_upper, m.var_lower, m.var_upper,
               m.integrality, {"time_limit": max(time_limit, 0.05), "mip_rel_gap": 1e-7,
                               "disp": False})
    if res.status == 2:  # infeasible: no plan in this band beats the incumbent
        return BandResult(MilpStatus.INFEASIBLE, None, math.inf)
    dual = res.dual_bound
    bound = -math.inf if dual is None or not np.isfinite(dual) else dual * m.scale
    if res.x is None or res.fun is None:
        return BandResult(MilpStatus.TIMEOUT, None, bound)
    x = res.x[:m.num_candidates]
    if res.status == 0:
        return BandResult(MilpStatus.OPTIMAL, x, res.fun * m.scale)
    return BandResult(MilpStatus.FEASIBLE, x, min(bound, res.fun * m.scale))


def solve_lp(m: BandMilp, time_limit: float) -> LpResult:
    """The LP relaxation of a band MILP. Any plan with x_v = 1 is worth at least
    value + reduced_v (LP duality), which fixes candidates to 0."""
    A, lb, ub = m.A, m.row_lower, m.row_upper
    eq = lb == ub
    up = ~eq & np.isfinite(ub)
    down = ~eq & np.isfinite(lb)
    res = linprog(m.cost, vstack([A[up], -A[down]]), np.concatenate([ub[up], -lb[down]]),
                  A[eq], lb[eq], np.stack([m.var_lower, m.var_upper], axis=1),
                  {"time_limit": max(time_limit, 0.05)})
    if res.status == 2:
        return LpResult(math.inf, None, None)
    if res.status != 0 or res.fun is None or res.x is None or res.lower_marginals is None:
        return LpResult(-math.inf, None, None)
    V = m.num_candidates
    return LpResult(res.fun * m.scale, res.lower_marginals[:V] * m.scale, res.x[:V])


# --- boxes ----------------------------------------------------------------------------------


def boxed(c: CandidateArrays, box: Box) -> tuple[IntArray, CandidateArrays]:
    """Candidates allowed in a bottleneck box (indices into ``c``, then their data), with each
    term raised to the box's lower end: a plan's P^F is max(PF_lo, max_v aF_v) inside the box,
    so aF_v -> max(aF_v, PF_lo) is exact there (likewise P^B, Y); candidates above a box's upper
    end are removed."""
    keep = np.ones(len(c), bool)
    for k in Term:
        keep &= c.term(k) <= box.ranges[k].hi
    idx = np.flatnonzero(keep)
    sub = c.take(idx)
    raised = [np.maximum(sub.term(k), box.ranges[k].lo) for k in Term]
    return idx, sub.with_terms(*raised)


def split(band: Band, box: Box, sub: CandidateArrays) -> list[tuple[Band, Box]]:
    """Children covering a band whose MILP did not finish: halve T if the band is wide, else
    halve the widest bottleneck range [lo_k, max_v term_v] of the box (P^F, P^B or Y); none
    when every range is already narrow."""
    lo, hi = band
    if hi - lo > SPLIT * hi:
        mid = 0.5 * (lo + hi)
        return [(Band(lo, mid), box), (Band(mid, hi), box)]
    widths = [float(sub.term(k).max()) - box.ranges[k].lo for k in Term]
    k = Term(int(np.argmax(widths)))
    if widths[k] <= 1e-6 * max(hi, 1e-9):
        return []
    below, above = box.halves(k, box.ranges[k].lo + 0.5 * widths[k])
    return [(band, below), (band, above)]


# --- the search -----------------------------------------------------------------------------


def _to_plan(problem: Problem, b: int, chosen: list[Candidate]) -> Plan:
    stages = tuple(StagePlan(k.first, k.last, k.memory_mb, k.replicas, k.mode)
                   for k in sorted(chosen, key=lambda k: k.first))
    return score(Plan(stages, b, problem.global_batch, "funcpipe"), problem)


def _closed(bound: float, value: float) -> bool:
    """Whether a lower bound proves that nothing beats the incumbent's objective ``value``."""
    return bound >= value - 1e-9 * abs(value)


def _band_edges(lo: float, hi: float) -> list[float]:
    """Edges of bands of relative width BAND from lo to hi (two equal edges when lo = hi)."""
    edges = [lo]
    while edges[-1] < hi * (1 - 1e-12):
        edges.append(min(edges[-1] * (1 + BAND) if edges[-1] > 0 else hi, hi))
    if len(edges) == 1:
        edges.append(lo)
    return edges


class _Search:
    """State of one band search: the incumbent, the heap of band boxes and the counters."""

    def __init__(self, problem: Problem, time_limit: float, best: Plan | None) -> None:
        self.problem = problem
        self.L = problem.profile.num_layers
        self.t_end = time.perf_counter() + time_limit * len(problem.valid_micro_batches)
        self.best = best
        self.chains: dict[int, Chain] = {}
        self.heap: list[BandEntry] = []
        self.log: list[dict[str, object]] = []
        self.stats = SearchStats()

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
        """Candidates of every micro-batch size, pruned globally, and their bands on the heap."""
        for b in self.problem.valid_micro_batches:
            cands = candidates(self.problem, b)
            entry: dict[str, object] = {"micro_batch": b, "candidates": len(cands)}
            self.log.append(entry)
            if not cands:
                continue
            c = candidate_arrays(self.problem, cands)
            kept = prune(self.problem, self.L, c, self.incumbent, None)
            entry["after_bounds"] = len(kept.idx)
            if len(kept.idx) == 0:
                continue
            self.chains[b] = Chain(cands, c)
            lo = float(kept.t_lb.min())
            finite = kept.t_max[np.isfinite(kept.t_max)]
            hi = max(float(finite.max(initial=kept.t_lb.max())), lo)
            edges = _band_edges(lo, hi)
            entry["bands"] = len(edges) - 1
            for a, z in itertools.pairwise(edges):
                self.push(BandEntry(-math.inf, Phase.BOUND, b, Band(a, z), LIMIT, Box()))

    def run(self) -> None:
        """Examine bands cheapest bound first until every one is closed or time is up."""
        while self.heap:
            entry = self.heap[0]
            if _closed(entry.bound, self.value()):
                break  # every remaining band is bounded by the incumbent
            if time.perf_counter() > self.t_end:
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
        idx0, c_box = boxed(self.chains[entry.micro_batch].arrays, entry.box)
        if entry.box.fixed:  # candidates fixed to 0 by reduced costs in this band
            free: BoolArray = np.array([i not in entry.box.fixed for i in idx0], bool)
            idx0, c_box = idx0[free], c_box.take(free)
        kept = prune(self.problem, self.L, c_box, self.incumbent, entry.band)
        return idx0[kept.idx], c_box.take(kept.idx), kept.t_lb, kept.t_max

    def _plan_of(self, entry: BandEntry, chosen: Sequence[int]) -> Plan:
        cands = self.chains[entry.micro_batch].candidates
        return _to_plan(self.problem, entry.micro_batch, [cands[i] for i in chosen])

    def _bound(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays,
               t_lb: FloatArray) -> None:
        """Phase BOUND: heuristic paths, then the cheap bound; on to the LP."""
        self.stats.bands += 1
        if len(idx) == 0:
            self.stats.pruned += 1
            return
        for path in lagrange_plans(self.problem, self.L, sub, entry.band.lo):
            self.stats.heuristic += 1
            self.offer(self._plan_of(entry, [int(idx[k]) for k in path]))
        bound = max(entry.bound, band_bound(self.problem, self.L, sub, t_lb, entry.band))
        self.push(entry._replace(bound=bound, phase=Phase.LP))

    def _lp(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays, t_lb: FloatArray,
            t_max: FloatArray) -> None:
        """Phase LP: solve the LP relaxation, round it to a plan, fix candidates by reduced
        cost; on to the MILP unless the LP closes the band."""
        m = band_milp(self.problem, self.L, sub, t_lb, t_max, entry.band, self.value())
        t = time.perf_counter()
        lp = solve_lp(m, self.t_end - t)
        self.stats.lps += 1
        self.stats.lp_seconds += time.perf_counter() - t
        if lp.x is not None:  # LP rounding: cheapest path with -log x_v as weight
            path = shortest_path(self.L, sub.first, sub.last,
                                 -np.log(np.clip(lp.x, 1e-9, 1.0)))
            if path and sub.replicas[path].sum() <= self.problem.max_functions:
                self.stats.heuristic += 1
                self.offer(self._plan_of(entry, [int(idx[k]) for k in path]))
        value = self.value()
        if _closed(lp.value, value):
            return
        box = entry.box
        if lp.reduced is not None:  # reduced-cost fixing: drop v with lp + r_v > incumbent
            fixed = idx[lp.value + lp.reduced > value + 1e-7 * abs(value)]
            box = box.fixing(frozenset(int(i) for i in fixed))
        self.push(entry._replace(bound=max(entry.bound, lp.value), phase=Phase.MILP, box=box))

    def _milp(self, entry: BandEntry, idx: IntArray, sub: CandidateArrays, t_lb: FloatArray,
              t_max: FloatArray) -> None:
        """Phase MILP: solve the band MILP; on a timeout split the band (or give it twice the
        time when it cannot split)."""
        m = band_milp(self.problem, self.L, sub, t_lb, t_max, entry.band, self.value())
        t = time.perf_counter()
        res = solve_band(m, min(entry.limit, self.t_end - t))
        self.stats.milps += 1
        self.stats.milp_seconds += time.perf_counter() - t
        if res.x is not None:
            self.offer(self._plan_of(entry, [int(i) for i, v in zip(idx, res.x, strict=True)
                                             if v > 0.5]))
        if res.status in (MilpStatus.OPTIMAL, MilpStatus.INFEASIBLE):
            return
        bound = max(entry.bound, res.bound)
        self.stats.split += 1
        children = split(entry.band, entry.box, sub)
        for band, box in children:
            self.push(BandEntry(bound, Phase.BOUND, entry.micro_batch, band, entry.limit, box))
        if not children:  # nothing left to split: more time
            self.push(entry._replace(bound=bound, limit=2 * entry.limit))

    def lower_bound(self) -> float:
        """Smallest bound of the bands left (time is up: unexamined ones bounded cheaply)."""
        lower = math.inf
        for entry in self.heap:
            bound = entry.bound
            if bound == -math.inf and lower > -math.inf:
                _, c_box = boxed(self.chains[entry.micro_batch].arrays, entry.box)
                kept = prune(self.problem, self.L, c_box, self.incumbent, entry.band)
                bound = (band_bound(self.problem, self.L, c_box.take(kept.idx), kept.t_lb,
                                    entry.band) if len(kept.idx) else math.inf)
            lower = min(lower, bound)
        return lower


def plan_bands(problem: Problem, time_limit: float, best: Plan | None) -> BandSearch:
    """Best-first search over (micro-batch, time band) MILPs, starting from incumbent ``best``.

    Stops when every band is closed (the result is optimal) or after ``time_limit`` seconds per
    micro-batch size."""
    search = _Search(problem, time_limit, best)
    search.seed()
    search.run()
    lower = search.lower_bound()
    search.log.append(dataclasses.asdict(search.stats))
    return BandSearch(search.best, lower, search.log)
