"""One iteration of a job as every rank recorded it, and its picture: the measured lanes of
each rank above the simulator's replay of the same plan, on one time axis.

`jaxpipe report` draws the timeline of a job with it, and the experiments
(`experiments/timelines.py`, which re-exports these names) read their runs with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxpipe.runtime.metrics import IterationRecord, RankMetrics, Span

__all__ = ["WARM_UP", "IterationSpans", "RankIteration", "draw_timeline", "held_iterations",
           "iteration_spans"]

WARM_UP = 2
"""Iterations left out of every measurement, counted from each invocation's first: the first
compiles each rank's programs, and in the second ranks still wait for peers that compiled late
(before the worker committed its arrays to the device, it also compiled every program again:
10-37 s against 0.6-0.8 s steady)."""


@dataclass(frozen=True)
class RankIteration:
    """One rank's part of one iteration: its spans (sorted by start) and its record."""

    stage: int
    replica: int
    spans: tuple[Span, ...]
    record: IterationRecord | None = None


@dataclass(frozen=True)
class IterationSpans:
    """Iteration `t` of every rank, with its window as executed (epoch seconds)."""

    t: int
    start: float
    end: float
    ranks: dict[int, RankIteration]


def held_iterations(metrics: Sequence[RankMetrics], warm_up: int = WARM_UP) -> list[int]:
    """The iterations every rank's timeline holds whole (`RankMetrics.timeline_from` on), past
    the first `warm_up` iterations of each invocation."""
    per_rank: dict[int, set[int]] = {}
    for m in metrics:
        first = m.iterations[0].iteration if m.iterations else 0
        per_rank.setdefault(m.rank, set()).update(
            r.iteration for r in m.timeline_iterations if r.iteration - first >= warm_up)
    return sorted(set.intersection(*per_rank.values())) if per_rank else []


def iteration_spans(metrics: Sequence[RankMetrics], t: int) -> IterationSpans:
    """The spans of iteration t of every rank (`RankMetrics.spans_of`), with the window.

    The window is the iteration's makespan as executed: from when stage 0 (which needs nothing
    from other ranks) finished its previous UPDATE (else, when it started t) to when the last
    rank finished its UPDATE. Iterations overlap (stage 0 starts the next one while later
    stages still sync), so the time per iteration (`iteration_periods`) is shorter than this
    window.
    """
    ranks: dict[int, RankIteration] = {}
    starts, ends = [], []
    for m in metrics:
        spans = m.spans_of(t)
        if not spans:
            continue
        spans = tuple(sorted(spans, key=lambda e: e.start))
        ranks[m.rank] = RankIteration(m.stage, m.replica, spans, m.record(t))
        ends.append(_update(spans).end)
        if m.stage == 0:
            before = m.spans_of(t - 1)
            record = m.record(t)
            starts.append(_update(before).end if before else record.end - record.seconds)
    return IterationSpans(t, min(starts), max(ends), ranks)


def _update(spans: Sequence[Span]) -> Span:
    return next(e for e in spans if e.name == "UPDATE")


def draw_timeline(it: IterationSpans, path: Path, title: str, simulated: Any = None) -> None:
    """One row per (rank, lane) for one measured iteration; optionally the simulator's replay
    of the same plan below it, on the same time axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"FWD": "tab:blue", "BWD": "tab:orange", "UPDATE": "tab:green",
              "SYNC": "tab:purple", "SEND_ACT": "tab:cyan", "SEND_GRAD": "tab:olive",
              "RECV_ACT": "tab:gray", "RECV_GRAD": "tab:brown"}
    panels: list[tuple[str, Any]] = [("measured", it)]
    if simulated is not None:
        panels.append(("simulated", simulated))
    ranks = sorted(it.ranks)
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 0.75 * 3 * len(ranks) * len(panels)
                                                       + 1.2), squeeze=False, sharex=True)
    lanes = ("compute", "upload", "download")
    for ax, (label, data) in zip(axes[:, 0], panels, strict=True):
        rows = []
        for r in ranks:
            for lane in lanes:
                rows.append((r, lane))
        y = {key: len(rows) - 1 - i for i, key in enumerate(rows)}
        if label == "measured":
            t0 = it.start
            events = [(r, e.lane, e.name, e.start - t0, e.end - t0)
                      for r in ranks for e in it.ranks[r].spans]
        else:
            events = [(e.rank, e.lane, e.kind if e.micro_batch is None else
                       f"{e.kind} {e.micro_batch}", e.start, e.end) for e in data.timeline]
        for r, lane, name, a, b in events:
            kind = name.split()[0]
            for ln in (("upload", "download") if lane == "storage" else (lane,)):
                ax.barh(y[(r, ln)], b - a, left=a, height=0.8, color=colors.get(kind, "k"),
                        edgecolor="white", linewidth=0.3)
        ax.set_yticks([y[k] for k in rows], [f"rank {r} {lane}" for r, lane in rows], fontsize=7)
        end = it.end - it.start if label == "measured" else data.iteration_seconds
        ax.axvline(end, color="red", lw=0.8, ls="--")
        ax.set_title(f"{title}: {label} ({end:.3f} s)", fontsize=9)
    axes[-1, 0].set_xlabel("seconds from the iteration start")
    from matplotlib.patches import Rectangle

    handles = [Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    axes[0, 0].legend(handles, list(colors), fontsize=6, ncol=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
