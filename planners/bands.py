"""The default miqp solver: best-first search over iteration-time bands, each a MILP on HiGHS.

For each micro-batch size the range of iteration times [T_min, T_max] is cut into bands
lo <= T <= hi. A band's MILP is the formulation of ``planners.miqp`` plus lo <= T <= hi, the
McCormick row z_v >= T - hi (1 - x_v), the (2') bottleneck level sets and an incumbent cutoff,
built as scipy arrays (``_band_milp``) and solved by HiGHS through ``scipy.optimize``
(``_solve_band``; its LP relaxation with reduced costs, ``_solve_lp``). ``_plan_bands`` examines
bands cheapest bound first: prune and bound (``planners.bounds``), heuristic paths, LP with
reduced-cost fixing, then the MILP; a band whose MILP times out splits in T, then in the
bottleneck box (``_split``, ``_boxed``). ``planners.miqp.plan_miqp`` calls it by default.
The exactness argument is in planners/README.md.
"""

from __future__ import annotations

import heapq
import itertools
import time

import numpy as np
import scipy.sparse as sp

from planners.bounds import (
    _band_bound,
    _data,
    _lagrange_plans,
    _prune,
    _shortest_path,
)
from planners.candidates import Candidate, candidates
from planners.cost import score
from planners.plans import Plan, StagePlan
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.miqp


SPLIT = 0.004  # bands narrower than this (relative) get more time instead of a split
BOX = (0.0, np.inf, 0.0, np.inf, 0.0, np.inf, frozenset())
# (PF_lo, PF_hi, PB_lo, PB_hi, Y_lo, Y_hi, candidates fixed to 0)
_TERMS = ("aF", "aB", "tail")
LIMIT = 4.0  # first HiGHS time limit of a band MILP, s (doubled when a band cannot split)
LEVELS = 6  # bottleneck levels per term in constraint (2')
BAND = 0.02  # initial width of an iteration-time band, relative to its lower end


def _band_milp(problem: Problem, L: int, c: dict[str, np.ndarray], t_lb: np.ndarray,
               t_max: np.ndarray, band: tuple[float, float],
               cutoff: float = np.inf) -> dict[str, object]:
    """The MILP of ``planners.miqp``'s docstring over candidates ``c`` (already pruned), with
    lo <= T <= hi, as scipy.optimize.milp arrays. Variables: x (V), z (V), T, PF, PB, Y."""
    V = len(c["first"])
    lo, hi = band
    t0 = float(max(0.5 * (lo + hi), 1e-9))
    c0 = float(max(np.median(c["rate"] * t_lb + c["req"]), 1e-15))
    cols = np.arange(V)
    start = sp.csr_matrix((np.ones(V), (c["first"], cols)), shape=(L + 1, V))
    end = sp.csr_matrix((np.ones(V), (c["last"] + 1, cols)), shape=(L + 1, V))
    flow = (start - end)[:L].tocsr()
    lens = c["last"] - c["first"] + 1
    rows = np.concatenate([np.arange(a, b + 1) for a, b in zip(c["first"], c["last"], strict=True)])
    cover = sp.csr_matrix((np.ones(len(rows)), (rows, np.repeat(cols, lens))), shape=(L, V))
    O_LV, O_L4 = sp.csr_matrix((L, V)), sp.csr_matrix((L, 4))
    eye4 = np.eye(4)
    ident = sp.identity(V, format="csr")
    cap = np.minimum(t_max, hi) / t0
    low = np.minimum(np.maximum(t_lb, lo), cap * t0) / t0
    rhs = np.zeros(L)
    rhs[0] = 1.0
    blocks = [  # (matrix over [x, z, T, PF, PB, Y], lower, upper)
        (sp.hstack([flow, O_LV, O_L4]), rhs, rhs),  # (1) path
        *[(sp.hstack([-cover @ sp.diags(c[k] / t0), O_LV,
                      sp.csr_matrix(np.tile(eye4[n + 1], (L, 1)))]), 0.0, np.inf)
          for n, k in enumerate(("aF", "aB", "tail"))],  # (2) bottlenecks, one row per layer
        (sp.hstack([sp.csr_matrix(-c["fill"][None, :] / t0), sp.csr_matrix((1, V)),
                    sp.csr_matrix([[1.0, -1.0, -1.0, -1.0]])]), 0.0, np.inf),  # (3) time
        (sp.hstack([O_LV, flow, sp.csr_matrix(-np.outer(rhs, eye4[0]))]), 0.0, 0.0),  # (4) flow
        (sp.hstack([-sp.diags(cap), ident, sp.csr_matrix((V, 4))]), -np.inf, 0.0),  # z <= cap x
        (sp.hstack([-sp.diags(low), ident, sp.csr_matrix((V, 4))]), 0.0, np.inf),  # z >= lb x
        (sp.hstack([-sp.diags(np.full(V, hi / t0)), ident,  # z >= T - hi (1 - x)
                    sp.csr_matrix(np.tile(-eye4[0], (V, 1)))]), -hi / t0, np.inf),
        (sp.hstack([sp.csr_matrix(c["d"][None, :].astype(float)), sp.csr_matrix((1, V + 4))]),
         -np.inf, float(problem.max_functions)),  # (5) functions
    ]
    # (2') level sets of the bottlenecks: u_kt >= [some chosen v has term_k >= theta_t]
    # (one chosen candidate covers each layer), and P_k >= sum_t (theta_t - theta_{t-1}) u_kt.
    level_rows, n_u = [], 0
    for n, k in enumerate(("aF", "aB", "tail")):
        a = c[k] / t0
        base = max(float(a[cover.indices[cover.indptr[l]:cover.indptr[l + 1]]].min())
                   for l in range(L))
        above = np.unique(a[a > base * (1 + 1e-9)])
        if len(above) == 0:
            continue
        thetas = np.concatenate([[base], np.unique(np.quantile(
            above, np.linspace(0.0, 1.0, LEVELS + 1)[:-1], method="lower"))])
        deltas = np.diff(np.concatenate([[0.0], thetas]))
        for t, theta in enumerate(thetas):
            masked = cover @ sp.diags((a >= theta).astype(float))
            level_rows.append((-masked, n_u + t, L))
        level_rows.append((n + 1, (n_u, deltas), 1))
        n_u += len(thetas)
    width = 2 * V + 4
    blocks = [(sp.hstack([blk[0], sp.csr_matrix((blk[0].shape[0], n_u))]), blk[1], blk[2])
              for blk in blocks]
    for row in level_rows:
        if row[2] == L:
            u = sp.csr_matrix((np.ones(L), (np.arange(L), np.full(L, row[1]))), shape=(L, n_u))
            blocks.append((sp.hstack([row[0], sp.csr_matrix((L, V + 4)), u]), 0.0, np.inf))
        else:
            first_u, deltas = row[1]
            r = np.zeros((1, width + n_u))
            r[0, 2 * V + row[0]] = 1.0
            r[0, width + first_u:width + first_u + len(deltas)] = -deltas
            blocks.append((sp.csr_matrix(r), 0.0, np.inf))
    cost = np.concatenate([c["req"] / c0, c["rate"] * t0 / c0, np.zeros(4 + n_u)])
    obj = problem.objective
    if obj.kind == "weighted":
        cost[2 * V] = obj.weight * t0 / c0
        scale = c0
    elif obj.kind == "budget":
        money = cost.copy()
        cost = np.zeros(2 * V + 4 + n_u)
        cost[2 * V] = 1.0
        scale = t0
        if obj.budget is not None:
            blocks.append((sp.csr_matrix(money[None, :]), -np.inf, obj.budget / c0))
    else:
        scale = c0
        hi = min(hi, obj.deadline)
    if np.isfinite(cutoff):  # only plans better than the incumbent
        blocks.append((sp.csr_matrix(cost[None, :]), -np.inf,
                       cutoff / scale + 1e-7 * abs(cutoff / scale)))
    A = sp.vstack([blk[0] for blk in blocks]).tocsr()
    n_rows = [blk[0].shape[0] for blk in blocks]
    lb = np.concatenate([np.broadcast_to(np.asarray(blk[1], float), (n,))
                         for blk, n in zip(blocks, n_rows, strict=True)])
    ub = np.concatenate([np.broadcast_to(np.asarray(blk[2], float), (n,))
                         for blk, n in zip(blocks, n_rows, strict=True)])
    vlb, vub = np.zeros(width + n_u), np.full(width + n_u, np.inf)
    vub[:V] = 1.0
    vub[width:] = 1.0
    vlb[2 * V], vub[2 * V] = lo / t0, hi / t0
    integrality = np.zeros(width + n_u)
    integrality[:V] = 1
    return {"c": cost, "A": A, "lb": lb, "ub": ub, "vlb": vlb, "vub": vub,
            "integrality": integrality, "scale": scale, "V": V}


def _solve_band(m: dict[str, object], time_limit: float,
                relax: bool = False) -> tuple[str, np.ndarray | None, float]:
    """(status, x or None, dual bound in objective units) of one band MILP on HiGHS."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    res = milp(m["c"], constraints=LinearConstraint(m["A"], m["lb"], m["ub"]),
               bounds=Bounds(m["vlb"], m["vub"]),
               integrality=0 * m["integrality"] if relax else m["integrality"],
               options={"time_limit": max(time_limit, 0.05), "mip_rel_gap": 1e-7,
                        "disp": False})
    scale = m["scale"]
    if res.status == 2:  # infeasible: no plan in this band beats the incumbent
        return "infeasible", None, np.inf
    bound = getattr(res, "mip_dual_bound", None)
    bound = -np.inf if bound is None or not np.isfinite(bound) else bound * scale
    if res.x is None:
        return "timeout", None, bound
    x = res.x[:m["V"]]
    if res.status == 0:
        return "optimal", x, res.fun * scale
    return "feasible", x, min(bound, res.fun * scale)


def _solve_lp(m: dict[str, object], time_limit: float) -> tuple:
    """LP relaxation of a band MILP: (value in objective units, reduced cost of every x_v in
    objective units, x); value inf when infeasible, -inf (and None) when unsolved. Any plan with
    x_v = 1 is worth at least value + r_v (LP duality), which fixes candidates to 0."""
    from scipy.optimize import linprog

    A, lb, ub = m["A"], m["lb"], m["ub"]
    eq = lb == ub
    up = ~eq & np.isfinite(ub)
    down = ~eq & np.isfinite(lb)
    res = linprog(m["c"], A_ub=sp.vstack([A[up], -A[down]]), b_ub=np.concatenate(
        [ub[up], -lb[down]]), A_eq=A[eq], b_eq=lb[eq], bounds=np.stack(
        [m["vlb"], m["vub"]], axis=1), method="highs",
        options={"time_limit": max(time_limit, 0.05)})
    if res.status == 2:
        return np.inf, None, None
    if res.status != 0:
        return -np.inf, None, None
    return (res.fun * m["scale"], np.asarray(res.lower.marginals[:m["V"]]) * m["scale"],
            res.x[:m["V"]])


def _to_plan(problem: Problem, b: int, chosen: list[Candidate]) -> Plan:
    stages = tuple(StagePlan(k.first, k.last, k.memory_mb, k.replicas, k.mode)
                   for k in sorted(chosen, key=lambda k: k.first))
    return score(Plan(stages, b, problem.global_batch, "funcpipe"), problem)


def _boxed(c: dict[str, np.ndarray], box: tuple[float, ...]) -> tuple[np.ndarray, dict]:
    """Candidates allowed in a bottleneck box, with each term raised to the box's lower end:
    a plan's P^F is max(PF_lo, max_v aF_v) inside the box, so aF_v -> max(aF_v, PF_lo) is
    exact there (likewise P^B, Y); candidates above a box's upper end are removed."""
    keep = np.ones(len(c["first"]), bool)
    for k, name in enumerate(_TERMS):
        keep &= c[name] <= box[2 * k + 1]
    idx = np.flatnonzero(keep)
    sub = {k: v[idx] for k, v in c.items()}
    for k, name in enumerate(_TERMS):
        sub[name] = np.maximum(sub[name], box[2 * k])
    return idx, sub


def _split(lo: float, hi: float, box: tuple[float, ...], sub: dict[str, np.ndarray],
           ) -> list[tuple]:
    """Children covering a band whose MILP did not finish: halve T if the band is wide, else
    halve the widest bottleneck range [lo_k, max_v term_v] of the box (P^F, P^B or Y)."""
    if hi - lo > SPLIT * hi:
        mid = 0.5 * (lo + hi)
        return [(lo, mid, box), (mid, hi, box)]
    widths = [float(sub[name].max()) - box[2 * k] for k, name in enumerate(_TERMS)]
    k = int(np.argmax(widths))
    if widths[k] <= 1e-6 * max(hi, 1e-9):
        return []
    mid = box[2 * k] + 0.5 * widths[k]
    below, above = list(box), list(box)
    below[2 * k + 1], above[2 * k] = mid, mid
    below[6] = above[6] = frozenset()  # reduced costs were for the parent only
    return [(lo, hi, tuple(below)), (lo, hi, tuple(above))]


def _plan_bands(problem: Problem, time_limit: float, best: Plan | None,
                ) -> tuple[Plan | None, float, list[dict[str, object]]]:
    """Best-first search over (micro-batch, time band) MILPs. Returns (best plan, proven
    lower bound on the optimum, log)."""
    L = problem.profile.num_layers
    t_end = time.perf_counter() + time_limit * len(problem.valid_micro_batches)
    inc = (best.iteration_seconds, best.iteration_dollars) if best is not None else None
    data, heap, log = {}, [], []
    stats = {"bands": 0, "heuristic": 0, "pruned": 0, "lps": 0, "milps": 0, "split": 0, "lp_seconds": 0.0,
             "milp_seconds": 0.0}

    def value() -> float:
        return best.objective_value if best is not None else np.inf

    for b in problem.valid_micro_batches:
        cands = candidates(problem, b)
        entry: dict[str, object] = {"micro_batch": b, "candidates": len(cands)}
        log.append(entry)
        if not cands:
            continue
        c = _data(problem, cands)
        idx, t_lb, t_max = _prune(problem, L, c, inc, None)
        entry["after_bounds"] = len(idx)
        if len(idx) == 0:
            continue
        data[b] = (cands, c)
        lo, hi = float(t_lb.min()), float(t_max[np.isfinite(t_max)].max(initial=t_lb.max()))
        hi = max(hi, lo)
        edges = [lo]
        while edges[-1] < hi * (1 - 1e-12):
            edges.append(min(edges[-1] * (1 + BAND) if edges[-1] > 0 else hi, hi))
        if len(edges) == 1:
            edges.append(lo)
        entry["bands"] = len(edges) - 1
        for a, z in itertools.pairwise(edges):
            heapq.heappush(heap, (-np.inf, 0, b, a, z, LIMIT, BOX))
    while heap:
        bound, stage, b, lo, hi, limit, box = heap[0]
        if bound >= value() - 1e-9 * abs(value()):
            break  # every remaining band is bounded by the incumbent
        if time.perf_counter() > t_end:
            break
        heapq.heappop(heap)
        cands, c = data[b]
        idx0, c_box = _boxed(c, box)
        if box[6]:  # candidates fixed to 0 by reduced costs in this band
            free = np.array([i not in box[6] for i in idx0], bool)
            idx0, c_box = idx0[free], {k: v[free] for k, v in c_box.items()}
        idx, t_lb, t_max = _prune(problem, L, c_box, inc, (lo, hi))
        sub = {k: v[idx] for k, v in c_box.items()}
        idx = idx0[idx]
        if stage == 0:
            stats["bands"] += 1
            if len(idx) == 0:
                stats["pruned"] += 1
                continue
            for path in _lagrange_plans(problem, L, sub, lo):
                plan = _to_plan(problem, b, [cands[idx[k]] for k in path])
                stats["heuristic"] += 1
                if plan.objective_value < value():
                    best, inc = plan, (plan.iteration_seconds, plan.iteration_dollars)
            new = max(bound, _band_bound(problem, L, sub, t_lb, (lo, hi)))
            heapq.heappush(heap, (new, 1, b, lo, hi, limit, box))
            continue
        if len(idx) == 0:
            continue
        m = _band_milp(problem, L, sub, t_lb, t_max, (lo, hi), value())
        if stage == 1:
            t = time.perf_counter()
            lp, reduced, x_lp = _solve_lp(m, t_end - t)
            stats["lps"] += 1
            stats["lp_seconds"] += time.perf_counter() - t
            if x_lp is not None:  # LP rounding: cheapest path with -log x_v as weight
                path = _shortest_path(L, sub["first"], sub["last"],
                                      -np.log(np.clip(x_lp, 1e-9, 1.0)))
                if path and sub["d"][path].sum() <= problem.max_functions:
                    plan = _to_plan(problem, b, [cands[idx[k]] for k in path])
                    stats["heuristic"] += 1
                    if plan.objective_value < value():
                        best, inc = plan, (plan.iteration_seconds, plan.iteration_dollars)
            if lp >= value() - 1e-9 * abs(value()):
                continue
            if reduced is not None:  # reduced-cost fixing: drop v with lp + r_v > incumbent
                fixed = idx[lp + reduced > value() + 1e-7 * abs(value())]
                box = (*box[:6], frozenset(fixed.tolist()) | box[6])
            heapq.heappush(heap, (max(bound, lp), 2, b, lo, hi, limit, box))
            continue
        t = time.perf_counter()
        status, x, dual = _solve_band(m, min(limit, t_end - t))
        stats["milps"] += 1
        stats["milp_seconds"] += time.perf_counter() - t
        if x is not None:
            plan = _to_plan(problem, b, [cands[i] for i, v in zip(idx, x, strict=True)
                                         if v > 0.5])
            if plan.objective_value < value():
                best = plan
                inc = (plan.iteration_seconds, plan.iteration_dollars)
        if status in ("optimal", "infeasible"):
            continue
        bound = max(bound, dual)
        stats["split"] += 1
        children = _split(lo, hi, box, sub)
        for c_lo, c_hi, c_box in children:
            heapq.heappush(heap, (bound, 0, b, c_lo, c_hi, limit, c_box))
        if not children:  # nothing left to split: more time
            heapq.heappush(heap, (bound, 2, b, lo, hi, 2 * limit, box))
    lower = np.inf
    for bound, _, b, lo, hi, _, box in heap:  # time is up: bound the unexamined bands cheaply
        if bound == -np.inf and lower > -np.inf:
            idx0, c_box = _boxed(data[b][1], box)
            idx, t_lb, _ = _prune(problem, L, c_box, inc, (lo, hi))
            sub = {k: v[idx] for k, v in c_box.items()}
            bound = _band_bound(problem, L, sub, t_lb, (lo, hi)) if len(idx) else np.inf
        lower = min(lower, bound)
    log.append(stats)
    return best, lower, log
