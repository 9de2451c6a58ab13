"""What a function is told and what it answers: the worker's events and its status record.

The driver (`jaxpipe.runtime.driver`) and the cloud tasks (`platforms.aws_tasks`) build these
values; a platform carries them as JSON (a local process's stdin, a Lambda event); the
worker's `handler` receives the dict and parses it once (`parse_event`):

    RankEvent   run rank r of job j for iterations [start, stop)      driver  -> worker
    TaskEvent   profile the model / time the storage link, put at key  driver  -> worker
    RankStatus  how that invocation ended (`Keys.status`)              worker  -> driver

An event only points into the store (job id, window, store spec), a few hundred bytes, far
below Lambda's asynchronous payload limit. `to_dict` writes exactly the keys a worker of this
version reads; `from_dict` fills the optional ones with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from jaxpipe.runtime.job import Keys

__all__ = ["Fault", "RankEvent", "RankStatus", "Stall", "Status", "TaskEvent", "parse_event"]


@dataclass(frozen=True)
class Fault:
    """Test hook: rank `rank` dies by SIGKILL in iteration `iteration` (after micro-batch 0).

    Example:
      >>> Fault.from_dict(Fault(rank=1, iteration=2).to_dict())
      Fault(rank=1, iteration=2)
    """

    rank: int
    iteration: int

    def to_dict(self) -> dict[str, int]:
        return {"rank": self.rank, "iteration": self.iteration}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        return cls(rank=int(data["rank"]), iteration=int(data["iteration"]))


@dataclass(frozen=True)
class Stall:
    """Test hook: rank `rank` sleeps in iteration `iteration` (before its first forward) until
    `leave_s` seconds of its invocation are left, as an iteration far slower than predicted
    would; a rank without a deadline does not stall.

    Example:
      >>> Stall.from_dict(Stall(rank=0, iteration=1, leave_s=20.0).to_dict())
      Stall(rank=0, iteration=1, leave_s=20.0)
    """

    rank: int
    iteration: int
    leave_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "iteration": self.iteration, "leave_s": self.leave_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stall:
        return cls(rank=int(data["rank"]), iteration=int(data["iteration"]),
                   leave_s=float(data["leave_s"]))


@dataclass(frozen=True)
class RankEvent:
    """Run rank `rank` of job `job` for iterations [start, stop).

    Attributes:
      job: the job id; the spec is at `Keys(job).spec`.
      rank: the rank (stage-major, `planners.Schedule.rank`).
      store: `transports.store_to_spec` of the job's store.
      start, stop: the window of iterations; `start` is a complete checkpoint.
      attempt: restarts so far (0 first); messages of each attempt live apart.
      invocation: windows launched so far in this job; names the status and metrics keys.
      link: emulate the platform's bandwidth and latency around the store (local processes).
      iteration_s: the driver's estimate of one iteration, in seconds (None: the plan's).
      launched_at: epoch seconds when the platform launched it, for the cold start.
      deadline_at: epoch seconds when the platform ends the invocation, where no context says
        it (the local platform's emulation of a time limit, `platforms.local`); None: none.
      fault: test hook, see `Fault`.
      stages_startup_s: each stage's predicted start-up, in seconds (`runtime.startup`): the
        rank's waits in the window's first iteration cover the other stages' (empty: the
        plan's, `Platform.cold_start_s` each).
      stall: test hook, see `Stall`.

    Example:
      >>> e = RankEvent("j", 1, {"kind": "file", "root": "/tmp/s"}, 0, 4, 0, 0)
      >>> RankEvent.from_dict(e.to_dict()) == e, e.status_key
      (True, 'jobs/j/status/0/0/rank1')
    """

    job: str
    rank: int
    store: dict[str, Any]
    start: int
    stop: int
    attempt: int
    invocation: int
    link: bool = True
    iteration_s: float | None = None
    launched_at: float | None = None
    fault: Fault | None = None
    stages_startup_s: tuple[float, ...] = ()
    deadline_at: float | None = None
    stall: Stall | None = None

    @property
    def keys(self) -> Keys:
        return Keys(self.job)

    @property
    def status_key(self) -> str:
        """Where the worker writes how this invocation ended (`RankStatus`)."""
        return self.keys.status(self.attempt, self.invocation, self.rank)

    @property
    def claim_key(self) -> str:
        """Where the first delivery claims the invocation (a duplicate finds it taken)."""
        return self.status_key + ".claim"

    @property
    def metrics_key(self) -> str:
        return self.keys.metrics(self.rank, self.attempt, self.invocation)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job": self.job, "rank": self.rank, "store": self.store, "start": self.start,
            "stop": self.stop, "attempt": self.attempt, "invocation": self.invocation,
            "link": self.link}
        if self.iteration_s is not None:
            data["iteration_s"] = self.iteration_s
        if self.launched_at is not None:
            data["launched_at"] = self.launched_at
        if self.fault is not None:
            data["fault"] = self.fault.to_dict()
        if self.stages_startup_s:
            data["stages_startup_s"] = list(self.stages_startup_s)
        if self.deadline_at is not None:
            data["deadline_at"] = self.deadline_at
        if self.stall is not None:
            data["stall"] = self.stall.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankEvent:
        fault, stall = data.get("fault"), data.get("stall")
        return cls(
            job=str(data["job"]), rank=int(data["rank"]), store=dict(data["store"]),
            start=int(data["start"]), stop=int(data["stop"]), attempt=int(data["attempt"]),
            invocation=int(data["invocation"]), link=bool(data.get("link", True)),
            iteration_s=_float_or_none(data.get("iteration_s")),
            launched_at=_float_or_none(data.get("launched_at")),
            fault=Fault.from_dict(fault) if fault else None,
            stages_startup_s=tuple(float(s) for s in data.get("stages_startup_s", ())),
            deadline_at=_float_or_none(data.get("deadline_at")),
            stall=Stall.from_dict(stall) if stall else None)


@dataclass(frozen=True)
class TaskEvent:
    """Run a profiling or calibration task inside a function (`platforms.aws_tasks`).

    Attributes:
      task: "calibrate" (time PUTs and GETs of the store) or "profile" (time every layer).
      store: `transports.store_to_spec` of the store the result goes to.
      key: where the result goes, as JSON ({"error": ...} if the task raised).
      memory_mb: memory of the function it runs in, in MB (recorded with the result).
      repeats: timed runs per measurement.
      size_bytes: calibrate: object size of the bandwidth test, in bytes.
      model: profile: the zoo model's name.
      micro_batches: profile: micro-batch sizes to time.

    Example:
      >>> e = TaskEvent("profile", {"kind": "s3", "bucket": "b"}, "k", 1024, model="mlp",
      ...               micro_batches=(1, 2))
      >>> sorted(e.to_dict()), TaskEvent.from_dict(e.to_dict()) == e
      (['key', 'memory_mb', 'micro_batches', 'model', 'repeats', 'store', 'task'], True)
    """

    task: str
    store: dict[str, Any]
    key: str
    memory_mb: int | None = None
    repeats: int = 5
    size_bytes: int | None = None
    model: str | None = None
    micro_batches: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"task": self.task, "store": self.store, "key": self.key,
                                "memory_mb": self.memory_mb, "repeats": self.repeats}
        if self.size_bytes is not None:
            data["size_bytes"] = self.size_bytes
        if self.model is not None:
            data["model"] = self.model
            data["micro_batches"] = list(self.micro_batches)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskEvent:
        memory, size = data.get("memory_mb"), data.get("size_bytes")
        return cls(
            task=str(data["task"]), store=dict(data["store"]), key=str(data["key"]),
            memory_mb=None if memory is None else int(memory),
            repeats=int(data.get("repeats", 5)), size_bytes=None if size is None else int(size),
            model=data.get("model"),
            micro_batches=tuple(int(b) for b in data.get("micro_batches", ())))


def parse_event(data: dict[str, Any]) -> RankEvent | TaskEvent:
    """The event a function was invoked with: a `TaskEvent` if it names a task, else a
    `RankEvent`."""
    return TaskEvent.from_dict(data) if "task" in data else RankEvent.from_dict(data)


class Status(StrEnum):
    """How an invocation of a rank ended; the value is what the status JSON carries."""

    DONE = "done"            # the window ran to its end, and it was the job's last
    HANDOVER = "handover"    # the window ran to its end (or to a hand-over marker's stop,
                             # `runtime.handover`); the next one starts at `next`
    REFUSED = "refused"      # too little time left for one iteration: handed back whole
    FAILED = "failed"        # the handler raised (`error` holds the traceback's tail)
    DUPLICATE = "duplicate"  # a second delivery of one event: it did nothing (never stored)


@dataclass(frozen=True)
class RankStatus:
    """The record a worker writes at `RankEvent.status_key` when its invocation ends.

    Attributes:
      status: see `Status`.
      next: the iteration the next window starts at (None for "failed").
      error: "failed": the last 4000 characters of the traceback.
      reason, remaining_s, needed_s: "refused": why ("deadline"), and the seconds left in the
        invocation against the seconds its first iteration needs.

    Example:
      >>> s = RankStatus(Status.HANDOVER, next=8)
      >>> s.to_dict(), s.ended_cleanly
      ({'status': 'handover', 'next': 8}, True)
    """

    status: Status
    next: int | None = None
    error: str | None = None
    reason: str | None = None
    remaining_s: float | None = None
    needed_s: float | None = None
    _OPTIONAL = ("next", "error", "reason", "remaining_s", "needed_s")

    @property
    def ended_cleanly(self) -> bool:
        """Whether the window ran to its end ("done" or "handover")."""
        return self.status in (Status.DONE, Status.HANDOVER)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": str(self.status)}
        for name in self._OPTIONAL:
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankStatus:
        return cls(Status(data["status"]), **{k: data[k] for k in cls._OPTIONAL if k in data})


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)

