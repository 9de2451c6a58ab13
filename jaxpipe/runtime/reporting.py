"""What `fit` and `jaxpipe train` print: the plan and the job's place before launch, and
where the results are at the end.

The plan is printed as `jaxpipe plan` prints it (`planners.report.plan_table`: stages, layers,
memory, replicas, predicted seconds and dollars per iteration) when the job has a planning
problem and the plan carries predictions; otherwise (a resumed job, a hand-written plan) as a
bare stage table. A planned job's table is followed by the planner's comparison: the same
problem's best plan on one function and its best data-parallel plan (`first_job.comparison`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from jaxpipe.runtime.first_job import comparison
from jaxpipe.runtime.train import Prepared
from planners import Plan
from planners.report import plan_table

__all__ = ["announce_job", "plan_text", "where_text"]


def plan_text(prepared: Prepared) -> str:
    """The job's plan, as `jaxpipe plan` prints it when it can be (see the module docstring)."""
    plan = prepared.spec.plan
    if prepared.problem is not None and plan.iteration_seconds is not None:
        problem = prepared.problem()
        return (plan_table(plan, problem) + "\n\nthe planner's comparison (predicted):\n"
                + comparison(problem, plan))
    return _stage_table(plan)


def _stage_table(plan: Plan) -> str:
    head = f"{'stage':>5}  {'layers':>11}  {'memory MB':>9}  {'replicas':>8}  {'mode':>9}"
    rows = [head, "-" * len(head)]
    for s, st in enumerate(plan.stages):
        rows.append(f"{s:>5}  {f'{st.first_layer}..{st.last_layer}':>11}  {st.memory_mb:>9}  "
                    f"{st.replicas:>8}  {st.mode:>9}")
    rows += ["", f"micro-batch {plan.micro_batch} x {plan.num_micro_batches} = batch "
                 f"{plan.global_batch}, {plan.num_functions} functions (no predictions)"]
    return "\n".join(rows)


def announce_job(prepared: Prepared, start: int, out: TextIO | None = None) -> None:
    """Prints the plan and where the job lives, before any function starts, to `out` (None:
    `sys.stdout` as it is at the call, so a redirected or captured stdout gets it)."""
    out = sys.stdout if out is None else out
    spec = prepared.spec
    print(plan_text(prepared), file=out)
    what = f"resuming at iteration {start}" if start else "starting"
    print(f"\njob {spec.job_id} ({what}, {spec.iterations} iterations) lives at "
          f"{_location(prepared)}{spec.keys.prefix}", file=out, flush=True)


def where_text(store: str, where: Mapping[str, str], saved: str | None = None) -> str:
    """Lines naming where the summary, the metrics, the checkpoints and the saved variables
    are (`FitResult.where`)."""
    base = store.rstrip("/") + "/"
    lines = [f"{name + ':':13s} {base}{key}" for name, key in where.items() if name != "job"]
    if saved is not None:
        lines.append(f"{'variables:':13s} {saved} (orbax; restore with "
                     "orbax.checkpoint.StandardCheckpointer().restore)")
    return "\n".join(lines)


def _location(prepared: Prepared) -> str:
    root = getattr(prepared.store, "root", None)
    if root is not None:
        return f"{root}/"
    bucket = getattr(prepared.store, "bucket", None)
    return f"s3://{bucket}/" if bucket is not None else ""
