"""Micro-batch schedules as data: the ordered task list of every rank for one iteration.

Ranks are stage-major: stage s's d_s replicas get consecutive ranks, so rank(s, r) =
sum_{s' < s} d_{s'} + r. Micro-batch m runs on replica m mod d_s of every stage s; a replica
therefore owns micro-batches r, r + d_s, r + 2 d_s, ... (index i of that list is its i-th).

The worker (and the simulator) runs a rank's list on three lanes:

  lane       kinds                      order
  compute    FWD, BWD, UPDATE           list order
  upload     SEND_ACT, SEND_GRAD, SYNC  list order (all queued when the iteration starts)
  download   RECV_ACT, RECV_GRAD, SYNC  list order (all queued when the iteration starts)

A task starts when its lane is free and its dependencies are done: FWD(m) needs RECV_ACT(m);
SEND_ACT(m) needs FWD(m); the peer's RECV_ACT(m) needs this SEND_ACT(m); BWD(m) needs
RECV_GRAD(m) (the last stage: its own FWD(m)); SYNC needs every BWD of every replica of the
stage and occupies both storage lanes; UPDATE needs SYNC (or the last BWD when d_s = 1).
Stage 0's RECV_ACT has ``peer=None``: it reads micro-batch m of the data from storage.

Policies:
  ``funcpipe``: forwards in increasing m, then backwards in decreasing m; inside each half the
    receives are hoisted to the front so downloads prefetch (as FuncPipe's runtime does).
  ``1f1b``: PipeDream-flush; min(n, S - s - 1) warm-up forwards, then one forward / one
    backward alternately, backwards in increasing m; holds at most S - s micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from planners._json import JsonMixin
from planners.errors import PlanError
from planners.plans import Plan
from planners.problem import SCHEDULES

__all__ = ["LANES", "Kind", "Schedule", "Task", "build", "lane_of"]


class Kind(StrEnum):
    """Task kinds; the string value is what JSON carries."""

    RECV_ACT = "RECV_ACT"
    FWD = "FWD"
    SEND_ACT = "SEND_ACT"
    RECV_GRAD = "RECV_GRAD"
    BWD = "BWD"
    SEND_GRAD = "SEND_GRAD"
    SYNC = "SYNC"
    UPDATE = "UPDATE"


LANES = ("compute", "upload", "download")
_LANE = {Kind.FWD: "compute", Kind.BWD: "compute", Kind.UPDATE: "compute",
         Kind.SEND_ACT: "upload", Kind.SEND_GRAD: "upload",
         Kind.RECV_ACT: "download", Kind.RECV_GRAD: "download", Kind.SYNC: "storage"}


def lane_of(kind: Kind) -> str:
    """Lane a task kind runs on (``storage``: SYNC holds upload and download together)."""
    return _LANE[kind]


@dataclass(frozen=True)
class Task:
    """One step of a rank's iteration.

    Attributes:
      kind: what to do.
      stage, replica: who does it.
      micro_batch: which micro-batch (None for SYNC and UPDATE).
      peer: for SEND/RECV, the rank at the other end (None: the dataset, for stage 0 inputs).
    """

    kind: Kind
    stage: int
    replica: int
    micro_batch: int | None = None
    peer: int | None = None


@dataclass(frozen=True)
class Schedule(JsonMixin):
    """Per-rank task lists of one iteration. ``tasks[rank]`` is that rank's ordered tuple."""

    stage_replicas: tuple[int, ...]
    num_micro_batches: int
    policy: str
    tasks: tuple[tuple[Task, ...], ...]

    @property
    def num_ranks(self) -> int:
        """Total ranks (functions)."""
        return len(self.tasks)

    def rank(self, stage: int, replica: int) -> int:
        """Rank of (stage, replica), stage-major."""
        return sum(self.stage_replicas[:stage]) + replica

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; each task is [kind, stage, replica, micro_batch, peer]."""
        return {"stage_replicas": list(self.stage_replicas),
                "num_micro_batches": self.num_micro_batches, "policy": self.policy,
                "tasks": [[[str(t.kind), t.stage, t.replica, t.micro_batch, t.peer] for t in row]
                          for row in self.tasks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        """Inverse of ``to_dict``."""
        tasks = tuple(tuple(Task(Kind(k), s, r, m, p) for k, s, r, m, p in row)
                      for row in data["tasks"])
        return cls(tuple(data["stage_replicas"]), data["num_micro_batches"], data["policy"],
                   tasks)


def build(plan_or_stage_replicas: Plan | Sequence[int], num_micro_batches: int | None = None,
          policy: str | None = None) -> Schedule:
    """Build the schedule of a plan (or of a list of replica counts per stage).

    Args:
      plan_or_stage_replicas: a Plan, or d_s for every stage.
      num_micro_batches: M; defaults to the plan's B / b.
      policy: ``funcpipe`` or ``1f1b``; defaults to the plan's schedule, else ``funcpipe``.

    Raises:
      PlanError: unknown policy, M < 1 or a replica count < 1.

    Example:
      >>> [str(t.kind) for t in build([1, 1], 1).tasks[1]]
      ['RECV_ACT', 'FWD', 'BWD', 'SEND_GRAD', 'UPDATE']
    """
    if isinstance(plan_or_stage_replicas, Plan):
        reps = plan_or_stage_replicas.stage_replicas
        num_micro_batches = num_micro_batches or plan_or_stage_replicas.num_micro_batches
        policy = policy or plan_or_stage_replicas.schedule
    else:
        reps = tuple(int(d) for d in plan_or_stage_replicas)
    policy = policy or "funcpipe"
    if policy not in SCHEDULES:
        raise PlanError(f"schedule policy {policy!r} unknown; choose one of {SCHEDULES}")
    if not num_micro_batches or num_micro_batches < 1 or not reps or min(reps) < 1:
        raise PlanError(f"need M >= 1 and every d_s >= 1, got M={num_micro_batches}, d={reps}")
    starts = [sum(reps[:s]) for s in range(len(reps))]
    rows: list[tuple[Task, ...]] = []
    for s, d in enumerate(reps):
        for r in range(d):
            owned = list(range(r, num_micro_batches, d))
            rows.append(tuple(_rank_tasks(s, r, owned, reps, starts, policy)))
    return Schedule(reps, num_micro_batches, policy, tuple(rows))


def _rank_tasks(s: int, r: int, owned: list[int], reps: Sequence[int], starts: list[int],
                policy: str) -> list[Task]:
    S = len(reps)

    def peer(stage: int, m: int) -> int:
        return starts[stage] + m % reps[stage]

    def forward(m: int) -> tuple[list[Task], list[Task]]:
        recv = [Task(Kind.RECV_ACT, s, r, m, peer(s - 1, m) if s > 0 else None)]
        work = [Task(Kind.FWD, s, r, m)]
        if s < S - 1:
            work.append(Task(Kind.SEND_ACT, s, r, m, peer(s + 1, m)))
        return recv, work

    def backward(m: int) -> tuple[list[Task], list[Task]]:
        recv = [Task(Kind.RECV_GRAD, s, r, m, peer(s + 1, m))] if s < S - 1 else []
        work = [Task(Kind.BWD, s, r, m)]
        if s > 0:
            work.append(Task(Kind.SEND_GRAD, s, r, m, peer(s - 1, m)))
        return recv, work

    tasks: list[Task] = []
    if policy == "funcpipe":
        for phase, order in ((forward, owned), (backward, owned[::-1])):
            parts = [phase(m) for m in order]
            tasks += [t for recv, _ in parts for t in recv]  # receives hoisted to the front
            tasks += [t for _, work in parts for t in work]
    else:
        n = len(owned)
        warm = min(n, S - s - 1)
        for m in owned[:warm]:
            tasks += _cat(forward(m))
        for i in range(n - warm):
            tasks += _cat(forward(owned[warm + i])) + _cat(backward(owned[i]))
        for m in owned[n - warm:]:
            tasks += _cat(backward(m))
    if reps[s] > 1:
        tasks.append(Task(Kind.SYNC, s, r))
    tasks.append(Task(Kind.UPDATE, s, r))
    return tasks


def _cat(parts: tuple[list[Task], list[Task]]) -> list[Task]:
    return parts[0] + parts[1]
