"""A job's timelines as one Chrome trace (chrome://tracing, Perfetto's legacy JSON format).

Every span each rank kept (`RankMetrics.timeline`: the last whole iterations of each
invocation) is a complete ("X") event on process `rank r (stage s, replica k)`, thread = its
lane, in microseconds from the job's first recorded span; the simulator's replay of one
iteration of the plan, when the job has a planning problem, follows as processes
`simulated rank r`, starting at the same iteration's measured start so the two line up.
"""

from __future__ import annotations

from typing import Any

from jaxpipe.runtime.report.record import JobRecord
from jaxpipe.runtime.report.timeline import IterationSpans
from planners.simulate import SimResult

__all__ = ["SIMULATED_PID", "chrome_trace"]

SIMULATED_PID = 1000
"""Process id offset of the simulated ranks."""
_LANES = {"compute": 0, "upload": 1, "download": 2, "storage": 3}


def chrome_trace(record: JobRecord, it: IterationSpans | None = None,
                 sim: SimResult | None = None) -> dict[str, Any]:
    """The trace of a job (see the module docstring); `sim` is placed at `it`'s start."""
    spans = [(m, s) for m in record.metrics for s in m.timeline]
    origin = min((s.start for _, s in spans), default=0.0)
    events: list[dict[str, Any]] = []
    named: set[int] = set()
    for m, s in spans:
        if m.rank not in named:
            named.add(m.rank)
            events += _names(m.rank, f"rank {m.rank} (stage {m.stage}, replica {m.replica})")
        events.append({"name": s.name, "cat": s.kind, "ph": "X", "pid": m.rank,
                       "tid": _LANES.get(s.lane, 4), "ts": (s.start - origin) * 1e6,
                       "dur": max(s.seconds, 0.0) * 1e6,
                       "args": {"attempt": m.attempt, "invocation": m.invocation}})
    if sim is not None:
        offset = (it.start - origin) if it is not None else 0.0
        for rank in sorted({e.rank for e in sim.timeline}):
            events += _names(SIMULATED_PID + rank, f"simulated rank {rank}")
        for e in sim.timeline:
            label = e.kind if e.micro_batch is None else f"{e.kind} {e.micro_batch}"
            events.append({"name": label, "cat": e.kind, "ph": "X",
                           "pid": SIMULATED_PID + e.rank, "tid": _LANES[e.lane],
                           "ts": (offset + e.start) * 1e6, "dur": (e.end - e.start) * 1e6})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"job": record.job_id, "state": record.state}}


def _names(pid: int, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": pid,
                                  "args": {"name": name}},
                                 {"name": "process_sort_index", "ph": "M", "pid": pid,
                                  "args": {"sort_index": pid}}]
    out += [{"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": lane}}
            for lane, tid in _LANES.items()]
    return out
