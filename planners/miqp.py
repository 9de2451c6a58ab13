"""FuncPipe's planner: the joint choice of cuts, memory, replicas and micro-batch, solved exactly.

Formulation (written out with its reasoning in planners/README.md). For a fixed micro-batch size
b the plan is a path through the layer chain 0 -> L whose edges are stage candidates v = (layers
i_v..j_v, memory m_v, replicas d_v, mode) from ``planners.candidates``:

  x_v in {0,1}     candidate v is a stage                                    (paper: x, y, q)
  T >= 0           iteration time, s                                         (paper: T)
  PF, PB, Y >= 0   forward / backward bottleneck and sync+update terms, s    (paper: P^F, P^B, Y)
  z_v >= 0         z_v = T * x_v, the time each chosen stage is billed, s

  (1) path:        sum_{v: i_v = 0} x_v = 1;  sum_{i_v = k} x_v = sum_{j_v + 1 = k} x_v, 0<k<L
  (2) bottleneck:  PF >= sum_{v covers l} (n_v - 1) tauF_v x_v   for every layer l   (also PB, Y)
  (3) time:        T >= sum_v fill_v x_v + PF + PB + Y
  (4) billing:     z is a flow of value T on the same path (constraints (1) times T) and
                   z_v <= Tmax_v x_v; at integral x this forces z_v = T x_v exactly
  (5) functions:   sum_v d_v x_v <= max_functions
  cost = sum_v (price_gb_s * d_v m_v / 1024 + price_inv * d_v / timeout) z_v + sum_v req_v x_v

so the bilinear cost T * sum(d m) of the MIQP becomes linear without losing exactness; memory
limits are enforced by which candidates exist. An outer loop over b keeps the whole search
exact; each MILP is solved by HiGHS to a relative gap of 1e-7.

Solving (default, ``bands=True``): best-first search over (b, iteration-time band lo <= T <= hi)
MILPs, each with (2') bottleneck level-set cuts and an incumbent cutoff, after bound, Lagrangian
and reduced-cost pruning; undecided bands split in T, then in the bottleneck box
(P^F, P^B, Y <= or >= a threshold). ``bands=False`` solves one cvxpy MILP per b instead.
The exactness argument for every pruning rule is in planners/README.md.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, replace

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from planners.candidates import Candidate, candidates, explain_infeasible
from planners.cost import score
from planners.errors import InfeasibleError
from planners.plan import Plan, StagePlan
from planners.problem import Problem

__all__ = ["Milp", "build", "plan_miqp", "solve"]


@dataclass
class Milp:
    """A built MILP for one micro-batch size: the cvxpy problem, its variables and data."""

    micro_batch: int
    cands: list[Candidate]
    problem: cp.Problem
    x: cp.Variable
    T: cp.Variable
    time_scale: float  # seconds per unit of T
    money_scale: float  # currency per unit of cost
    objective_scale: float  # objective units -> problem objective value


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
        "rate": np.array([plat.price_gb_second * x.gigabytes
                          + plat.price_invocation * x.replicas / plat.timeout_s for x in t]),
        "req": np.array([plat.price_put * x.puts + plat.price_get * x.gets for x in t]),
    }


def build(problem: Problem, micro_batch: int, cands: list[Candidate],
          incumbent: tuple[float, float] | None = None, relax: bool = False) -> Milp | None:
    """Build the MILP for ``micro_batch`` over ``cands``; None when bounds leave no candidate.

    ``incumbent`` is (seconds, dollars) of a known feasible plan: candidates that cannot be part
    of a better plan are dropped and the billing bounds Tmax_v are tightened accordingly.
    """
    L = problem.profile.num_layers
    while True:  # bound, prune, repeat until no candidate is dropped
        if not cands:
            return None
        c = _data(problem, cands)
        t_lb, t_max = _time_caps(problem, L, c, incumbent)
        keep = np.isfinite(t_lb) & (t_lb <= t_max * (1 + 1e-9) + 1e-12)
        if keep.all():
            break
        cands = [cand for cand, k in zip(cands, keep, strict=True) if k]
    V = len(cands)
    # --- scaling: keep every coefficient near 1 for the solver's absolute tolerances
    t0 = float(max(np.median(t_lb), 1e-9))
    c0 = float(max(np.median(c["rate"] * t_lb + c["req"]), 1e-15))
    # --- data: incidence of candidates on chain nodes and on layers
    cols = np.arange(V)
    start = sp.csr_matrix((np.ones(V), (c["first"], cols)), shape=(L + 1, V))
    end = sp.csr_matrix((np.ones(V), (c["last"] + 1, cols)), shape=(L + 1, V))
    flow = (start - end)[:L]  # row 0: leaves the source; rows 1..L-1: conservation
    rhs = np.zeros(L)
    rhs[0] = 1.0
    lens = c["last"] - c["first"] + 1
    rows = np.concatenate([np.arange(a, b + 1) for a, b in zip(c["first"], c["last"], strict=True)])
    cover = sp.csr_matrix((np.ones(len(rows)), (rows, np.repeat(cols, lens))), shape=(L, V))
    # --- variables (paper symbols)
    x = cp.Variable(V, boolean=not relax, name="x")
    z = cp.Variable(V, nonneg=True, name="z")
    T, PF, PB, Y = (cp.Variable(nonneg=True, name=n) for n in ("T", "PF", "PB", "Y"))
    cap = np.minimum(t_max, 1e6 * t0) / t0
    rate = (c["rate"] * t0 / c0)
    cons = [
        flow @ x == rhs,  # (1) path
        PF >= cover @ sp.diags(c["aF"] / t0) @ x,  # (2) bottlenecks, one row per layer
        PB >= cover @ sp.diags(c["aB"] / t0) @ x,
        Y >= cover @ sp.diags(c["tail"] / t0) @ x,
        T >= (c["fill"] / t0) @ x + PF + PB + Y,  # (3) time
        (flow @ z)[0] == T,  # (4) billing flow of value T
        (flow @ z)[1:] == 0,
        z <= cp.multiply(cap, x),
        z >= cp.multiply(np.minimum(t_lb / t0, cap), x),  # z_v = T x_v >= T_lb_v x_v
        c["d"] @ x <= problem.max_functions,  # (5) functions
    ]
    if relax:
        cons += [x >= 0, x <= 1]  # cons[-2].dual_value: reduced cost of x at its lower bound
    cost = rate @ z + (c["req"] / c0) @ x
    obj = problem.objective
    if obj.kind == "weighted":
        objective, scale = cost + (obj.weight * t0 / c0) * T, c0
    elif obj.kind == "budget":
        objective, scale = T, t0
        if obj.budget is not None:
            cons.append(cost <= obj.budget / c0)
    else:
        objective, scale = cost, c0
        cons.append(T <= obj.deadline / t0)
    return Milp(micro_batch, cands, cp.Problem(cp.Minimize(objective), cons), x, T, t0, c0,
                scale)


def solve(milp: Milp, time_limit: float = 60.0) -> dict[str, object]:
    """Solve with HiGHS; returns status, chosen candidates, objective and dual bound."""
    t = time.perf_counter()
    milp.problem.solve(solver=cp.HIGHS, time_limit=time_limit, mip_rel_gap=1e-7,
                       threads=1, output_flag=False)
    seconds = time.perf_counter() - t
    info = milp.problem.solver_stats.extra_stats
    status = milp.problem.status
    has_solution = getattr(info, "primal_solution_status", 2) == 2  # kSolutionStatusFeasible
    if milp.x.value is None or not has_solution or status in (cp.INFEASIBLE,
                                                              cp.INFEASIBLE_INACCURATE):
        timed_out = status not in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE)
        dual = getattr(info, "mip_dual_bound", -np.inf) if timed_out else np.inf
        return {"status": "timeout" if timed_out else "infeasible", "seconds": seconds,
                "chosen": None, "objective": None, "bound": dual * milp.objective_scale}
    chosen = sorted((c for c, v in zip(milp.cands, milp.x.value, strict=True) if v > 0.5),
                    key=lambda c: c.first)
    bound = getattr(info, "mip_dual_bound", milp.problem.value) * milp.objective_scale
    return {"status": "optimal" if status == cp.OPTIMAL else "feasible", "seconds": seconds,
            "chosen": chosen, "objective": milp.problem.value * milp.objective_scale,
            "bound": min(bound, milp.problem.value * milp.objective_scale),
            "variables": len(milp.cands)}


def plan_miqp(problem: Problem, time_limit: float = 60.0, incumbent: Plan | None = None,
              bands: bool = True) -> Plan:
    """Optimal plan over every micro-batch size (FuncPipe's MIQP, linearised exactly).

    Args:
      problem: the request; its schedule must be ``funcpipe``.
      time_limit: s per micro-batch size: the band search stops after time_limit times the
        number of micro-batch sizes, the single MILP gives HiGHS time_limit per size; on expiry
        the plan is ``feasible`` and ``gap`` holds the proven relative gap.
      incumbent: a feasible plan (e.g. from a heuristic) used to prune and bound.
      bands: search iteration-time bands (default); False solves one cvxpy MILP per size.

    Raises:
      InfeasibleError: no plan satisfies memory, functions, budget or deadline; says which.
    """
    t_start = time.perf_counter()
    if incumbent is None:
        incumbent = _heuristic_incumbent(problem)
    if bands:
        best, lower, log = _plan_bands(problem, time_limit, incumbent)
        if best is None:
            raise _objective_infeasible(problem, time_limit)
        value = best.objective_value
        gap = 0.0 if lower >= value * (1 - 1e-7) else float(
            (value - lower) / max(abs(value), 1e-300))
        return score(best, problem, method="miqp", solve_seconds=time.perf_counter() - t_start,
                     gap=gap, status="optimal" if gap <= 1e-6 else "feasible",
                     meta={"milps": log, "incumbent": getattr(incumbent, "method", None)})
    inc = (incumbent.iteration_seconds, incumbent.iteration_dollars) if incumbent else None
    best: Plan | None = incumbent
    lower, log = np.inf, []
    order = sorted(problem.valid_micro_batches, key=lambda b: b != getattr(best, "micro_batch", 0))
    for b in order:
        cands = candidates(problem, b)
        entry: dict[str, object] = {"micro_batch": b, "candidates": len(cands)}
        log.append(entry)
        z_lp = -np.inf
        if inc is not None and cands:
            cands, z_lp = reduce(problem, b, cands, inc)
            entry["lp_bound"] = z_lp
            if not cands or z_lp >= best.objective_value * (1 - 1e-9):
                entry["status"] = "pruned by LP bound"
                lower = min(lower, z_lp)
                continue
        milp = build(problem, b, cands, inc)
        if milp is None:
            entry["status"] = "pruned by bounds"
            continue
        res = solve(milp, time_limit)
        entry.update(status=res["status"], variables=len(milp.cands),
                     seconds=round(res["seconds"], 4))
        lower = min(lower, max(res["bound"], z_lp))  # the LP bound holds when HiGHS has none
        if res["chosen"] is None:
            continue
        stages = tuple(StagePlan(c.first, c.last, c.memory_mb, c.replicas, c.mode)
                       for c in res["chosen"])
        plan = score(Plan(stages, b, problem.global_batch, "funcpipe"), problem)
        if best is None or plan.objective_value < best.objective_value:
            best = plan
            inc = (plan.iteration_seconds, plan.iteration_dollars)
    if best is None:
        raise _objective_infeasible(problem, time_limit)
    value = best.objective_value
    gap = 0.0 if lower >= value * (1 - 1e-7) else float((value - lower) / max(abs(value), 1e-300))
    status = "optimal" if gap <= 1e-6 else "feasible"
    return score(best, problem, method="miqp", solve_seconds=time.perf_counter() - t_start,
                 gap=gap, status=status, meta={"milps": log, "incumbent": getattr(
                     incumbent, "method", None)})


def _heuristic_incumbent(problem: Problem) -> Plan | None:
    """Best of the fast rivals, used to prune; None when none finds a feasible plan."""
    from planners.partition import plan_balanced, plan_uniform

    plans = []
    for rival in (plan_balanced, plan_uniform):  # pipedream costs seconds and rarely helps
        try:
            plans.append(rival(problem))
        except InfeasibleError:
            pass
    plans = [p for p in plans if p.objective_value is not None and np.isfinite(
        p.objective_value)]
    return min(plans, key=lambda p: p.objective_value) if plans else None


def _objective_infeasible(problem: Problem, time_limit: float) -> InfeasibleError:
    obj = problem.objective
    if obj.kind == "deadline":
        fastest = plan_miqp(replace(problem, objective=type(obj)("budget")), time_limit)
        return InfeasibleError(
            f"no plan meets the deadline of {obj.deadline:g} s per iteration; the fastest plan "
            f"takes {fastest.iteration_seconds:.4g} s; fix: raise the deadline to at least that")
    if obj.kind == "budget":
        cheapest = plan_miqp(replace(problem, objective=type(obj)("weighted", weight=0.0)),
                             time_limit)
        return InfeasibleError(
            f"no plan costs at most the budget of {obj.budget:g} per iteration; the cheapest "
            f"plan costs {cheapest.iteration_dollars:.4g}; fix: raise the budget to at least that")
    return explain_infeasible(problem)


def reduce(problem: Problem, micro_batch: int, cands: list[Candidate],
           incumbent: tuple[float, float]) -> tuple[list[Candidate], float]:
    """Reduced-cost fixing: drop candidates no plan better than ``incumbent`` can use.

    Solves the LP relaxation (bound z_LP) and reads the reduced cost r_v of every x_v from the
    dual of x >= 0. Any plan with x_v = 1 has objective >= z_LP + r_v (LP duality), so v is
    dropped when that exceeds the incumbent's objective. Returns (kept, z_LP in objective units).
    """
    milp = build(problem, micro_batch, cands, incumbent, relax=True)
    if milp is None:
        return [], np.inf
    milp.problem.solve(solver=cp.HIGHS, threads=1, output_flag=False)
    if milp.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        return ([], np.inf) if milp.problem.status == cp.INFEASIBLE else (milp.cands, -np.inf)
    z_lp = milp.problem.value
    reduced = np.asarray(milp.problem.constraints[-2].dual_value).reshape(-1)
    limit = problem.objective.value(*incumbent) / milp.objective_scale
    slack = 1e-6 * max(abs(limit), 1.0)
    kept = [c for c, r in zip(milp.cands, reduced, strict=True) if z_lp + r <= limit + slack]
    return kept, z_lp * milp.objective_scale


# ---------------------------------------------------------------------------------------------
# Band search: the same MILP restricted to iteration-time bands lo <= T <= hi (the default).


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


def _band_milp(problem: Problem, L: int, c: dict[str, np.ndarray], t_lb: np.ndarray,
               t_max: np.ndarray, band: tuple[float, float],
               cutoff: float = np.inf) -> dict[str, object]:
    """The MILP of the module docstring over candidates ``c`` (already pruned), with
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


def _to_plan(problem: Problem, b: int, chosen: list[Candidate]) -> Plan:
    stages = tuple(StagePlan(k.first, k.last, k.memory_mb, k.replicas, k.mode)
                   for k in sorted(chosen, key=lambda k: k.first))
    return score(Plan(stages, b, problem.global_batch, "funcpipe"), problem)


SPLIT = 0.004  # bands narrower than this (relative) get more time instead of a split
BOX = (0.0, np.inf, 0.0, np.inf, 0.0, np.inf, frozenset())
# (PF_lo, PF_hi, PB_lo, PB_hi, Y_lo, Y_hi, candidates fixed to 0)
_TERMS = ("aF", "aB", "tail")


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


LIMIT = 4.0  # first HiGHS time limit of a band MILP, s (doubled when a band cannot split)
LEVELS = 6  # bottleneck levels per term in constraint (2')
BAND = 0.02  # initial width of an iteration-time band, relative to its lower end


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
