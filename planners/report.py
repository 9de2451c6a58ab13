"""Plain-text tables of plans, for the CLI and for humans."""

from __future__ import annotations

from planners.coarsening import groups_of
from planners.plans import Plan
from planners.problem import Problem

__all__ = ["compare_table", "plan_table"]


def plan_table(plan: Plan, problem: Problem) -> str:
    """Stage table: layers (original indices when the profile was coarsened), memory, replicas,
    mode, predicted peak memory and headroom; then time, cost and solver facts."""
    groups = groups_of(problem.profile)
    head = f"{'stage':>5}  {'layers':>11}  {'memory MB':>9}  {'replicas':>8}  {'mode':>9}  " \
           f"{'peak MB':>8}  {'headroom MB':>11}"
    rows = [head, "-" * len(head)]
    for s, st in enumerate(plan.stages):
        peak = plan.peak_memory_mb[s] if plan.peak_memory_mb else float("nan")
        layers = f"{groups[st.first_layer][0]}..{groups[st.last_layer][1]}"
        rows.append(f"{s:>5}  {layers:>11}  {st.memory_mb:>9}  {st.replicas:>8}  {st.mode:>9}  "
                    f"{peak:>8.0f}  {st.memory_mb - peak:>11.0f}")
    cur = problem.platform.currency
    gap = "n/a" if plan.gap is None else f"{plan.gap:.2%}"
    rows += [
        "",
        f"method {plan.method}  status {plan.status}  gap {gap}  solve {plan.solve_seconds:.2f} s",
        (f"micro-batch {plan.micro_batch} x {plan.num_micro_batches} = batch {plan.global_batch}, "
         f"{plan.num_functions} functions, schedule {plan.schedule}"),
        (f"predicted {plan.iteration_seconds:.3f} s and {plan.iteration_dollars:.6f} {cur} per "
         f"iteration; objective ({problem.objective.describe()}) {plan.objective_value:.6g}"),
    ]
    return "\n".join(rows)


def compare_table(results: dict[str, Plan | str], problem: Problem) -> str:
    """One row per method: time, cost, objective, ratio to the best, functions, solve time;
    a string value is shown as that method's error."""
    values = [p.objective_or_inf for p in results.values() if isinstance(p, Plan)]
    best = min(values) if values else float("nan")
    cur = problem.platform.currency
    head = f"{'method':<14}{'s/iter':>9}{cur + '/iter':>12}{'objective':>12}{'ratio':>8}" \
           f"{'stages':>7}{'funcs':>6}{'b':>4}{'solve s':>9}  status"
    rows = [head, "-" * len(head)]
    for name, p in results.items():
        if not isinstance(p, Plan):
            rows.append(f"{name:<14}{'-':>9}{'-':>12}{'-':>12}{'-':>8}{'-':>7}{'-':>6}{'-':>4}"
                        f"{'-':>9}  {p}")
            continue
        rows.append(f"{name:<14}{p.iteration_seconds:>9.3f}{p.iteration_dollars:>12.6f}"
                    f"{p.objective_value:>12.6g}{p.objective_or_inf / best:>8.3f}"
                    f"{len(p.stages):>7}{p.num_functions:>6}{p.micro_batch:>4}"
                    f"{p.solve_seconds:>9.2f}  {p.status}")
    return "\n".join(rows)
