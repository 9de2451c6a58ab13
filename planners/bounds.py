"""Paths and bounds on the candidate DAG, shared by both miqp solvers.

For one micro-batch size a plan is a path 0 -> L through the layer chain whose edges are stage
candidates v (layers i_v..j_v, an edge i_v -> j_v + 1). This module holds:

- ``CandidateArrays`` (built by ``candidate_arrays``): the per-candidate data of the MILP (fill,
  bottleneck terms ``Term.FWD``/``BWD``/``TAIL``, rates), one array entry per candidate;
- ``shortest_paths``, ``shortest_path``: shortest paths over the DAG (bound values and plans);
- ``time_caps``: T_lb_v / T_max_v, the time bounds that prune candidates and cap the billing
  variables (``planners.miqp.build`` and the band search);
- the band search's pruning and cheap bounds: ``prune`` (to a fixed point), ``lagrange_keep``
  (Lagrangian bound), ``lagrange_plans`` (heuristic paths), ``band_bound``.

Notation: L layers, V candidates; arrays indexed by candidate are (V,), by chain node (L+1,).
Why each bound is valid (so pruning keeps the search exact) is in planners/README.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from planners.candidates import Candidate
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.miqp and planners.bands

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_MU = np.array([0.1, 0.3, 1.0, 3.0, 10.0])  # multipliers of the heuristic paths, x scale
_MU_CAPPED = np.array([0.3, 1.0, 3.0])  # the same, for paths with a capped own bottleneck
_MU_KEEP = np.array([0.0, 0.1, 0.3, 1.0, 3.0, 10.0])  # multipliers of the Lagrangian bound
_POSITIONS = 128  # most chain positions ``band_bound`` examines
_FEW = 0.3  # a band's pruning stops after a round that drops less than this share


class Term(IntEnum):
    """The three bottleneck terms of the time constraint (3) (README notation).

    The value orders them everywhere: the MILP columns P^F, P^B, Y follow T in this order, and
    ``planners.bands.Box`` keeps one range per term in this order.
    """

    FWD = 0  # P^F >= aF_v = (n_v - 1) tauF_v
    BWD = 1  # P^B >= aB_v = (n_v - 1) tauB_v
    TAIL = 2  # Y >= y_v = sync_v + update_v


class Band(NamedTuple):
    """An iteration-time band lo <= T <= hi, in seconds."""

    lo: float
    hi: float


class Incumbent(NamedTuple):
    """Seconds and dollars per iteration of the best plan known."""

    seconds: float
    dollars: float


@dataclass(frozen=True)
class CandidateArrays:
    """The MILP data of V candidates (README "Data per candidate"); entry v is candidate v.

    Attributes:
      first, last: i_v, j_v, the candidate's inclusive layers (the DAG edge i_v -> j_v + 1).
      fill: fill_v = D^a + F + U^a + D^g + G + U^g, in seconds.
      a_fwd, a_bwd: aF_v = (n-1) tauF and aB_v = (n-1) tauB, in seconds.
      tail: y_v = sync + update, in seconds.
      replicas: d_v, functions of the stage.
      rate: rate_v, currency per second of iteration time (GB-seconds and invocations,
        times the window factor, ``cost.StageTerms.rate``).
      req: req_v, currency per iteration (storage requests).
      life: life_v, the longest iteration the stage's windows hold, seconds (T <= life_v).
    """

    first: IntArray
    last: IntArray
    fill: FloatArray
    a_fwd: FloatArray
    a_bwd: FloatArray
    tail: FloatArray
    replicas: IntArray
    rate: FloatArray
    req: FloatArray
    life: FloatArray

    def __len__(self) -> int:
        return len(self.first)

    def take(self, idx: IntArray | BoolArray) -> CandidateArrays:
        """The candidates selected by ``idx`` (indices or a boolean mask), in that order."""
        return CandidateArrays(self.first[idx], self.last[idx], self.fill[idx], self.a_fwd[idx],
                               self.a_bwd[idx], self.tail[idx], self.replicas[idx],
                               self.rate[idx], self.req[idx], self.life[idx])

    def term(self, k: Term) -> FloatArray:
        """aF, aB or y: the values of bottleneck term ``k``."""
        return (self.a_fwd, self.a_bwd, self.tail)[k]

    def with_terms(self, a_fwd: FloatArray, a_bwd: FloatArray, tail: FloatArray,
                   ) -> CandidateArrays:
        """The same candidates with new bottleneck terms."""
        return dataclasses.replace(self, a_fwd=a_fwd, a_bwd=a_bwd, tail=tail)

    @property
    def own(self) -> FloatArray:
        """aF_v + aB_v + y_v: the bottleneck time a plan through v pays at least, seconds."""
        return self.a_fwd + self.a_bwd + self.tail


def candidate_arrays(problem: Problem, cands: list[Candidate]) -> CandidateArrays:
    """The MILP data of ``cands`` (non-empty), from their cost-model terms."""
    plat = problem.platform
    t = [c.terms for c in cands]

    def floats(values: list[float]) -> FloatArray:
        return np.array(values, dtype=np.float64)

    return CandidateArrays(
        first=np.array([c.first for c in cands], dtype=np.int64),
        last=np.array([c.last for c in cands], dtype=np.int64),
        fill=floats([x.fill_fwd + x.fill_bwd for x in t]),
        a_fwd=floats([(x.per_replica - 1) * x.period_fwd for x in t]),
        a_bwd=floats([(x.per_replica - 1) * x.period_bwd for x in t]),
        tail=floats([x.sync + x.update for x in t]),
        replicas=np.array([x.replicas for x in t], dtype=np.int64),
        rate=floats([x.rate(plat) for x in t]),  # currency per second
        req=floats([plat.request_dollars(x.puts, x.gets) for x in t]),
        life=floats([x.life for x in t]),
    )


def shortest_paths(L: int, first: IntArray, last: IntArray,
                   w: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Shortest path weights 0 -> k (pre) and k -> L (suf) over candidate edges i -> j+1.

    ``w`` is (V,) or (V, K) for K weightings at once; pre and suf are (L+1,) or (L+1, K)."""
    w2 = w.reshape(len(w), -1 if len(w) else (w.shape[1] if w.ndim > 1 else 1))  # (V, K)
    pre = np.full((L + 1, w2.shape[1]), np.inf)  # (L+1, K)
    suf = pre.copy()
    pre[0], suf[L] = 0.0, 0.0
    if len(w2):
        # edges sorted by end node (stable), so the edges into k+1 are one contiguous slice
        order = np.argsort(last, kind="stable")
        src, wt = first[order], w2[order]
        ends = np.searchsorted(last[order], np.arange(L + 1)).tolist()
        for k in range(L):  # edges ending at k+1 start at nodes <= k, all final by now
            a, b = ends[k], ends[k + 1]
            if a < b:
                pre[k + 1] = (pre[src[a:b]] + wt[a:b]).min(axis=0)
        order = np.argsort(first, kind="stable")
        dst, wt = last[order] + 1, w2[order]
        starts = np.searchsorted(first[order], np.arange(L + 1)).tolist()
        for k in range(L - 1, -1, -1):
            a, b = starts[k], starts[k + 1]
            if a < b:
                suf[k] = (suf[dst[a:b]] + wt[a:b]).min(axis=0)
    if w.ndim == 1:
        return pre[:, 0], suf[:, 0]
    return pre, suf


def shortest_path(L: int, first: IntArray, last: IntArray, w: FloatArray) -> list[int]:
    """Indices of the candidates on a shortest 0 -> L path (empty if none)."""
    pre, arg = np.full(L + 1, np.inf), np.full(L + 1, -1)
    pre[0] = 0.0
    order = np.argsort(last, kind="stable")
    ends = np.searchsorted(last[order], np.arange(L + 1))
    for k in range(L):
        e = order[ends[k]:ends[k + 1]]
        if len(e):
            val = pre[first[e]] + w[e]
            i = int(np.argmin(val))
            pre[k + 1], arg[k + 1] = val[i], e[i]
    if not np.isfinite(pre[L]):
        return []
    path: list[int] = []
    k = L
    while k > 0:
        path.append(int(arg[k]))
        k = int(first[arg[k]])
    return path[::-1]


def time_caps(problem: Problem, L: int, c: CandidateArrays, incumbent: Incumbent | None,
              band: Band | None = None) -> tuple[FloatArray, FloatArray]:
    """(T_lb_v, T_max_v): a lower bound on T for any plan using v, and an upper bound on T for
    any plan using v that beats the incumbent or meets budget/deadline, both in seconds.
    With ``band`` only plans with lo <= T <= hi are considered. T_lb_v is inf when every plan
    through v needs more than max_functions functions (shortest path on d_v). Budgets and
    deadlines enter as ``Objective.budget_limit`` / ``deadline_limit`` (the tolerance rule)."""
    obj = problem.objective
    f, j = c.first, c.last
    w = np.stack([c.fill, c.rate, c.req, -c.fill, c.replicas.astype(np.float64)],
                 axis=1)  # (V, 5)
    pre, suf = shortest_paths(L, f, j, w)
    through = pre[f] + w + suf[j + 1]  # shortest path through v in each weighting
    t_lb = through[:, 0] + c.a_fwd + c.a_bwd + c.tail
    # (5) functions: no plan through v uses fewer than through[:, 4] functions
    t_lb = np.where(through[:, 4] <= problem.max_functions, t_lb, np.inf)
    p = through[:, 1]  # lower bound on the sum of rates ($/s) of a plan through v
    r_lb = through[:, 2]
    longest = -pre[L, 3]  # DAG longest path via negated weights
    t_max = np.full(len(f), longest + c.a_fwd.max() + c.a_bwd.max() + c.tail.max())
    t_max = np.minimum(t_max, c.life)  # an iteration fits every window of the plan
    if band is not None:
        t_lb = np.maximum(t_lb, band.lo)
        t_max = np.minimum(t_max, band.hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.kind == "weighted" and incumbent is not None:
            f_inc = obj.value(*incumbent)
            t_max = np.minimum(t_max, np.where(p + obj.weight > 0,
                                               (f_inc - r_lb) / (p + obj.weight), np.inf))
        if obj.kind == "budget":
            if incumbent is not None:
                t_max = np.minimum(t_max, incumbent.seconds)
            if obj.budget is not None:
                t_max = np.minimum(t_max, np.where(p > 0, (obj.budget_limit - r_lb) / p,
                                                   np.inf))
        if obj.kind == "deadline" and obj.deadline is not None:
            t_max = np.minimum(t_max, obj.deadline_limit)
            if incumbent is not None:
                t_max = np.minimum(t_max, np.where(p > 0, (incumbent.dollars - r_lb) / p,
                                                   np.inf))
    return t_lb, t_max


class Pruned(NamedTuple):
    """The candidates left by ``prune`` (indices into its input) and their time caps, s."""

    idx: IntArray
    t_lb: FloatArray
    t_max: FloatArray


def prune(problem: Problem, L: int, c: CandidateArrays, incumbent: Incumbent | None,
          band: Band | None) -> Pruned:
    """The candidates that can be in a plan with T in ``band`` beating ``incumbent`` (bound,
    prune, repeat to a fixed point), with their T_lb and T_max.

    With a band, a round that drops less than ``_FEW`` of the candidates (time caps and the
    Lagrangian bound together) is the last: the few it would still drop cost the band DP
    less than more rounds of shortest paths. Caps computed over a superset of the kept
    candidates still bound every plan over the kept ones."""
    idx = np.arange(len(c))
    while True:
        sub = c.take(idx)
        if len(idx) == 0:
            return Pruned(idx, np.zeros(0), np.zeros(0))
        t_lb, t_max = time_caps(problem, L, sub, incumbent, band)
        keep = np.isfinite(t_lb) & (t_lb <= t_max * (1 + 1e-9) + 1e-12)
        few = band is not None and keep.sum() >= (1 - _FEW) * len(idx)
        if band is not None and (keep.all() or few):
            keep &= lagrange_keep(problem, L, sub, incumbent, band)
        if keep.all():
            return Pruned(idx, t_lb, t_max)
        if few and keep.sum() >= (1 - _FEW) * len(idx):
            return Pruned(idx[keep], t_lb[keep], t_max[keep])
        idx = idx[keep]


def lagrange_plans(problem: Problem, L: int, c: CandidateArrays, t_hat: float,
                   ) -> list[list[int]]:
    """Heuristic paths: shortest paths on rate_u t_hat + req_u + mu (fill_u + own_u)."""
    obj = problem.objective
    w = obj.weight if obj.kind == "weighted" else 0.0
    own = c.own
    base = c.rate * t_hat + c.req
    scale = w + float(np.median(c.rate)) * 4
    out: list[list[int]] = []
    weights = [base + mu * (c.fill + own) for mu in scale * _MU]
    for beta in np.quantile(own, [0.1, 0.3, 0.5]):  # stages whose own bottleneck is <= beta
        capped = np.where(own <= beta, base, np.inf)
        weights += [capped + mu * c.fill for mu in scale * _MU_CAPPED]
    for wt in weights:
        path = shortest_path(L, c.first, c.last, wt)
        if path and path not in out and c.replicas[path].sum() <= problem.max_functions:
            out.append(path)
    return out


def lagrange_keep(problem: Problem, L: int, c: CandidateArrays, incumbent: Incumbent | None,
                  band: Band) -> BoolArray:
    """Candidates whose Lagrangian bound does not exceed the incumbent (weighted/deadline).

    A plan with lo <= T <= hi through v costs at least sum_u (rate_u lo + req_u) + w lo, and its
    stages' fill is at most hi - (aF_v + aB_v + tail_v); dualising that with mu >= 0 gives
    shortest-path bounds pre_mu(i_v) + c_v + mu fill_v + suf_mu(j_v+1) - mu (hi - own_v) + w lo.
    """
    obj, V = problem.objective, len(c)
    if obj.kind == "budget" or incumbent is None:
        return np.ones(V, bool)
    lo, hi = band
    w = obj.weight if obj.kind == "weighted" else 0.0
    limit = obj.value(*incumbent)
    limit += 1e-9 * abs(limit)
    f, j = c.first, c.last
    own = c.own
    base = c.rate * lo + c.req
    scale = w + float(np.median(c.rate)) * 4
    mu = scale * _MU_KEEP  # (K,)
    wt = base[:, None] + mu[None, :] * c.fill[:, None]  # (V, K)
    pre, suf = shortest_paths(L, f, j, wt)
    bound = pre[f] + wt + suf[j + 1] - mu[None, :] * (hi - own)[:, None] + w * lo
    return bound.max(axis=1) <= limit


def band_bound(problem: Problem, L: int, c: CandidateArrays, t_lb: FloatArray,
               band: Band) -> float:
    """A cheap lower bound on the objective of any plan with T in ``band`` over candidates c:
    every plan uses, for each layer l, one candidate covering l, whose own bound holds."""
    f, j = c.first, c.last
    w2 = np.stack([c.rate, c.req], axis=1)  # (V, 2)
    pre, suf = shortest_paths(L, f, j, w2)
    rate, req = (pre[f] + w2 + suf[j + 1]).T
    t = np.maximum(t_lb, band.lo)
    obj = problem.objective
    if obj.kind == "weighted":
        v = (rate + obj.weight) * t + req
    elif obj.kind == "budget":
        v = t
    else:
        v = rate * t + req
    best = -np.inf
    # every position of the chain is covered by one stage of every plan, so any subset of
    # positions gives a bound; long (expanded) chains are sampled at 128 of them
    where = range(L) if L <= _POSITIONS else np.unique(np.linspace(0, L - 1, _POSITIONS,
                                                                    dtype=np.int64)).tolist()
    for layer in where:
        m = (f <= layer) & (j >= layer)
        best = max(best, float(v[m].min()) if m.any() else np.inf)
    return best
