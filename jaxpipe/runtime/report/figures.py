"""The figures of a job's report, as PNG files: the loss curve, time and dollars per iteration
measured against predicted, store requests and bytes by kind, and the timeline of one
iteration (`timeline.draw_timeline`: measured lanes above the simulator's replay).

Every figure is drawn from a `JobRecord` alone, so a failed or running job gets the figures its
records allow; a figure with nothing to draw is skipped (its function returns None).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxpipe.runtime.billing import functions_gigabytes
from jaxpipe.runtime.metrics import billed_requests
from jaxpipe.runtime.report.record import JobRecord
from jaxpipe.runtime.report.timeline import (
    IterationSpans,
    draw_timeline,
    held_iterations,
    iteration_spans,
)
from planners import simulate
from planners.simulate import SimResult

__all__ = ["IterationCosts", "chosen_iteration", "draw_costs", "draw_losses", "draw_requests",
           "draw_job_timeline", "iteration_costs", "simulated"]


@dataclass(frozen=True)
class IterationCosts:
    """Seconds and dollars of every iteration measured, with the predictions.

    Attributes:
      seconds: iteration t -> seconds from the end of t-1 to the end of t in one invocation
        (workers' clocks; each invocation's first iteration left out: it has no predecessor
        there, and its time is the launch's).
      dollars: iteration t -> the plan's functions for those seconds at the platform's prices,
        plus the run's storage requests per iteration.
      predicted_seconds, predicted_dollars: the cost model's, per iteration (None: unknown).
      simulated_seconds: the simulator's replay of the plan (None: no planning problem).
    """

    seconds: dict[int, float]
    dollars: dict[int, float]
    predicted_seconds: float | None
    predicted_dollars: float | None
    simulated_seconds: float | None


def iteration_costs(record: JobRecord) -> IterationCosts:
    """`IterationCosts` of a job from its metrics, its summary and its plan."""
    windows: dict[tuple[int, int], dict[int, float]] = {}  # (attempt, invocation) -> t -> end
    for m in record.metrics:
        ends = windows.setdefault((m.attempt, m.invocation), {})
        for it in m.iterations:
            ends[it.iteration] = max(ends.get(it.iteration, 0.0), it.end)
    seconds = {b: ends[b] - ends[a] for ends in windows.values()
               for a, b in itertools.pairwise(sorted(ends)) if b == a + 1}
    ran = {t for ends in windows.values() for t in ends}
    platform, plan = record.spec.platform, record.spec.plan
    puts = gets = 0
    for m in record.metrics:
        p, g = billed_requests(m.requests)
        puts, gets = puts + p, gets + g
    per_requests = platform.request_dollars(puts, gets) / max(1, len(ran))
    gigabytes = functions_gigabytes(plan)
    dollars = {t: platform.compute_dollars(gigabytes, s) + per_requests for t, s in seconds.items()}
    s = record.summary
    sim = simulated(record)
    return IterationCosts(
        seconds, dollars,
        s.predicted_seconds_per_iteration if s and s.has_predictions else plan.iteration_seconds,
        s.predicted_dollars_per_iteration if s and s.has_predictions else plan.iteration_dollars,
        sim.iteration_seconds if sim is not None else None)


def simulated(record: JobRecord) -> SimResult | None:
    """The simulator's replay of the job's plan on its planning problem (None without one,
    or when the plan does not match the problem's profile, e.g. a coarsened one)."""
    if record.problem is None:
        return None
    try:
        return simulate.simulate(record.spec.plan, record.problem)
    except (ValueError, KeyError, IndexError):
        return None


def chosen_iteration(record: JobRecord, wanted: int | None = None) -> IterationSpans | None:
    """Iteration `wanted` of every rank (default: the last one every rank's timeline holds,
    past warm-up if it can), or None if the timelines hold none."""
    metrics = list(record.metrics)
    held = held_iterations(metrics) or held_iterations(metrics, warm_up=0)
    if wanted is None:
        if not held:
            return None
        wanted = held[-1]
    return iteration_spans_or_none(metrics, wanted)


def iteration_spans_or_none(metrics: list[Any], t: int) -> IterationSpans | None:
    """`iteration_spans` of iteration t, or None when no stage-0 rank recorded it."""
    try:
        return iteration_spans(metrics, t)
    except (ValueError, StopIteration, KeyError):
        return None


def draw_job_timeline(record: JobRecord, it: IterationSpans, path: Path) -> Path:
    """The timeline of iteration `it`: measured lanes, and the simulator's replay below."""
    draw_timeline(it, path, f"{record.job_id} iteration {it.t}", simulated(record))
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_losses(record: JobRecord, path: Path) -> Path | None:
    """The mean loss of every iteration (and evaluation metrics, if any, on a second axis)."""
    if not record.losses:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ts = sorted(record.losses)
    ax.plot(ts, [record.losses[t] for t in ts], color="tab:blue", lw=1.4, label="training loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    scored = record.summary.eval_metrics if record.summary else {}
    if scored:
        twin = ax.twinx()
        for name in sorted({k for m in scored.values() for k in m}):
            points = sorted((t, m[name]) for t, m in scored.items() if name in m)
            twin.plot([p[0] for p in points], [p[1] for p in points], "o--", color="tab:red",
                      label=f"eval {name}")
        twin.set_ylabel("evaluation metric")
        twin.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{record.job_id}: loss ({record.state})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_costs(costs: IterationCosts, currency: str, path: Path) -> Path | None:
    """Seconds and dollars of every iteration measured, the predictions as lines."""
    if not costs.seconds:
        return None
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ts = sorted(costs.seconds)
    top.plot(ts, [costs.seconds[t] for t in ts], ".-", color="tab:blue", label="measured")
    for value, style, label in ((costs.predicted_seconds, "--", "cost model"),
                                (costs.simulated_seconds, ":", "simulator")):
        if value is not None:
            top.axhline(value, ls=style, color="tab:red", label=label)
    top.set_ylabel("seconds / iteration")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(ts, [costs.dollars[t] for t in ts], ".-", color="tab:green", label="measured")
    if costs.predicted_dollars is not None:
        bottom.axhline(costs.predicted_dollars, ls="--", color="tab:red", label="cost model")
    bottom.set_ylabel(f"{currency} / iteration")
    bottom.set_xlabel("iteration")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def requests_by_rank(record: JobRecord) -> dict[int, dict[str, float]]:
    """Rank -> store requests by kind and megabytes up and down, over every invocation."""
    out: dict[int, dict[str, float]] = {}
    for m in record.metrics:
        row = out.setdefault(m.rank, {})
        r = m.requests
        for name, value in (("PUT", r.puts), ("GET", r.gets), ("HEAD", r.heads),
                            ("LIST", r.lists), ("DELETE", r.deletes), ("miss", r.misses),
                            ("retry", r.retries), ("MB up", r.bytes_up / 1e6),
                            ("MB down", r.bytes_down / 1e6)):
            row[name] = row.get(name, 0) + value
    return dict(sorted(out.items()))


def draw_requests(record: JobRecord, path: Path) -> Path | None:
    """Per rank: requests by kind (stacked) and megabytes moved up and down."""
    rows = requests_by_rank(record)
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    ranks = list(rows)
    bottom = [0.0] * len(ranks)
    for kind in ("PUT", "GET", "HEAD", "LIST", "DELETE", "miss"):
        values = [rows[r].get(kind, 0) for r in ranks]
        if any(values):
            left.bar(ranks, values, bottom=bottom, label=kind)
            bottom = [a + b for a, b in zip(bottom, values)]
    left.set_xlabel("rank")
    left.set_ylabel("requests")
    left.legend(fontsize=7)
    width = 0.4
    right.bar([r - width / 2 for r in ranks], [rows[r]["MB up"] for r in ranks], width,
              label="up")
    right.bar([r + width / 2 for r in ranks], [rows[r]["MB down"] for r in ranks], width,
              label="down")
    right.set_xlabel("rank")
    right.set_ylabel("MB")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xticks(ranks)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
