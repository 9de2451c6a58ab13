"""The band MILP: FuncPipe's MILP restricted to one iteration-time band, as scipy arrays.

A band's MILP is the formulation of ``planners.miqp`` plus lo <= T <= hi, the McCormick row
z_v >= T - hi (1 - x_v), the (2') bottleneck level sets and an incumbent cutoff. ``band_milp``
builds it as a ``BandMilp`` whose constraint blocks are named by ``Row`` (numbered as in
planners/README.md); ``solve_band`` solves it on HiGHS through ``scipy.optimize``, and
``solve_lp`` its LP relaxation with the reduced costs that fix candidates. The band search
(``planners.bands``) calls all three.

Notation: L layers, V candidates, U level-set variables. Columns are, in order, x (V), z (V),
T, P^F, P^B, Y, u (U) (``Col``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
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
from planners.bounds import Band, CandidateArrays, FloatArray, IntArray, Term
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.bands and planners.miqp

LEVELS = 6  # bottleneck levels per term in constraint (2')


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
    NO_GOOD = "sum_{v in plan} x_v <= |plan| - 1, one row per plan already scored"


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
            Block(Row.BUDGET, dense(money[None, :]), -np.inf, obj.budget_limit / c0)]
        return cost, t0, rows
    return cost, c0, []


def band_milp(problem: Problem, L: int, c: CandidateArrays, t_lb: FloatArray,
              t_max: FloatArray, band: Band, cutoff: float = math.inf,
              no_good: Sequence[IntArray] = ()) -> BandMilp:
    """The MILP of ``planners.miqp``'s docstring over candidates ``c`` (already pruned), with
    ``band.lo <= T <= band.hi``, the level sets (2'), when ``cutoff`` is finite objective
    <= cutoff, and one no-good row per entry of ``no_good`` (positions in ``c`` of a plan that
    has been scored already: the MILP must find another); as scipy.optimize.milp arrays."""
    lay = _layout(L, c, t_lb, band)
    V, t0 = lay.V, lay.t0
    levels, U = _level_blocks(lay, c)
    cost, scale, budget = _objective(problem, lay, c, U)
    blocks = [Block(b.row, hstack([b.matrix, zeros(b.matrix.shape[0], U)]),
                    b.lower, b.upper)
              for b in _core_blocks(problem, lay, c, t_lb, t_max, band)]
    blocks += levels + budget
    width = Col(V).u + U
    for plan in no_good:  # a plan is a path, so no other plan holds all of its candidates
        r = np.zeros((1, width))
        r[0, plan] = 1.0
        blocks.append(Block(Row.NO_GOOD, dense(r), -np.inf, float(len(plan) - 1)))
    if np.isfinite(cutoff):  # only plans better than the incumbent
        blocks.append(Block(Row.CUTOFF, dense(cost[None, :]), -np.inf,
                            cutoff / scale + 1e-7 * abs(cutoff / scale)))
    counts = [int(b.matrix.shape[0]) for b in blocks]
    col = Col(V)
    width = col.u + U
    var_lower, var_upper = np.zeros(width), np.full(width, np.inf)
    var_upper[:V] = 1.0
    var_upper[col.u:] = 1.0
    hi = min(band.hi, problem.objective.deadline_limit)  # the tolerance rule
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
