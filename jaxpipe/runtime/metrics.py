"""What a rank records about one invocation, and how a reader finds an iteration in it.

A worker writes one `RankMetrics` per invocation to `Keys.metrics(rank, attempt, invocation)`;
the driver bills it (`driver.measured_dollars`), `train` summarises it, and
`experiments/timelines.py` replays its timeline. The timeline is a list of `Span`s, one per
task on a lane (Chrome-trace "complete" events):

    iterations  [IterationRecord(t0) ... IterationRecord(tn)]       every iteration of the window
    timeline    [spans of t_k ..................... spans of tn]     the last whole iterations
                 ^ timeline_from = t_k               (at most TIMELINE_SPANS spans)

Every span of iteration t is recorded before any span of t+1 (the lanes drain at the end of
each iteration), so the timeline is the spans of iterations `timeline_from`.. in that order,
`IterationRecord.spans` of them each; `RankMetrics.spans_of(t)` cuts them out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transports import StoreStats

__all__ = ["TIMELINE_SPANS", "CompileRecord", "IterationRecord", "LossRecord", "RankMetrics",
           "Span", "Timeline", "billed_requests", "keep_whole_iterations", "peak_rss_mb",
           "run_queue_wait_s"]

TIMELINE_SPANS = 400
"""Most spans a rank's metrics keep: those of its last whole iterations that fit in this many
(always at least its last iteration's), so the metrics object stays small."""


@dataclass(frozen=True)
class Span:
    """One task on one lane, from `start` to `end` (epoch seconds).

    Attributes:
      lane: "compute", "upload", "download" or "storage" (SYNC holds both storage lanes).
      name: the task kind and micro-batch, e.g. "FWD 3"; "SYNC" and "UPDATE" have none.

    Example:
      >>> s = Span("compute", "BWD 2", 10.0, 10.5)
      >>> s.kind, s.micro_batch, s.seconds
      ('BWD', 2, 0.5)
    """

    lane: str
    name: str
    start: float
    end: float

    @property
    def kind(self) -> str:
        return self.name.split()[0]

    @property
    def micro_batch(self) -> int | None:
        parts = self.name.split()
        return int(parts[1]) if len(parts) > 1 else None

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"lane": self.lane, "name": self.name, "start": self.start, "end": self.end}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Span:
        return cls(str(data["lane"]), str(data["name"]), float(data["start"]), float(data["end"]))


@dataclass(frozen=True)
class IterationRecord:
    """One iteration as a rank lived it.

    Attributes:
      iteration: the iteration t.
      seconds: from its start to its end on this rank, in seconds.
      end: when it ended, in epoch seconds.
      cpu_wait_s: seconds this process's threads waited for a core meanwhile (Linux only).
      spans: spans the rank recorded in it (None in metrics written before this field).
    """

    iteration: int
    seconds: float
    end: float
    cpu_wait_s: float = 0.0
    spans: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"iteration": self.iteration, "seconds": self.seconds,
                                "end": self.end, "cpu_wait_s": self.cpu_wait_s}
        if self.spans is not None:
            data["spans"] = self.spans
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IterationRecord:
        spans = data.get("spans")
        return cls(int(data["iteration"]), float(data["seconds"]), float(data["end"]),
                   float(data.get("cpu_wait_s", 0.0)), None if spans is None else int(spans))


@dataclass(frozen=True)
class CompileRecord:
    """What compiling cost one invocation, and what the compile cache saved it
    (`runtime.compile_cache`).

    Attributes:
      compile_s: seconds in XLA's compile, or in loading its executables from the cache.
      hits, misses: programs loaded from the cache, and programs compiled (and cached).
      fetched, fetched_bytes, fetch_s: cache entries downloaded from the store before the
        stage loaded, their bytes, and the seconds the download took.
      cached: whether the cache was on (a job may turn it off; in-process runs have none).

    Example:
      >>> r = CompileRecord(compile_s=0.5, hits=3, misses=0)
      >>> CompileRecord.from_dict(r.to_dict()) == r
      True
    """

    compile_s: float = 0.0
    hits: int = 0
    misses: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    fetch_s: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompileRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class RankMetrics:
    """What one invocation of one rank measured (see the module docstring).

    Attributes:
      rank, stage, replica: who.
      attempt, invocation: which window of the job.
      cold_start_s: from the launch to the rank being ready to compute, in seconds.
      billed_s: seconds the platform bills for the invocation.
      peak_rss_mb: the process's peak resident memory, in MB.
      memory_mb: the function's memory size (the plan's), in MB.
      iterations: every iteration of the window, in order.
      requests: the store requests the rank sent.
      timeline: spans of the iterations from `timeline_from` on.
      timeline_from: the first iteration the timeline holds whole (None: empty timeline, or
        metrics written before the cut was recorded).
      compile: what compiling cost and the compile cache saved (None: written before it).
      init_s: seconds of Lambda's INIT phase before the handler (importing the worker),
        billed for container images (0: the local platform, or a warm container).
    """

    rank: int
    stage: int
    replica: int
    attempt: int
    invocation: int
    cold_start_s: float
    billed_s: float
    peak_rss_mb: float
    memory_mb: int
    iterations: tuple[IterationRecord, ...]
    requests: StoreStats
    timeline: tuple[Span, ...]
    timeline_from: int | None = None
    compile: CompileRecord | None = None
    init_s: float = 0.0

    @property
    def timeline_iterations(self) -> tuple[IterationRecord, ...]:
        """The records of the iterations whose spans the timeline holds, in order."""
        if self.timeline_from is None or any(r.spans is None for r in self.iterations):
            return ()
        return tuple(r for r in self.iterations if r.iteration >= self.timeline_from)

    def record(self, t: int) -> IterationRecord:
        """The record of iteration t; KeyError if this invocation did not run it."""
        for r in self.iterations:
            if r.iteration == t:
                return r
        raise KeyError(f"rank {self.rank} invocation {self.invocation} did not run iteration {t}")

    def spans_of(self, t: int) -> tuple[Span, ...]:
        """The spans of iteration t, in the order they ended; () if the timeline lacks it."""
        offset = 0
        for r in self.timeline_iterations:
            count = r.spans or 0
            if r.iteration == t:
                return self.timeline[offset:offset + count]
            offset += count
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "stage": self.stage, "replica": self.replica,
            "attempt": self.attempt, "invocation": self.invocation,
            "cold_start_s": self.cold_start_s, "billed_s": self.billed_s,
            "peak_rss_mb": self.peak_rss_mb, "memory_mb": self.memory_mb,
            "iterations": [r.to_dict() for r in self.iterations],
            "requests": self.requests.to_dict(),
            "timeline": [s.to_dict() for s in self.timeline],
            "timeline_from": self.timeline_from,
            "compile": self.compile.to_dict() if self.compile is not None else None,
            "init_s": self.init_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankMetrics:
        return cls(
            rank=int(data["rank"]), stage=int(data["stage"]), replica=int(data["replica"]),
            attempt=int(data["attempt"]), invocation=int(data.get("invocation", 0)),
            cold_start_s=float(data["cold_start_s"]), billed_s=float(data["billed_s"]),
            peak_rss_mb=float(data["peak_rss_mb"]), memory_mb=int(data["memory_mb"]),
            iterations=tuple(IterationRecord.from_dict(r) for r in data["iterations"]),
            requests=StoreStats(**data["requests"]),
            timeline=tuple(Span.from_dict(s) for s in data.get("timeline", ())),
            timeline_from=data.get("timeline_from"),
            compile=CompileRecord.from_dict(data["compile"]) if data.get("compile") else None,
            init_s=float(data.get("init_s", 0.0)))


@dataclass(frozen=True)
class LossRecord:
    """The losses of one last-stage rank in one iteration (`Keys.loss(t, rank)`); the driver
    waits for these to see an iteration end.

    Example:
      >>> r = LossRecord.of({2: 0.5, 0: 1.5})
      >>> r, LossRecord.from_json(r.to_json()) == r
      (LossRecord(micro_batches=(0, 2), losses=(1.5, 0.5)), True)
    """

    micro_batches: tuple[int, ...]
    losses: tuple[float, ...]

    @classmethod
    def of(cls, losses: Mapping[int, float]) -> LossRecord:
        """The record of {micro-batch: loss}, in micro-batch order."""
        order = sorted(losses)
        return cls(tuple(order), tuple(losses[m] for m in order))

    def to_json(self) -> bytes:
        return json.dumps({"micro_batches": list(self.micro_batches),
                           "losses": list(self.losses)}).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> LossRecord:
        d = json.loads(data)
        return cls(tuple(int(m) for m in d["micro_batches"]), tuple(float(x) for x in d["losses"]))


def billed_requests(stats: StoreStats) -> tuple[int, int]:
    """(PUT-priced, GET-priced) requests of `stats`: LISTs bill as PUTs; HEADs and GETs that
    found nothing (polls) bill as GETs; DELETEs are free.

    Example:
      >>> billed_requests(StoreStats(puts=2, lists=1, gets=3, heads=1, misses=4, deletes=9))
      (3, 8)
    """
    return stats.puts + stats.lists, stats.gets + stats.heads + stats.misses


class Timeline:
    """The spans a rank records, and where each of its iterations starts among them.

    Lanes append from their own threads (a list append is atomic); `iteration_started(t)` is
    called from the compute thread before iteration t queues anything.
    """

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.starts: list[tuple[int, int]] = []  # (iteration, index of its first span)

    def span(self, lane: str, name: str) -> _Recording:
        """A context manager that records one task on `lane` from entry to exit."""
        return _Recording(self.spans, lane, name)

    def iteration_started(self, t: int) -> None:
        self.starts.append((t, len(self.spans)))

    def spans_since(self, t: int) -> int:
        """Spans recorded since iteration t started (call at its end: all of its spans)."""
        first = next(i for it, i in reversed(self.starts) if it == t)
        return len(self.spans) - first

    def kept(self, limit: int = TIMELINE_SPANS) -> tuple[tuple[Span, ...], int | None]:
        """The spans of the last whole iterations that fit in `limit` (at least the last
        iteration's), and the first iteration they hold (None if none ran)."""
        return keep_whole_iterations(self.spans, self.starts, limit)


def keep_whole_iterations(spans: Sequence[Span], starts: Sequence[tuple[int, int]],
                          limit: int) -> tuple[tuple[Span, ...], int | None]:
    """The spans from the start of the earliest iteration whose spans, with every later
    iteration's, number at most `limit` (the last iteration's always), and that iteration.

    Example:
      >>> spans = [Span("compute", str(i), 0.0, 0.0) for i in range(5)]
      >>> kept, first = keep_whole_iterations(spans, [(0, 0), (1, 2), (2, 3)], limit=3)
      >>> first, [s.name for s in kept]
      (1, ['2', '3', '4'])
    """
    if not starts:
        return (), None
    first_t, first_i = starts[-1]
    for t, i in reversed(starts[:-1]):
        if len(spans) - i > limit:
            break
        first_t, first_i = t, i
    return tuple(spans[first_i:]), first_t


class _Recording:
    def __init__(self, spans: list[Span], lane: str, name: str) -> None:
        self.spans, self.lane, self.name = spans, lane, name
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.time()

    def __exit__(self, *exc: object) -> None:
        self.spans.append(Span(self.lane, self.name, self.start, time.time()))


def run_queue_wait_s() -> float:
    """Seconds this process's live threads have spent runnable but waiting for a core (Linux
    schedstat; 0 elsewhere): how much of a function's time an oversubscribed machine took."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
    except (OSError, IndexError, ValueError):  # not Linux, or a thread that just ended
        return 0.0
    return total / 1e9


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: VmHWM (Linux), else ru_maxrss.

    Not ru_maxrss first: Linux keeps it across execve, so a local rank, forked from the driver,
    reported the driver's resident memory at the fork whenever that was the larger (both ranks
    of a job then showed the same peak). VmHWM belongs to the address space exec made.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
