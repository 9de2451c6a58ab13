"""`write_report`: one job's page, a self-contained HTML file with its PNGs beside it and the
Chrome trace, from whatever the store holds of the job (finished, failed, running or stopped).

    <out>/index.html      the page: the job, its plan, measured against predicted, the figures,
                          requests and bytes by rank, invocations, restarts, failures
    <out>/loss.png        the loss curve (and evaluation metrics)
    <out>/costs.png       seconds and dollars per iteration, measured against predicted
    <out>/timeline.png    one iteration: measured lanes above the simulator's replay
    <out>/requests.png    store requests by kind and MB moved, per rank
    <out>/trace.json      every kept span as a Chrome trace (chrome://tracing, ui.perfetto.dev)

The page needs no network and no script: inline CSS, images by relative path.
"""

from __future__ import annotations

import html
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxpipe.runtime.report import figures
from jaxpipe.runtime.report.chrome import chrome_trace
from jaxpipe.runtime.report.record import JobRecord, read_job
from jaxpipe.runtime.report.timeline import held_iterations
from transports import ObjectStore

__all__ = ["ReportFiles", "render", "write_report"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.state{padding:.1em .5em;border-radius:.3em;color:#fff}.finished{background:#2a7}
.failed{background:#c33}.running{background:#27c}.stopped{background:#888}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}"""


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote: the page, each figure drawn (name -> path), the trace."""

    page: Path
    figures: dict[str, Path]
    trace: Path
    iteration: int | None


def write_report(store: ObjectStore, job_id: str, out: str | Path,
                 iteration: int | None = None) -> ReportFiles:
    """Writes job `job_id`'s report into folder `out` (see the module docstring); the
    timeline is of `iteration` (default: the last one every rank's timeline holds).

    Raises:
      UnknownJobError: no such job in the store.
      InputError (`NoIterationError`): `iteration` is not in the ranks' timelines.
    """
    record = read_job(store, job_id)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    it = figures.chosen_iteration(record, iteration)
    if iteration is not None and it is None:
        from jaxpipe.errors import NoIterationError

        held = held_iterations(list(record.metrics), warm_up=0)
        raise NoIterationError(
            f"iteration {iteration} is not in the ranks' timelines of job {job_id}; they hold "
            f"{_ranges(held) if held else 'none'} (each rank keeps its last whole iterations)")
    costs = figures.iteration_costs(record)
    drawn = {
        "loss": figures.draw_losses(record, folder / "loss.png"),
        "costs": figures.draw_costs(costs, record.spec.platform.currency, folder / "costs.png"),
        "timeline": (figures.draw_job_timeline(record, it, folder / "timeline.png")
                     if it is not None else None),
        "requests": figures.draw_requests(record, folder / "requests.png"),
    }
    pictures = {k: v for k, v in drawn.items() if v is not None}
    trace = folder / "trace.json"
    trace.write_text(json.dumps(chrome_trace(record, it, figures.simulated(record))))
    page = folder / "index.html"
    page.write_text(render(record, costs, pictures, it.t if it is not None else None))
    return ReportFiles(page, pictures, trace, it.t if it is not None else None)


def render(record: JobRecord, costs: figures.IterationCosts, pictures: dict[str, Path],
           iteration: int | None) -> str:
    """The page's HTML for a job (figures by their file names, beside the page)."""
    spec = record.spec
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(record.job_id)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(record.job_id)} <span class='state {record.state}'>{record.state}"
             "</span></h1>", _facts(record), "<h2>Plan</h2>", _plan_table(record),
             "<h2>Measured against predicted</h2>", _versus(record, costs)]
    cancelled = record.last_cancellation
    if record.failures or (cancelled and record.state != "finished"):
        parts.append("<h2>Failures</h2>")
        if cancelled is not None:
            parts.append(f"<p>The last attempt was cancelled by {_e(cancelled.by)}: "
                         f"{_e(cancelled.reason)}</p>")
        for (a, i, r), status in sorted(record.failures.items()):
            parts.append(f"<p>rank {r}, attempt {a}, invocation {i}:</p>"
                         f"<pre>{_e(status.error or '(no error text)')}</pre>")
    captions = {"loss": "Loss per iteration", "costs": "Time and dollars per iteration",
                "timeline": f"Timeline of iteration {iteration}: measured (top), the "
                            "simulator's replay of the plan (bottom)",
                "requests": "Store requests and bytes by rank"}
    for name, caption in captions.items():
        if name in pictures:
            parts.append(f"<h2>{_e(caption)}</h2><img src='{pictures[name].name}' "
                         f"alt='{_e(caption)}'>")
    parts += ["<h2>Requests and bytes by rank</h2>", _requests_table(record),
              "<h2>Invocations</h2>", _invocations_table(record),
              "<p>Chrome trace of every kept span: <a href='trace.json'>trace.json</a> (open in "
              "chrome://tracing or ui.perfetto.dev).</p>",
              f"<p>Written {time.strftime('%Y-%m-%d %H:%M:%S')} by <code>jaxpipe report "
              f"{_e(record.job_id)}</code>; {spec.iterations} iterations planned.</p>",
              "</body></html>"]
    return "\n".join(parts)


def _facts(record: JobRecord) -> str:
    spec, s = record.spec, record.summary
    created = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
               if record.created else "-")
    rows = [("model", spec.model), ("platform", spec.platform.name), ("created", created),
            ("iterations", f"{record.iterations_done} of {spec.iterations}"),
            ("loss", _loss_text(record)),
            ("dollars so far", f"{record.dollars:.6f} {spec.platform.currency}"),
            ("restarts", record.restarts), ("hand-overs", record.handovers),
            ("invocations", s.invocations if s else len(record.metrics)),
            ("checkpoints", f"{len(record.checkpoints)} (latest complete: "
                            f"{record.latest_checkpoint})")]
    if s is not None:
        rows.append(("wall time", f"{s.wall_seconds:.1f} s"))
        rows += [(f"eval {k}", f"{v:.4g}") for k, v in s.final_metrics.items()]
    return _table(["", ""], [[k, v] for k, v in rows], header=False)


def _loss_text(record: JobRecord) -> str:
    if not record.losses:
        return "-"
    ts = sorted(record.losses)
    return f"{record.losses[ts[0]]:.4f} (iteration {ts[0]}) to {record.losses[ts[-1]]:.4f} " \
           f"(iteration {ts[-1]})"


def _plan_table(record: JobRecord) -> str:
    plan = record.spec.plan
    predicted = plan.peak_memory_mb or _peaks(record)
    rss: dict[int, float] = {}
    for m in record.metrics:
        rss[m.stage] = max(rss.get(m.stage, 0.0), m.peak_rss_mb)
    rows = []
    for k, st in enumerate(plan.stages):
        peak = predicted[k] if k < len(predicted) else None
        rows.append([k, f"{st.first_layer}..{st.last_layer}", st.memory_mb, st.replicas, st.mode,
                     _num(peak, ".0f"), _num(rss.get(k), ".0f")])
    table = _table(["stage", "layers", "memory MB", "replicas", "mode", "predicted peak MB",
                    "measured peak RSS MB"], rows)
    return table + (f"<p>micro-batch {plan.micro_batch} x {plan.num_micro_batches} = batch "
                    f"{plan.global_batch}, {plan.num_functions} functions, schedule "
                    f"{plan.schedule}, planned by {_e(plan.method or 'hand')} "
                    f"({_e(plan.status)}).</p>")


def _peaks(record: JobRecord) -> tuple[float, ...]:
    """The cost model's peak memory per stage for a plan that does not carry it."""
    if record.problem is None:
        return ()
    from planners import cost

    try:
        return cost.peak_memory(record.spec.plan, record.problem)
    except (ValueError, KeyError, IndexError):
        return ()


def _versus(record: JobRecord, costs: figures.IterationCosts) -> str:
    s, cur = record.summary, record.spec.platform.currency
    steady = sorted(costs.seconds.values())[1:] or list(costs.seconds.values())
    seconds = (s.measured_seconds_per_iteration if s is not None
               else (statistics.median(steady) if steady else None))
    dollars = s.measured_dollars_per_iteration if s is not None else (
        statistics.median(sorted(costs.dollars.values())) if costs.dollars else None)
    rows = [["seconds / iteration", _num(seconds), _num(costs.predicted_seconds),
             _num(costs.simulated_seconds), _ratio(seconds, costs.predicted_seconds)],
            [f"{cur} / iteration", _num(dollars), _num(costs.predicted_dollars), "-",
             _ratio(dollars, costs.predicted_dollars)]]
    if s is not None:
        rows.append([f"{cur} / iteration with start-up",
                     _num(s.measured_run_dollars_per_iteration), "-", "-", "-"])
    table = _table(["", "measured", "cost model", "simulator", "measured / model"], rows)
    if costs.predicted_seconds is None:
        table += ("<p>No predictions: the job ran a plan file (profiled only for its summary) "
                  "or was resumed.</p>")
    elif costs.simulated_seconds is None:
        table += "<p>No simulator replay: the job's planning problem is not in the store.</p>"
    return table


def _requests_table(record: JobRecord) -> str:
    rows = figures.requests_by_rank(record)
    if not rows:
        return "<p>No metrics yet: no invocation has ended.</p>"
    kinds = ["PUT", "GET", "HEAD", "LIST", "DELETE", "miss", "retry", "MB up", "MB down"]
    body = [[r] + [_num(v[k], ".1f") if k.startswith("MB") else int(v[k]) for k in kinds]
            for r, v in rows.items()]
    return _table(["rank"] + kinds, body)


def _invocations_table(record: JobRecord) -> str:
    if not record.metrics:
        return "<p>No invocation has ended yet.</p>"
    rows = [[m.rank, m.stage, m.replica, m.attempt, m.invocation,
             f"{m.iterations[0].iteration}..{m.iterations[-1].iteration}" if m.iterations
             else "-", _num(m.cold_start_s, ".2f"), _num(m.billed_s, ".2f"),
             _num(m.peak_rss_mb, ".0f"), m.memory_mb]
            for m in sorted(record.metrics, key=lambda m: (m.attempt, m.invocation, m.rank))]
    return _table(["rank", "stage", "replica", "attempt", "invocation", "iterations",
                   "cold start s", "billed s", "peak RSS MB", "memory MB"], rows)


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], header: bool = True) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return "".join(out + ["</table>"])


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _ranges(ts: list[int]) -> str:
    return f"{ts[0]}..{ts[-1]}" if len(ts) > 1 else str(ts[0])


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
