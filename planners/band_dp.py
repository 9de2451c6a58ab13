"""One band's plans by dynamic programming over the layer chain (exact, no solver).

After pruning, a band of the search (``planners.bands``) keeps a few hundred candidates. Their
plans are the paths 0 -> L of the candidate DAG, and a path's objective is a function of eight
sums and maxima along it, each the same for every continuation:

  F = sum fill_v   R = sum rate_v   Q = sum req_v   n = sum d_v
  mF = max aF_v    mB = max aB_v    mY = max y_v    mH = max (W - life_v)
  T = F + mF + mB + mY,   dollars = R T + Q,   objective = f(T, dollars)

f is non-decreasing in all of them for every objective kind, and so are the budget, deadline,
functions and lifetime limits (T <= min_v life_v = W - mH, W = timeout - cold start; mH is kept
only when some candidate's life_v could bind in the band, else it is 0). So a partial path (a
*label* at chain node k) is dropped when another label at k is no larger in all eight
(dominance), or when a lower bound on any of its completions is worse than the incumbent or
leaves the band (T above ``band.hi``: those plans belong to a later band, which covers them).
What survives at node L contains an optimal plan of the band, and every label there is a real
plan, priced exactly: the band is solved, not bounded.

``solve_band_dp`` returns the best few complete paths (the caller scores them with the cost
model, which decides feasibility), or None when a node holds more than ``max_labels`` labels
(the caller then falls back to the band's LP and MILP).

Notation: L layers; V candidates (the band's, positions into its ``CandidateArrays``); a label
is a row of eight floats in the column order above (``_COLS``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from planners.bounds import Band, BoolArray, CandidateArrays, FloatArray, IntArray, shortest_paths
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.bands

MAX_LABELS = 20_000  # labels at one chain node before the DP gives up (the caller falls back)
BEST = 64  # most complete paths returned, best first
_COLS = ("F", "R", "Q", "n", "mF", "mB", "mY", "mH")
_MARGIN = 1e-9  # relative slack on every pruning test: the cost model, not the DP, decides


class Labels(NamedTuple):
    """The labels of one chain node: values (K, 8), and how each was reached: the candidate
    of its last stage (K,) and the label it extended at that candidate's first node (K,)."""

    values: FloatArray
    cand: IntArray
    parent: IntArray


def dominates(a: FloatArray, b: FloatArray) -> BoolArray:
    """[i, o]: label a[o] dominates label b[i] (a (K, 8), b (C, 8)): no more R, Q, n and mH, and
    F_a + sum_k max(0, m_k,a - m_k,b) <= F_b over the three bottleneck terms k. Then every
    completion of a is no slower than the same completion of b, since max(m_a, x) <=
    max(m_b, x) + max(0, m_a - m_b) for each bottleneck term, and no dearer, so a is at
    least as good for every objective."""
    ok = (a[None, :, 1] <= b[:, None, 1]) & (a[None, :, 2] <= b[:, None, 2])
    ok &= (a[None, :, 3] <= b[:, None, 3]) & (a[None, :, 7] <= b[:, None, 7])
    excess = np.maximum(a[None, :, 4:7] - b[:, None, 4:7], 0.0).sum(axis=2)
    return ok & (a[None, :, 0] + excess <= b[:, None, 0])


def pareto(values: FloatArray, step: int = 128) -> IntArray:
    """Indices of the rows of ``values`` (K, 8) no other row ``dominates``, one of each set
    of rows dominating each other; ascending in F (a dominator never has a larger F, and
    lexicographic order puts it first at equal F).

    In that order, ``step`` surviving rows at a time are filtered among themselves, kept, and
    then remove every later row they dominate: most rows fall to the first few kept ones."""
    order = np.lexsort(values.T[::-1])
    x = values[order]
    alive = np.ones(len(x), bool)
    kept: list[IntArray] = []
    start = 0
    while True:
        todo = start + np.flatnonzero(alive[start:])
        if len(todo) == 0:
            break
        head, rest = todo[:step], todo[step:]
        chunk = x[head]
        inner = dominates(chunk, chunk) & np.tri(len(chunk), k=-1, dtype=bool)
        new = head[~inner.any(axis=-1)]
        kept.append(new)
        if len(rest):
            alive[rest[dominates(x[new], x[rest]).any(axis=-1)]] = False
        start = int(head[-1]) + 1
    return order[np.concatenate(kept)] if kept else np.zeros(0, np.int64)


def _objective(problem: Problem, t: FloatArray, dollars: FloatArray) -> FloatArray:
    obj = problem.objective
    if obj.kind == "weighted":
        return dollars + obj.weight * t
    return t if obj.kind == "budget" else dollars


def solve_band_dp(problem: Problem, L: int, c: CandidateArrays, band: Band, cutoff: float,
                  best: int = BEST, max_labels: int | None = None) -> list[list[int]] | None:
    """The complete paths over ``c`` with T <= band.hi that may beat ``cutoff`` and meet the
    budget, deadline and functions limits (pruning with a 1e-9 relative slack; the final
    limits with 1e-12), best objective first, at most ``best`` of them (candidate positions in
    ``c``, in layer order); [] when there is none; None when a node needs more than
    ``max_labels`` labels (None: ``MAX_LABELS``). The caller scores them in order: the first
    the cost model accepts is the band's optimum, and when all of fewer than ``best`` are
    rejected the band has no plan."""
    obj = problem.objective
    max_labels = MAX_LABELS if max_labels is None else max_labels
    slack = 1 + _MARGIN
    t_cap = min(band.hi, obj.deadline_limit) * slack
    window = problem.platform.timeout_s - problem.platform.cold_start_s
    binds = len(c) > 0 and float(c.life.min()) < t_cap  # can the lifetime limit bind here?
    life_gap = np.maximum(window - c.life, 0.0) if binds else np.zeros(len(c))
    data = np.stack([c.fill, c.rate, c.req, c.replicas.astype(np.float64), c.a_fwd, c.a_bwd,
                     c.tail, life_gap], axis=1)  # (V, 8)
    if obj.kind == "budget" and obj.budget is None:  # min time: dollars play no part, so
        data[:, 1:3] = 0.0  # R and Q neither bound nor dominate (labels collapse)
    suf = shortest_paths(L, c.first, c.last, data[:, :4])[1]  # (L+1, 4): F, R, Q, n to go
    suf_cost = shortest_paths(L, c.first, c.last, c.rate * band.lo + c.req)[1]  # (L+1,)
    suf_max = _suffix_minimax(L, c, data[:, 4:])  # (L+1, 4): least maxima to go
    nodes: list[Labels | None] = [None] * (L + 1)
    nodes[0] = Labels(np.zeros((1, 8)), np.full(1, -1, np.int64), np.full(1, -1, np.int64))
    ends = _groups(c.last + 1, L)  # ends[k]: candidates ending at node k, ascending
    for k in range(1, L + 1):
        values: list[FloatArray] = []
        cands: list[IntArray] = []
        parents: list[IntArray] = []
        for v in ends[k].tolist():
            src = nodes[int(c.first[v])]
            if src is None or not len(src.values):
                continue
            new = src.values + data[v]
            new[:, 4:] = np.maximum(src.values[:, 4:], data[v, 4:])
            values.append(new)
            cands.append(np.full(len(new), v, np.int64))
            parents.append(np.arange(len(new), dtype=np.int64))
        if not values:
            nodes[k] = None
            continue
        x = np.concatenate(values)
        maxima = np.maximum(x[:, 4:], suf_max[k])
        t_lb = x[:, 0] + suf[k, 0] + maxima[:, :3].sum(axis=1)
        # plans faster than band.lo lie in an earlier band, which covers them; the stages to
        # go cost at least suf_cost (at lo) plus their rates times (T - lo)
        t_in = np.maximum(t_lb, band.lo)
        cost_lb = x[:, 1] * t_in + x[:, 2] + suf_cost[k] + suf[k, 1] * (t_in - band.lo)
        ok = (t_lb <= t_cap) & (x[:, 3] + suf[k, 3] <= problem.max_functions)
        ok &= t_lb <= (window - maxima[:, 3]) * slack
        ok &= cost_lb <= obj.budget_limit * slack
        ok &= _objective(problem, t_in, cost_lb) <= cutoff * slack
        keep = np.flatnonzero(ok)
        if len(keep) > 8 * max_labels:
            return None
        front = keep[pareto(x[keep])]
        if len(front) > max_labels:
            return None
        nodes[k] = Labels(x[front], np.concatenate(cands)[front],
                          np.concatenate(parents)[front])
    last = nodes[L]
    if last is None or not len(last.values):
        return []
    x = last.values
    t = (x[:, 0] + (x[:, 4] + x[:, 5])) + x[:, 6]  # as cost.aggregate adds them
    dollars = x[:, 1] * t + x[:, 2]
    near = 1 + 1e-12  # the DP's sums differ from the cost model's by rounding only
    feasible = np.flatnonzero((t <= obj.deadline_limit * near)
                              & (dollars <= obj.budget_limit * near)
                              & (t <= (window - x[:, 7]) * near))
    value = _objective(problem, t[feasible], dollars[feasible])
    order = feasible[np.argsort(value, kind="stable")]
    return [_path(nodes, c, int(i)) for i in order[:best]]


def _suffix_minimax(L: int, c: CandidateArrays, terms: FloatArray) -> FloatArray:
    """(L+1, 3): for every node, the least value any path from it to L can give each
    bottleneck term's maximum (0 at L, inf where no path continues)."""
    out = np.full((L + 1, terms.shape[1]), np.inf)
    out[L] = 0.0
    starts = _groups(c.first, L)
    for k in range(L - 1, -1, -1):
        e = starts[k]
        if len(e):
            out[k] = np.maximum(terms[e], out[c.last[e] + 1]).min(axis=0)
    return out


def _groups(node: IntArray, L: int) -> list[IntArray]:
    """For k = 0..L, the candidates whose ``node`` is k, ascending (as np.flatnonzero(node ==
    k), in O(V log V) rather than O(L V): expanded chains have thousands of nodes)."""
    order = np.argsort(node, kind="stable")
    cuts = np.searchsorted(node[order], np.arange(L + 2)).tolist()
    return [order[cuts[k]:cuts[k + 1]] for k in range(L + 1)]


def _path(nodes: list[Labels | None], c: CandidateArrays, label: int) -> list[int]:
    """The candidates of the path ending in label ``label`` of node L, in layer order."""
    path: list[int] = []
    k = len(nodes) - 1
    while k > 0:
        here = nodes[k]
        assert here is not None
        v = int(here.cand[label])
        path.append(v)
        label = int(here.parent[label])
        k = int(c.first[v])
    return path[::-1]
