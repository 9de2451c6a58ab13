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

Two solvers share this formulation. The default (``bands=True``, ``planners.bands``) searches
(b, iteration-time band lo <= T <= hi) MILPs best-first on HiGHS through scipy, after bound,
Lagrangian and reduced-cost pruning (``planners.bounds``). ``bands=False`` solves one cvxpy MILP
per b over all candidates (``build``, ``solve``, ``reduce`` here). cvxpy is imported only inside
those three functions: it costs seconds and every JaxPipe worker imports ``planners``.
The exactness argument for every pruning rule is in planners/README.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from planners._scipy import diags
from planners.band_milp import incidence
from planners.bands import plan_bands
from planners.bounds import Incumbent, candidate_arrays, time_caps
from planners.candidates import Candidate, candidates
from planners.cost import plan_terms, score
from planners.diagnosis import explain_infeasible, structural_infeasibility
from planners.errors import InfeasibleError, PlanError, TimeLimitError
from planners.plans import Plan, StagePlan
from planners.problem import REL_TOL, Objective, Problem

if TYPE_CHECKING:
    import cvxpy as cp
    from cvxpy.constraints.constraint import Constraint

__all__ = ["Milp", "MilpResult", "build", "plan_miqp", "reduce", "solve"]


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


@dataclass(frozen=True)
class MilpResult:
    """What ``solve`` found.

    Attributes:
      status: ``optimal``, ``feasible`` (time limit, with a plan), ``timeout`` (no plan) or
        ``infeasible``.
      seconds: HiGHS wall time, s.
      chosen: the chosen candidates in layer order (None without a plan).
      objective: the plan's objective value (None without a plan).
      bound: proven lower bound on the objective (inf when infeasible).
      variables: candidates (x variables) in the MILP.
    """

    status: str
    seconds: float
    chosen: list[Candidate] | None
    objective: float | None
    bound: float
    variables: int


def build(problem: Problem, micro_batch: int, cands: list[Candidate],
          incumbent: Incumbent | None = None, relax: bool = False) -> Milp | None:
    """Build the MILP for ``micro_batch`` over ``cands``; None when bounds leave no candidate.

    ``incumbent`` is (seconds, dollars) of a known feasible plan: candidates that cannot be part
    of a better plan are dropped and the billing bounds Tmax_v are tightened accordingly.
    """
    import cvxpy as cp

    L = problem.profile.num_layers
    while True:  # bound, prune, repeat until no candidate is dropped
        if not cands:
            return None
        c = candidate_arrays(problem, cands)
        t_lb, t_max = time_caps(problem, L, c, incumbent)
        keep = np.isfinite(t_lb) & (t_lb <= t_max * (1 + 1e-9) + 1e-12)
        if keep.all():
            break
        cands = [cand for cand, k in zip(cands, keep, strict=True) if k]
    V = len(cands)
    # --- scaling: keep every coefficient near 1 for the solver's absolute tolerances
    t0 = float(max(np.median(t_lb), 1e-9))
    c0 = float(max(np.median(c.rate * t_lb + c.req), 1e-15))
    # --- data: incidence of candidates on chain nodes (flow) and on layers (cover)
    flow, cover = incidence(L, c)
    rhs = np.zeros(L)
    rhs[0] = 1.0
    # --- variables (paper symbols)
    x = cp.Variable(V, boolean=not relax, name="x")
    z = cp.Variable(V, nonneg=True, name="z")
    T, PF, PB, Y = (cp.Variable(nonneg=True, name=n) for n in ("T", "PF", "PB", "Y"))
    cap = np.minimum(t_max, 1e6 * t0) / t0
    rate = (c.rate * t0 / c0)
    cons: list[Constraint] = [
        flow @ x == rhs,  # (1) path
        PF >= cover @ diags(c.a_fwd / t0) @ x,  # (2) bottlenecks, one row per layer
        PB >= cover @ diags(c.a_bwd / t0) @ x,
        Y >= cover @ diags(c.tail / t0) @ x,
        T >= (c.fill / t0) @ x + PF + PB + Y,  # (3) time
        (flow @ z)[0] == T,  # (4) billing flow of value T
        (flow @ z)[1:] == 0,
        z <= cp.multiply(cap, x),
        z >= cp.multiply(np.minimum(t_lb / t0, cap), x),  # z_v = T x_v >= T_lb_v x_v
        c.replicas @ x <= problem.max_functions,  # (5) functions
    ]
    if relax:
        cons += [x >= 0, x <= 1]  # cons[-2].dual_value: reduced cost of x at its lower bound
    cost = rate @ z + (c.req / c0) @ x
    obj = problem.objective
    if obj.kind == "weighted":
        objective, scale = cost + (obj.weight * t0 / c0) * T, c0
    elif obj.kind == "budget":
        objective, scale = T, t0
        if obj.budget is not None:
            cons.append(cost <= obj.budget_limit / c0)
    else:
        objective, scale = cost, c0
        cons.append(T <= obj.deadline_limit / t0)
    return Milp(micro_batch, cands, cp.Problem(cp.Minimize(objective), cons), x, T, t0, c0,
                scale)


def solve(milp: Milp, time_limit: float = 60.0) -> MilpResult:
    """Solve with HiGHS within ``time_limit`` seconds."""
    import cvxpy as cp

    t = time.perf_counter()
    value = _solve_on_highs(milp.problem, time_limit=time_limit, mip_rel_gap=1e-7, threads=1,
                            output_flag=False)
    seconds = time.perf_counter() - t
    stats: Any = milp.problem.solver_stats
    info: Any = stats.extra_stats
    status = milp.problem.status
    has_solution = getattr(info, "primal_solution_status", 2) == 2  # kSolutionStatusFeasible
    if milp.x.value is None or not has_solution or status in (cp.INFEASIBLE,
                                                              cp.INFEASIBLE_INACCURATE):
        timed_out = status not in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE)
        dual = getattr(info, "mip_dual_bound", -np.inf) if timed_out else np.inf
        return MilpResult("timeout" if timed_out else "infeasible", seconds, None, None,
                          dual * milp.objective_scale, len(milp.cands))
    chosen = sorted((c for c, v in zip(milp.cands, milp.x.value, strict=True) if v > 0.5),
                    key=lambda c: c.first)
    bound = getattr(info, "mip_dual_bound", value) * milp.objective_scale
    return MilpResult("optimal" if status == cp.OPTIMAL else "feasible", seconds, chosen,
                      value * milp.objective_scale,
                      min(bound, value * milp.objective_scale), len(milp.cands))


def _solve_on_highs(problem: cp.Problem, **options: float | bool) -> float:
    """Run HiGHS on a cvxpy problem; returns its objective value (nan when it has none).

    cvxpy leaves ``Problem.solve`` and ``Problem.value`` unannotated; this is their one use."""
    import cvxpy as cp

    problem.solve(solver=cp.HIGHS, **options)  # pyright: ignore[reportUnknownMemberType]
    value = cast(float | None, problem.value)  # pyright: ignore[reportUnknownMemberType]
    return math.nan if value is None else float(value)


def plan_miqp(problem: Problem, time_limit: float = 60.0, incumbent: Plan | None = None,
              bands: bool = True, dp: bool = True) -> Plan:
    """Optimal plan over every micro-batch size (FuncPipe's MIQP, linearised exactly).

    Args:
      problem: the request. ``schedule="any"`` searches FuncPipe's order and 1F1B together
        (1F1B on the expanded chain of ``planners.grid_1f1b``), so a one-stage plan that
        accumulates gradients is in the search space; the single MILP (``bands=False``) models
        FuncPipe's order only.
      time_limit: s per micro-batch size: the band search stops after time_limit times the
        number of micro-batch sizes, the single MILP gives HiGHS time_limit per size; on expiry
        the plan is ``feasible`` and ``gap`` holds the proven relative gap.
      incumbent: a feasible plan (e.g. from a heuristic) used to prune and bound.
      bands: search iteration-time bands (default); False solves one cvxpy MILP per size.
      dp: solve each band by dynamic programming over the chain (default; ``planners.band_dp``,
        its LP and MILP only when its labels grow too many); False: by its LP and MILP, the
        stated model, kept as the cross-check.

    Raises:
      InfeasibleError: no plan satisfies memory, functions, budget or deadline (proven); says
        which, and quotes the fastest (cheapest) plan only when that is proven too.
      TimeLimitError: the time limit ran out before any feasible plan was found.
    """
    t_start = time.perf_counter()
    if not bands and problem.schedules != ("funcpipe",):
        raise PlanError(f"miqp with bands=False models the 'funcpipe' schedule only, not "
                        f"{problem.schedule!r}; use the band search (bands=True)")
    if incumbent is None:
        incumbent = _heuristic_incumbent(problem)
    if bands:
        best, lower, log, complete = plan_bands(problem, time_limit, incumbent, dp)
    else:
        best, lower, log, complete = _plan_single_milps(problem, time_limit, incumbent)
    if best is None:
        if not complete:
            raise TimeLimitError(
                f"miqp: the time limit of {time_limit:g} s per micro-batch size ran out after "
                f"{time.perf_counter() - t_start:.1f} s before any plan meeting "
                f"'{problem.objective.describe()}' was found or its infeasibility proven; fix: "
                "raise time_limit, coarsen the profile, or relax the budget or deadline")
        raise _objective_infeasible(problem, time_limit)
    gap = _gap(best.objective_or_inf, lower)
    return score(best, problem, method="miqp", solve_seconds=time.perf_counter() - t_start,
                 gap=gap, status="optimal" if gap <= 1e-6 else "feasible",
                 meta={"milps": log, "incumbent": getattr(incumbent, "method", None)})


def _gap(value: float, lower: float) -> float:
    """Proven relative gap of a plan worth ``value`` when every plan is worth >= ``lower``."""
    if lower >= value * (1 - 1e-7):
        return 0.0
    return float((value - lower) / max(abs(value), 1e-300))


def _plan_single_milps(problem: Problem, time_limit: float, incumbent: Plan | None,
                       ) -> tuple[Plan | None, float, list[dict[str, object]], bool]:
    """One cvxpy MILP per micro-batch size (the incumbent's first), after LP reduced-cost
    fixing. Returns (best plan, proven lower bound on the optimum, log, whether every MILP
    finished)."""
    inc = _incumbent_of(incumbent)
    best = incumbent
    lower = np.inf
    complete = True
    log: list[dict[str, object]] = []
    first = best.micro_batch if best is not None else 0
    for b in sorted(problem.valid_micro_batches, key=lambda b: b != first):
        cands = candidates(problem, b)
        entry: dict[str, object] = {"micro_batch": b, "candidates": len(cands)}
        log.append(entry)
        z_lp = -np.inf
        if inc is not None and best is not None and cands:
            cands, z_lp = reduce(problem, b, cands, inc)
            entry["lp_bound"] = z_lp
            if not cands or z_lp >= best.objective_or_inf * (1 - 1e-9):
                entry["status"] = "pruned by LP bound"
                lower = min(lower, z_lp)
                continue
        milp = build(problem, b, cands, inc)
        if milp is None:
            entry["status"] = "pruned by bounds"
            continue
        res = solve(milp, time_limit)
        entry.update(status=res.status, variables=len(milp.cands), seconds=round(res.seconds, 4))
        lower = min(lower, max(res.bound, z_lp))  # the LP bound holds when HiGHS has none
        complete &= res.status in ("optimal", "infeasible")
        if res.chosen is None:
            continue
        stages = tuple(StagePlan(c.first, c.last, c.memory_mb, c.replicas, c.mode)
                       for c in res.chosen)
        plan = score(Plan(stages, b, problem.global_batch, "funcpipe"), problem)
        if best is None or plan.objective_or_inf < best.objective_or_inf:
            best = plan
            inc = _incumbent_of(plan)
    return best, lower, log, complete


def _incumbent_of(plan: Plan | None) -> Incumbent | None:
    if plan is None or plan.iteration_seconds is None or plan.iteration_dollars is None:
        return None
    return Incumbent(plan.iteration_seconds, plan.iteration_dollars)


def _heuristic_incumbent(problem: Problem) -> Plan | None:
    """Best of the fast rivals, used to prune; None when none finds a feasible plan."""
    from planners.partition import plan_balanced, plan_uniform

    plans: list[Plan] = []
    for rival in (plan_balanced, plan_uniform):  # pipedream costs seconds and rarely helps
        try:
            plans.append(rival(problem))
        except InfeasibleError:
            pass
    plans = [p for p in plans if np.isfinite(p.objective_or_inf)]
    return min(plans, key=lambda p: p.objective_or_inf) if plans else None


def _objective_infeasible(problem: Problem, time_limit: float) -> InfeasibleError:
    """Why a finished search found no plan: a structural limit (memory, replicas, functions),
    else the budget or deadline, quoting the cheapest or fastest plan when that is proven."""
    structural = structural_infeasibility(problem)
    obj = problem.objective
    if structural is not None:
        return structural
    if obj.kind == "weighted" or (obj.kind == "budget" and obj.budget is None):
        return _lifetime_infeasibility(problem, time_limit) or explain_infeasible(problem)
    if obj.kind == "deadline":
        limit, relaxed, what = f"the deadline of {obj.deadline:.10g} s", Objective.min_time(), \
            "fastest plan takes"
    else:
        limit, relaxed, what = f"the budget of {obj.budget:.10g}", Objective.weighted(0.0), \
            "cheapest plan costs"
    head = f"no plan meets {limit} per iteration (within the relative tolerance {REL_TOL:g})"
    try:
        best = plan_miqp(replace(problem, objective=relaxed), time_limit)
    except TimeLimitError:
        return InfeasibleError(f"{head}; the time limit ran out before the {what.split()[0]} "
                               "plan was found; fix: relax the limit or raise time_limit")
    value = best.objective_or_inf
    unit = " s" if obj.kind == "deadline" else ""
    if best.status == "optimal":
        quote = f"the {what} {value:.10g}{unit}"
    else:
        quote = (f"every plan is at least {value * (1 - (best.gap or 0.0)):.10g}{unit} (the "
                 f"time limit stopped the proof; the best found is {value:.10g}{unit})")
    return InfeasibleError(f"{head}; {quote}; fix: raise the "
                           f"{'deadline' if obj.kind == 'deadline' else 'budget'} to at least "
                           "that")


def _lifetime_infeasibility(problem: Problem, time_limit: float) -> InfeasibleError | None:
    """The message for a problem with plans whose iterations fit no window (None when even
    windows without limit hold no plan): the fastest plan's time, what its windows hold."""
    plat = problem.platform
    unlimited = replace(problem, objective=Objective.min_time(), platform=replace(
        plat, timeout_s=1e18, cold_start_s=0.0))
    try:
        fastest = plan_miqp(unlimited, time_limit)
    except (InfeasibleError, TimeLimitError):
        return None
    seconds = fastest.iteration_seconds or math.inf
    life = min(t.life for t in plan_terms(fastest, problem))
    return InfeasibleError(
        f"no plan's iteration fits one invocation of {plat.timeout_s:g} s: the fastest plan "
        f"takes {seconds:.10g} s, and its windows hold {life:.10g} s after the cold start "
        f"({plat.cold_start_s:g} s) and the checkpoint hand-over; fix: raise timeout_s if the "
        "platform allows, lower cold_start_s (a compile cache), or allow more functions, "
        "replicas or memory")


def reduce(problem: Problem, micro_batch: int, cands: list[Candidate],
           incumbent: Incumbent) -> tuple[list[Candidate], float]:
    """Reduced-cost fixing: drop candidates no plan better than ``incumbent`` can use.

    Solves the LP relaxation (bound z_LP) and reads the reduced cost r_v of every x_v from the
    dual of x >= 0. Any plan with x_v = 1 has objective >= z_LP + r_v (LP duality), so v is
    dropped when that exceeds the incumbent's objective. Returns (kept, z_LP in objective units).
    """
    import cvxpy as cp

    milp = build(problem, micro_batch, cands, incumbent, relax=True)
    if milp is None:
        return [], np.inf
    z_lp = _solve_on_highs(milp.problem, threads=1, output_flag=False)
    if milp.problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        return ([], np.inf) if milp.problem.status == cp.INFEASIBLE else (milp.cands, -np.inf)
    reduced = np.asarray(milp.problem.constraints[-2].dual_value).reshape(-1)
    limit = problem.objective.value(*incumbent) / milp.objective_scale
    slack = 1e-6 * max(abs(limit), 1.0)
    kept = [c for c, r in zip(milp.cands, reduced, strict=True) if z_lp + r <= limit + slack]
    return kept, z_lp * milp.objective_scale
