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


class Trade(NamedTuple):
    """What one band lets a label trade: its plans have lo <= T <= hi, every completion adds
    at least ``rate`` to R (the suffix's least rate; plus the objective's weight on time when
    the objective is dollars + weight * T and nothing limits dollars alone)."""

    lo: float
    hi: float
    rate: float | FloatArray  # (or one per leading index of the labels)


def dominates(a: FloatArray, b: FloatArray, trade: Trade | None = None) -> BoolArray:
    """[..., i, o]: label a[..., o, :] dominates label b[..., i, :] (a (..., K, 8), b (..., C,
    8)): no more n, and with delta = F_b - F_a - sum_k max(0, m_k,a - m_k,b) over the three
    bottleneck terms k, delta >= 0 and no more R, Q and mH. Then every completion of a is no
    slower than the same completion of b, since max(m_a, x) <= max(m_b, x) + max(0, m_a -
    m_b) for each bottleneck term, and no dearer, so a is at least as good for every
    objective.

    With a ``trade`` (a band), a may also be dearer per second when it is faster enough: its
    completion's T_a <= T_b - delta, so dollars (or dollars + weight T) differ by at least
    gain = min over T_b in [lo, hi] of (R_b - R_a) T_b + (R_a + trade.rate) delta + Q_b - Q_a,
    and a dominates when gain > 0 (by more than rounding) and mH_a <= mH_b + delta (its
    window still holds). Completions of b outside the band belong to other bands."""
    a, b = a[..., None, :, :], b[..., :, None, :]
    ok = a[..., 3] <= b[..., 3]
    delta = b[..., 0] - (a[..., 0] + np.maximum(a[..., 4:7] - b[..., 4:7], 0.0).sum(axis=-1))
    ok &= delta >= 0
    plain = (a[..., 1] <= b[..., 1]) & (a[..., 2] <= b[..., 2]) & (a[..., 7] <= b[..., 7])
    if trade is None:
        return ok & plain
    d_rate = b[..., 1] - a[..., 1]
    gain = (np.minimum(d_rate * trade.lo, d_rate * trade.hi)
            + (a[..., 1] + trade.rate) * delta + (b[..., 2] - a[..., 2]))
    traded = gain > _MARGIN * (b[..., 1] * trade.lo + b[..., 2])
    traded &= a[..., 7] <= b[..., 7] + delta
    return ok & (plain | traded)


def pareto(values: FloatArray, trade: Trade | None = None, step: int = 16) -> IntArray:
    """Indices of the rows of ``values`` (K, 8) no other row ``dominates`` (under ``trade``),
    one of each set
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
        inner = dominates(chunk, chunk, trade) & np.tri(len(chunk), k=-1, dtype=bool)
        new = head[~inner.any(axis=-1)]
        kept.append(new)
        if len(rest):
            alive[rest[dominates(x[new], x[rest], trade).any(axis=-1)]] = False
        start = int(head[-1]) + 1
    return order[np.concatenate(kept)] if kept else np.zeros(0, np.int64)


def _objective(problem: Problem, t: FloatArray, dollars: FloatArray) -> FloatArray:
    obj = problem.objective
    if obj.kind == "weighted":
        return dollars + obj.weight * t
    return t if obj.kind == "budget" else dollars


def solve_band_dp(problem: Problem, L: int, c: CandidateArrays, band: Band, cutoff: float,
                  best: int = BEST, max_labels: int | None = None, beam: int | None = None,
                  ) -> list[list[int]] | None:
    """The complete paths over ``c`` with T <= band.hi that may beat ``cutoff`` and meet the
    budget, deadline and functions limits (pruning with a 1e-9 relative slack; the final
    limits with 1e-12), best objective first, at most ``best`` of them (candidate positions in
    ``c``, in layer order); [] when there is none; None when a node needs more than
    ``max_labels`` labels (None: ``MAX_LABELS``). The caller scores them in order: the first
    the cost model accepts is the band's optimum, and when all of fewer than ``best`` are
    rejected the band has no plan.

    With ``beam`` the DP is a heuristic: each node keeps only the ``beam`` labels with the
    smallest bound on their completions' objective, so it is fast and its paths are real plans
    but not the band's optimum; it never returns None."""
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
    pre, suf = shortest_paths(L, c.first, c.last, data[:, :4])  # (L+1, 4): F, R, Q, n
    # dollars + weight T trades against time only when nothing limits dollars alone
    weight = obj.weight if obj.kind == "weighted" else 0.0
    live = _undominated(c, data, pre[:, 1] + weight, suf[:, 1], Band(band.lo, t_cap))
    c, data = c.take(live), data[live]
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
        here = ends[k][np.argsort(c.first[ends[k]], kind="stable")]  # by first node
        cuts = np.flatnonzero(np.diff(c.first[here])) + 1
        for vs in np.split(here, cuts) if len(here) else []:
            src = nodes[int(c.first[vs[0]])]
            if src is None or not len(src.values):
                continue
            # every label of the source node extended by every candidate vs: (len(vs), S, 8)
            new = src.values[None, :, :] + data[vs, None, :]
            new[:, :, 4:] = np.maximum(src.values[None, :, 4:], data[vs, None, 4:])
            values.append(new.reshape(-1, 8))
            cands.append(np.repeat(vs, len(src.values)))
            parents.append(np.tile(np.arange(len(src.values), dtype=np.int64), len(vs)))
        if not values:
            nodes[k] = None
            continue
        x = np.concatenate(values)
        maxima = np.maximum(x[:, 4:], suf_max[k])
        t_lb = x[:, 0] + suf[k, 0] + maxima[:, :3].sum(axis=1)
        # plans faster than band.lo lie in an earlier band, which covers them; the stages to
        # go cost at least suf_cost (at lo) plus their rates times (T - lo)
        t_in = np.maximum(t_lb, band.lo)
        with np.errstate(invalid="ignore"):  # inf * 0 where no path continues: nan, dropped
            cost_lb = x[:, 1] * t_in + x[:, 2] + suf_cost[k] + suf[k, 1] * (t_in - band.lo)
        ok = (t_lb <= t_cap) & (x[:, 3] + suf[k, 3] <= problem.max_functions)
        ok &= t_lb <= (window - maxima[:, 3]) * slack
        ok &= cost_lb <= obj.budget_limit * slack
        ok &= _objective(problem, t_in, cost_lb) <= cutoff * slack
        keep = np.flatnonzero(ok)
        if beam is not None and len(keep) > beam:
            score = _objective(problem, t_lb[keep], cost_lb[keep])
            keep = keep[np.argpartition(score, beam)[:beam]]
        if len(keep) > 8 * max_labels:
            return None
        front = keep[pareto(x[keep], Trade(band.lo, t_cap, float(suf[k, 1]) + weight))]
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
    return [[int(live[v]) for v in _path(nodes, c, int(i))] for i in order[:best]]


def _undominated(c: CandidateArrays, data: FloatArray, pre_rate: FloatArray,
                 suf_rate: FloatArray, band: Band) -> IntArray:
    """Positions of the candidates no earlier candidate with the same layers ``dominates`` as
    a label (``data`` rows in lexicographic order, under the band's ``Trade`` with the least
    rate any plan through them adds, ``pre_rate`` before and ``suf_rate`` after), ascending.
    Extending any label by the dominator instead gives a label that dominates the other
    extension (each excess and trade term of the extensions is no worse than the
    candidates'), so no optimum of the band needs a dropped candidate.

    All (first, last) groups at once: each padded to the largest group's size G, one
    (groups, G, G) dominance test."""
    if not len(c):
        return np.zeros(0, np.int64)
    order = np.lexsort((*data.T[::-1], c.last, c.first))  # by group, then as ``pareto``
    first, last = c.first[order], c.last[order]
    new_group = np.r_[True, (first[1:] != first[:-1]) | (last[1:] != last[:-1])]
    starts = np.flatnonzero(new_group)
    group = np.cumsum(new_group) - 1  # (V,) group of each sorted candidate
    slot = np.arange(len(order)) - starts[group]  # (V,) position inside its group
    size = int(slot.max()) + 1
    rows = np.full((len(starts), size, 8), np.inf)
    rows[group, slot] = data[order]
    rate = pre_rate[first[starts]] + suf_rate[last[starts] + 1]
    with np.errstate(invalid="ignore"):  # padding (inf) never dominates: nan compares False
        beaten = dominates(rows, rows, Trade(band.lo, band.hi, rate[:, None, None]))
    beaten &= np.tri(size, k=-1, dtype=bool)
    dropped: BoolArray = np.any(beaten, axis=-1)[group, slot]
    return np.sort(order[~dropped])


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
