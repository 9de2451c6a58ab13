"""Reading what a local run recorded: every rank's timeline per iteration, the task durations
measured in it, its replay by the simulator with those durations, the hand-off gaps between
tasks, and a picture of the lanes (the iteration spans and the picture live in
`jaxpipe.runtime.report.timeline`, which `jaxpipe report` draws with too; re-exported here).

The overhead bench_runtime reports is defined here (`compare_run`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.runtime_common import Run
from jaxpipe.runtime.metrics import RankMetrics, Span
from jaxpipe.runtime.report.timeline import WARM_UP as WARM_UP
from jaxpipe.runtime.report.timeline import IterationSpans as IterationSpans
from jaxpipe.runtime.report.timeline import RankIteration as RankIteration
from jaxpipe.runtime.report.timeline import draw_timeline as draw_timeline
from jaxpipe.runtime.report.timeline import held_iterations as held_iterations
from jaxpipe.runtime.report.timeline import iteration_spans as iteration_spans


def iteration_periods(metrics: Sequence[RankMetrics]) -> list[float]:
    """Time between the ends (last UPDATE of any rank) of successive iterations, for every
    iteration the timelines hold but each invocation's first WARM_UP (compilation): the
    measured time per iteration, from the workers' own clocks."""
    everywhere = set(held_iterations(metrics, warm_up=0))
    ts = [t for t in held_iterations(metrics) if t - 1 in everywhere]
    return [iteration_spans(metrics, t).end - iteration_spans(metrics, t - 1).end for t in ts]


def effective_downloads(it: IterationSpans, schedule: Any) -> dict[tuple[int, str], float]:
    """Duration of every download from when its object existed (the producer's upload ended)
    to when it was decoded: the transfer, without the wait for the producer, keyed by
    (rank, span name)."""
    from planners.schedule import Kind

    sends = {(r, e.name): e for r, info in it.ranks.items() for e in info.spans
             if e.kind.startswith("SEND_")}
    out = {}
    for r, info in it.ranks.items():
        tasks = {(str(t.kind), t.micro_batch): t for t in schedule.tasks[r]}
        for e in info.spans:
            if not e.kind.startswith("RECV_"):
                continue
            task = tasks[(e.kind, e.micro_batch)]
            ready = e.start
            if task.peer is not None:
                send = "SEND_ACT" if e.kind == Kind.RECV_ACT else "SEND_GRAD"
                producer = sends.get((task.peer, f"{send} {e.micro_batch}"))
                if producer is not None:
                    ready = max(ready, producer.end)
            out[(r, e.name)] = max(e.end - ready, 0.0)
    return out


_KIND_FIELD = {"FWD": "fwd", "BWD": "bwd", "UPDATE": "update", "SYNC": "sync",
               "SEND_ACT": "act_up", "SEND_GRAD": "grad_up", "RECV_ACT": "act_down",
               "RECV_GRAD": "grad_down"}


def measured_terms(it: IterationSpans, plan: Any, problem: Any) -> list[Any]:
    """The cost model's stage terms with every duration replaced by the mean measured one
    (downloads: effective, see `effective_downloads`)."""
    from planners import cost
    from planners.schedule import build

    schedule = build(plan)
    downloads = effective_downloads(it, schedule)
    terms = cost.plan_terms(plan, problem)
    out = []
    for s, t in enumerate(terms):
        durations: dict[str, list[float]] = {}
        # A replica's SYNC span includes waiting for its slowest peer to reach the SYNC; the
        # replay starts the all-reduce when all are there, so time it from the last arrival.
        sync_start = max((e.start for info in it.ranks.values() if info.stage == s
                          for e in info.spans if e.name == "SYNC"), default=0.0)
        for r, info in it.ranks.items():
            if info.stage != s:
                continue
            for e in info.spans:
                value = downloads.get((r, e.name), e.seconds)
                if e.kind == "SYNC":
                    value = e.end - max(e.start, sync_start)
                durations.setdefault(_KIND_FIELD[e.kind], []).append(value)
        out.append(dataclasses.replace(t, **{k: float(np.mean(v)) for k, v in durations.items()}))
    return out


def lane_totals(it: IterationSpans, schedule: Any) -> dict[int, dict[str, float]]:
    """Per rank: busy seconds of the compute lane, the upload lane, the effective downloads,
    and the time in the window when none of them was busy ("idle")."""
    downloads = effective_downloads(it, schedule)
    out = {}
    for r, info in it.ranks.items():
        intervals: dict[str, list[tuple[float, float]]] = {"compute": [], "upload": [],
                                                           "download": []}
        for e in info.spans:
            lane = "upload" if e.lane == "storage" else e.lane
            start = e.start
            if lane == "download":
                start = e.end - downloads.get((r, e.name), e.seconds)
            intervals[lane].append((start, e.end))
            if e.lane == "storage":
                intervals["download"].append((start, e.end))
        row = {lane: _union(v) for lane, v in intervals.items()}
        row["any"] = _union([iv for v in intervals.values() for iv in v])
        out[r] = row
    return out


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -np.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def handoff_gaps(it: IterationSpans) -> dict[int, float]:
    """Per rank, the seconds between each task's last input being ready and the task starting,
    summed over the iteration: the runtime's own hand-off cost (a future resolving, a thread
    waking, a dispatch), apart from how long the tasks themselves took.

    A task's inputs: for a compute task, the previous compute task and the receive of its
    micro-batch (for UPDATE, the SYNC); for a send, the compute task that produced it and the
    previous send (one upload lane); for the SYNC, the rank's last BWD.
    """
    out = {}
    for r, info in it.ranks.items():
        spans = sorted(info.spans, key=lambda e: e.start)
        named = {e.name: e for e in spans}
        last_compute = last_send = None
        total = 0.0
        for e in spans:
            kind, _, m = e.name.partition(" ")
            inputs: list[Span | None]
            if e.lane == "compute":
                inputs = [last_compute, named.get(("RECV_ACT " if kind == "FWD" else
                                                   "RECV_GRAD ") + m)]
                if kind == "UPDATE":
                    inputs.append(named.get("SYNC"))
                last_compute = e
            elif kind in ("SEND_ACT", "SEND_GRAD"):
                inputs = [last_send, named.get(("FWD " if kind == "SEND_ACT" else "BWD ") + m)]
                last_send = e
            elif kind == "SYNC":
                inputs = [x for x in spans if x.kind == "BWD"]
            else:
                continue
            ends = [x.end for x in inputs if x is not None]
            if ends:
                total += max(0.0, e.start - max(ends))
        out[r] = total
    return out


def compare_run(run: Run, t: int | None = None) -> dict[str, Any]:
    """Measured time per iteration against the closed form and the simulator for the same
    plan, and the runtime's own overhead (see `overhead` in the returned dict); the timeline
    figures are of iteration `t` (default: the last every rank's timeline holds).

    overhead_per_micro_batch_s = (the iteration's makespan as executed - replay of the schedule
    with that iteration's measured task durations) / micro-batches, median over the iterations
    after warm-up: the time the runtime adds beyond computing and moving the bytes in the plan's
    order (dispatch, thread hand-offs, the loss upload, anything outside the timed spans).
    """
    from planners import cost, simulate
    from planners.schedule import build

    plan, problem, s = run.plan, run.problem, run.summary
    held = held_iterations(run.metrics)
    it = iteration_spans(run.metrics, t if t is not None else held[-1])
    schedule = build(plan)
    window = it.end - it.start
    terms = measured_terms(it, plan, problem)
    replayed = simulate.replay(schedule, terms).iteration_seconds
    predicted = cost.plan_terms(plan, problem)
    totals = lane_totals(it, schedule)
    M = plan.num_micro_batches
    per_kind = {}
    for st, (mt, pt) in enumerate(zip(terms, predicted)):
        per_kind[st] = {k: {"measured_s": getattr(mt, k), "model_s": getattr(pt, k)}
                        for k in ("fwd", "bwd", "act_up", "act_down", "grad_up", "grad_down",
                                  "sync", "update")}
    periods = iteration_periods(run.metrics)
    measured = float(np.median(periods)) if periods else s.measured_seconds_per_iteration
    overheads = []  # every held iteration after the first: window - replay(measured durations)
    gaps = []  # the same iterations: hand-off gaps of all ranks (a micro-batch's whole trip)
    waits = []  # the same iterations: each rank's threads' run-queue wait, mean over ranks
    for k in held:
        one = iteration_spans(run.metrics, k)
        replay_k = simulate.replay(schedule, measured_terms(one, plan, problem)).iteration_seconds
        overheads.append((one.end - one.start - replay_k) / plan.num_micro_batches)
        gaps.append(sum(handoff_gaps(one).values()) / plan.num_micro_batches)
        waits.append(float(np.mean([r.record.cpu_wait_s for r in one.ranks.values()
                                    if r.record is not None])) / plan.num_micro_batches)
    return {
        "job": run.job, "model": s.model, "functions": plan.num_functions,
        "stages": len(plan.stages), "micro_batches": M, "micro_batch": plan.micro_batch,
        "cpu_share": problem.platform.max_cpus,
        "measured_s": measured, "timeline_window_s": window, "periods_s": periods,
        "driver_measured_s": s.measured_seconds_per_iteration,
        "closed_form_s": s.predicted_seconds_per_iteration,
        "simulated_s": s.simulated_seconds_per_iteration,
        "measured_over_closed_form": _ratio(measured, s.predicted_seconds_per_iteration),
        "driver_over_closed_form": _ratio(s.measured_seconds_per_iteration,
                                          s.predicted_seconds_per_iteration),
        "measured_over_simulated": _ratio(measured, s.simulated_seconds_per_iteration),
        "replay_with_measured_durations_s": replayed,
        "overhead_per_micro_batch_s": float(np.median(overheads)) if overheads
        else (window - replayed) / M,
        "overheads_per_micro_batch_s": overheads,
        "handoff_gap_per_micro_batch_s": float(np.median(gaps)) if gaps else 0.0,
        "cpu_wait_per_micro_batch_s": float(np.median(waits)) if waits else 0.0,
        "measured_dollars": s.measured_dollars_per_iteration,
        "predicted_dollars": s.predicted_dollars_per_iteration,
        "per_stage_durations": per_kind,
        "lane_busy_s": totals,
        "idle_per_micro_batch_s": {r: (window - v["any"]) / M for r, v in totals.items()},
        "iteration_times_s": [x.seconds for x in run.metrics[0].iterations],
        "job_wall_s": run.seconds, "cold_start_s": list(s.cold_start_seconds),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
