"""Paths and bounds on the candidate DAG, shared by both miqp solvers.

For one micro-batch size a plan is a path 0 -> L through the layer chain whose edges are stage
candidates v (layers i_v..j_v, an edge i_v -> j_v + 1). This module holds:

- ``_data``: the per-candidate arrays of the MILP (fill, bottleneck terms aF/aB/tail, rates);
- ``_paths``, ``_shortest_path``: shortest paths over the DAG (bound values and plans);
- ``_time_caps``: T_lb_v / T_max_v, the time bounds that prune candidates and cap the billing
  variables (``planners.miqp.build`` and the band search);
- the band search's pruning and cheap bounds: ``_prune`` (to a fixed point), ``_lagrange_keep``
  (Lagrangian bound), ``_lagrange_plans`` (heuristic paths), ``_band_bound``.

Why each bound is valid (so pruning keeps the search exact) is in planners/README.md.
"""

from __future__ import annotations

import numpy as np

from planners.candidates import Candidate
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.miqp and planners.bands


def _data(problem: Problem, cands: list[Candidate]) -> dict[str, np.ndarray]:
    plat = problem.platform
    t = [c.terms for c in cands]
    return {
        "first": np.array([c.first for c in cands]), "last": np.array([c.last for c in cands]),
        "fill": np.array([x.fill_fwd + x.fill_bwd for x in t]),
        "aF": np.array([(x.per_replica - 1) * x.period_fwd for x in t]),
        "aB": np.array([(x.per_replica - 1) * x.period_bwd for x in t]),
        "tail": np.array([x.sync + x.update for x in t]),
        "gb": np.array([x.gigabytes for x in t]), "d": np.array([x.replicas for x in t]),
        "rate": np.array([plat.compute_dollars(x.gigabytes, 1.0)  # currency per second
                          + plat.handover_invocation_dollars(x.replicas, 1.0) for x in t]),
        "req": np.array([plat.request_dollars(x.puts, x.gets) for x in t]),
    }


def _paths(L: int, first: np.ndarray, last: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Shortest path weights 0 -> k (pre) and k -> L (suf) over candidate edges i -> j+1.

    ``w`` is (V,) or (V, K) for K weightings at once; pre and suf are (L+1,) or (L+1, K)."""
    w2 = w.reshape(len(w), -1)
    pre = np.full((L + 1, w2.shape[1]), np.inf)
    suf = pre.copy()
    pre[0], suf[L] = 0.0, 0.0
    if len(w2):
        order = np.argsort(last, kind="stable")
        bounds = np.searchsorted(last[order], np.arange(L + 1))
        for k in range(L):  # edges ending at k+1 start at nodes <= k, all final by now
            e = order[bounds[k]:bounds[k + 1]]
            if len(e):
                pre[k + 1] = np.minimum(pre[k + 1], (pre[first[e]] + w2[e]).min(axis=0))
        order = np.argsort(first, kind="stable")
        bounds = np.searchsorted(first[order], np.arange(L + 1))
        for k in range(L - 1, -1, -1):
            e = order[bounds[k]:bounds[k + 1]]
            if len(e):
                suf[k] = np.minimum(suf[k], (suf[last[e] + 1] + w2[e]).min(axis=0))
    if w.ndim == 1:
        return pre[:, 0], suf[:, 0]
    return pre, suf


def _shortest_path(L: int, first: np.ndarray, last: np.ndarray, w: np.ndarray) -> list[int]:
    """Indices of the candidates on a shortest 0 -> L path (empty if none)."""
    pre, arg = np.full(L + 1, np.inf), np.full(L + 1, -1)
    pre[0] = 0.0
    order = np.argsort(last, kind="stable")
    bounds = np.searchsorted(last[order], np.arange(L + 1))
    for k in range(L):
        e = order[bounds[k]:bounds[k + 1]]
        if len(e):
            val = pre[first[e]] + w[e]
            i = int(np.argmin(val))
            pre[k + 1], arg[k + 1] = val[i], e[i]
    if not np.isfinite(pre[L]):
        return []
    path, k = [], L
    while k > 0:
        path.append(int(arg[k]))
        k = int(first[arg[k]])
    return path[::-1]


def _time_caps(problem: Problem, L: int, c: dict[str, np.ndarray],
               incumbent: tuple[float, float] | None,
               band: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(T_lb_v, T_max_v): a lower bound on T for any plan using v, and an upper bound on T for
    any plan using v that beats the incumbent (seconds, dollars) or meets budget/deadline.
    With ``band`` = (lo, hi) only plans with lo <= T <= hi are considered."""
    obj = problem.objective
    f, j = c["first"], c["last"]
    w = np.stack([c["fill"], c["rate"], c["req"], -c["fill"]], axis=1)
    pre, suf = _paths(L, f, j, w)
    through = pre[f] + w + suf[j + 1]  # shortest path through v in each weighting
    t_lb = through[:, 0] + c["aF"] + c["aB"] + c["tail"]
    p = through[:, 1]  # lower bound on the sum of rates ($/s) of a plan through v
    r_lb = through[:, 2]
    longest = -pre[L, 3]  # DAG longest path via negated weights
    t_max = np.full(len(f), longest + c["aF"].max() + c["aB"].max() + c["tail"].max())
    if band is not None:
        t_lb = np.maximum(t_lb, band[0])
        t_max = np.minimum(t_max, band[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if obj.kind == "weighted" and incumbent is not None:
            f_inc = obj.value(*incumbent)
            t_max = np.minimum(t_max, np.where(p + obj.weight > 0,
                                               (f_inc - r_lb) / (p + obj.weight), np.inf))
        if obj.kind == "budget":
            if incumbent is not None:
                t_max = np.minimum(t_max, incumbent[0])
            if obj.budget is not None:
                t_max = np.minimum(t_max, np.where(p > 0, (obj.budget - r_lb) / p, np.inf))
        if obj.kind == "deadline":
            t_max = np.minimum(t_max, obj.deadline)
            if incumbent is not None:
                t_max = np.minimum(t_max, np.where(p > 0, (incumbent[1] - r_lb) / p, np.inf))
    return t_lb, t_max


def _prune(problem: Problem, L: int, c: dict[str, np.ndarray], incumbent: tuple[float, float]
           | None, band: tuple[float, float] | None) -> tuple[np.ndarray, ...]:
    """Indices of the candidates that can be in a plan with T in ``band`` beating ``incumbent``
    (bound, prune, repeat to a fixed point), with their T_lb and T_max."""
    idx = np.arange(len(c["first"]))
    while True:
        sub = {k: v[idx] for k, v in c.items()}
        if len(idx) == 0:
            return idx, np.zeros(0), np.zeros(0)
        t_lb, t_max = _time_caps(problem, L, sub, incumbent, band)
        keep = np.isfinite(t_lb) & (t_lb <= t_max * (1 + 1e-9) + 1e-12)
        if band is not None and keep.all():
            keep = _lagrange_keep(problem, L, sub, incumbent, band)
        if keep.all():
            return idx, t_lb, t_max
        idx = idx[keep]


def _lagrange_plans(problem: Problem, L: int, c: dict[str, np.ndarray], t_hat: float,
                    ) -> list[list[int]]:
    """Heuristic paths: shortest paths on rate_u t_hat + req_u + mu (fill_u + own_u)."""
    obj = problem.objective
    w = obj.weight if obj.kind == "weighted" else 0.0
    own = c["aF"] + c["aB"] + c["tail"]
    base = c["rate"] * t_hat + c["req"]
    scale = w + float(np.median(c["rate"])) * 4
    out = []
    weights = [base + mu * (c["fill"] + own) for mu in scale * np.array([0.1, 0.3, 1.0, 3.0, 10.0])]
    for beta in np.quantile(own, [0.1, 0.3, 0.5]):  # stages whose own bottleneck is <= beta
        capped = np.where(own <= beta, base, np.inf)
        weights += [capped + mu * c["fill"] for mu in scale * np.array([0.3, 1.0, 3.0])]
    for wt in weights:
        path = _shortest_path(L, c["first"], c["last"], wt)
        if path and path not in out and c["d"][path].sum() <= problem.max_functions:
            out.append(path)
    return out


def _lagrange_keep(problem: Problem, L: int, c: dict[str, np.ndarray],
                   incumbent: tuple[float, float] | None, band: tuple[float, float]) -> np.ndarray:
    """Candidates whose Lagrangian bound does not exceed the incumbent (weighted/deadline).

    A plan with lo <= T <= hi through v costs at least sum_u (rate_u lo + req_u) + w lo, and its
    stages' fill is at most hi - (aF_v + aB_v + tail_v); dualising that with mu >= 0 gives
    shortest-path bounds pre_mu(i_v) + c_v + mu fill_v + suf_mu(j_v+1) - mu (hi - own_v) + w lo.
    """
    obj, V = problem.objective, len(c["first"])
    if obj.kind == "budget" or incumbent is None:
        return np.ones(V, bool)
    lo, hi = band
    w = obj.weight if obj.kind == "weighted" else 0.0
    limit = obj.value(*incumbent)
    limit += 1e-9 * abs(limit)
    f, j = c["first"], c["last"]
    own = c["aF"] + c["aB"] + c["tail"]
    base = c["rate"] * lo + c["req"]
    scale = w + float(np.median(c["rate"])) * 4
    mu = scale * np.array([0.0, 0.1, 0.3, 1.0, 3.0, 10.0])
    wt = base[:, None] + mu[None, :] * c["fill"][:, None]
    pre, suf = _paths(L, f, j, wt)
    bound = pre[f] + wt + suf[j + 1] - mu[None, :] * (hi - own)[:, None] + w * lo
    return bound.max(axis=1) <= limit


def _band_bound(problem: Problem, L: int, c: dict[str, np.ndarray], t_lb: np.ndarray,
                band: tuple[float, float]) -> float:
    """A cheap lower bound on the objective of any plan with T in ``band`` over candidates c:
    every plan uses, for each layer l, one candidate covering l, whose own bound holds."""
    f, j = c["first"], c["last"]
    w2 = np.stack([c["rate"], c["req"]], axis=1)
    pre, suf = _paths(L, f, j, w2)
    rate, req = (pre[f] + w2 + suf[j + 1]).T
    t = np.maximum(t_lb, band[0])
    obj = problem.objective
    if obj.kind == "weighted":
        v = (rate + obj.weight) * t + req
    elif obj.kind == "budget":
        v = t
    else:
        v = rate * t + req
    best = -np.inf
    for layer in range(L):
        m = (f <= layer) & (j >= layer)
        best = max(best, float(v[m].min()) if m.any() else np.inf)
    return best
