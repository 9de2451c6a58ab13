"""Discrete-event replay of a plan's schedule on three lanes per function.

Every task's duration comes from the cost model's stage terms (``cost.StageModel``): FWD = F_s,
BWD = G_s, SEND_ACT = U^a_s, RECV_ACT = D^a_s, RECV_GRAD = D^g_s, SEND_GRAD = U^g_s,
SYNC = scatter-reduce time, UPDATE = optimizer step. What differs from the closed form is the
aggregation: here each lane serves its tasks in list order and a task starts at
max(lane free, dependencies done) (rules in ``planners.schedule``), so replica fan-in/out,
unequal stages and per-stage sync are timed as they happen instead of bounded.

Example:
  A two-stage plan whose lanes are all 1 s long gives the hand-computable makespan
  (see tests/planners/test_simulate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planners.cost import StageTerms, plan_terms
from planners.errors import PlanError
from planners.plans import Plan
from planners.problem import Problem
from planners.schedule import Kind, Schedule, Task, build, lane_of

__all__ = ["Event", "SimResult", "replay", "simulate"]


@dataclass(frozen=True)
class Event:
    """One executed task: who, on which lane, when (seconds from the iteration start)."""

    rank: int
    stage: int
    replica: int
    lane: str
    kind: str
    micro_batch: int | None
    start: float
    end: float


@dataclass(frozen=True)
class SimResult:
    """Simulated iteration: its makespan in seconds and every task's interval."""

    iteration_seconds: float
    timeline: tuple[Event, ...]

    def chrome_trace(self) -> dict[str, Any]:
        """The timeline as Chrome trace JSON (chrome://tracing, Perfetto): one process per rank,
        one thread per lane, times in microseconds."""
        events: list[dict[str, Any]] = []
        ranks = sorted({(e.rank, e.stage, e.replica) for e in self.timeline})
        for rank, stage, replica in ranks:
            events.append({"name": "process_name", "ph": "M", "pid": rank,
                           "args": {"name": f"rank {rank} (stage {stage}, replica {replica})"}})
            for tid, lane in enumerate(("compute", "upload", "download")):
                events.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid,
                               "args": {"name": lane}})
        tids = {"compute": 0, "upload": 1, "download": 2}
        for e in self.timeline:
            label = e.kind if e.micro_batch is None else f"{e.kind} {e.micro_batch}"
            events.append({"name": label, "cat": e.kind, "ph": "X", "pid": e.rank,
                           "tid": tids[e.lane], "ts": e.start * 1e6,
                           "dur": (e.end - e.start) * 1e6})
        return {"traceEvents": events, "displayTimeUnit": "ms"}


def simulate(plan: Plan, problem: Problem) -> SimResult:
    """Replay ``plan``'s schedule with durations from the cost model.

    Raises:
      PlanError: the plan does not match the profile, or the schedule deadlocks.
    """
    return replay(build(plan), plan_terms(plan, problem))


def _duration(task: Task, t: StageTerms) -> float:
    return {Kind.FWD: t.fwd, Kind.BWD: t.bwd, Kind.UPDATE: t.update, Kind.SEND_ACT: t.act_up,
            Kind.RECV_ACT: t.act_down, Kind.RECV_GRAD: t.grad_down, Kind.SEND_GRAD: t.grad_up,
            Kind.SYNC: t.sync}[task.kind]


def replay(schedule: Schedule, terms: list[StageTerms]) -> SimResult:
    """Replay ``schedule`` with the per-stage durations ``terms[s]``."""
    R = schedule.num_ranks
    # queues[rank][lane] = task indices in list order; SYNC sits in both storage lanes.
    queues: list[dict[str, list[int]]] = [{"compute": [], "upload": [], "download": []}
                                          for _ in range(R)]
    for rank, row in enumerate(schedule.tasks):
        for i, task in enumerate(row):
            lane = lane_of(task.kind)
            for name in (("upload", "download") if lane == "storage" else (lane,)):
                queues[rank][name].append(i)
    done: dict[tuple[int, int], float] = {}  # (rank, index) -> end time
    key = {(rank, t.kind, t.micro_batch): i
           for rank, row in enumerate(schedule.tasks) for i, t in enumerate(row)}
    free = [{"compute": 0.0, "upload": 0.0, "download": 0.0} for _ in range(R)]
    head = [{"compute": 0, "upload": 0, "download": 0} for _ in range(R)]
    events: list[Event] = []

    def deps_end(rank: int, task: Task) -> float | None:
        """Latest end of the task's dependencies, None if one is not done yet."""
        need: list[tuple[int, int]] = []
        k, m, s = task.kind, task.micro_batch, task.stage
        if k == Kind.FWD:
            need.append((rank, key[(rank, Kind.RECV_ACT, m)]))
        elif k in (Kind.SEND_ACT, Kind.SEND_GRAD):
            need.append((rank, key[(rank, Kind.FWD if k == Kind.SEND_ACT else Kind.BWD, m)]))
        elif k == Kind.RECV_ACT and task.peer is not None:
            need.append((task.peer, key[(task.peer, Kind.SEND_ACT, m)]))
        elif k == Kind.RECV_GRAD and task.peer is not None:
            need.append((task.peer, key[(task.peer, Kind.SEND_GRAD, m)]))
        elif k == Kind.BWD:
            prev = Kind.RECV_GRAD if (rank, Kind.RECV_GRAD, m) in key else Kind.FWD
            need.append((rank, key[(rank, prev, m)]))
        elif k == Kind.UPDATE:
            sync = (rank, Kind.SYNC, None)
            need += ([(rank, key[sync])] if sync in key else
                     [(rank, i) for i, t in enumerate(schedule.tasks[rank]) if t.kind == Kind.BWD])
        elif k == Kind.SYNC:
            first = schedule.rank(s, 0)
            for peer in range(first, first + schedule.stage_replicas[s]):
                need += [(peer, i) for i, t in enumerate(schedule.tasks[peer])
                         if t.kind == Kind.BWD]
        ends: list[float] = []
        for n in need:
            end = done.get(n)
            if end is None:
                return None
            ends.append(end)
        return max(ends, default=0.0)

    def run(rank: int, index: int, lanes: tuple[str, ...], start: float) -> None:
        task = schedule.tasks[rank][index]
        end = start + _duration(task, terms[task.stage])
        done[(rank, index)] = end
        for lane in lanes:
            free[rank][lane] = end
            head[rank][lane] += 1
            events.append(Event(rank, task.stage, task.replica, lane, str(task.kind),
                                task.micro_batch, start, end))

    remaining = sum(len(row) for row in schedule.tasks)
    while remaining:
        progress = False
        for rank in range(R):
            for lane in ("compute", "upload", "download"):
                q, h = queues[rank][lane], head[rank][lane]
                if h >= len(q):
                    continue
                task = schedule.tasks[rank][q[h]]
                ready = deps_end(rank, task)
                if ready is None:
                    continue
                if task.kind != Kind.SYNC:
                    run(rank, q[h], (lane,), max(ready, free[rank][lane]))
                    remaining -= 1
                    progress = True
                    continue
                group = range(schedule.rank(task.stage, 0),
                              schedule.rank(task.stage, 0) + schedule.stage_replicas[task.stage])
                heads = [(p, key[(p, Kind.SYNC, None)]) for p in group]
                if all(_at_head(queues[p], head[p], i) for p, i in heads):
                    start = max([ready] + [max(free[p]["upload"], free[p]["download"])
                                           for p in group])
                    for p, i in heads:
                        run(p, i, ("upload", "download"), start)
                        remaining -= 1
                    progress = True
        if not progress:
            raise PlanError(f"schedule {schedule.policy!r} with d={schedule.stage_replicas}, "
                            f"M={schedule.num_micro_batches} deadlocks in the simulator; "
                            "report this as a bug")
    makespan = max((e.end for e in events), default=0.0)
    return SimResult(makespan, tuple(sorted(events, key=lambda e: (e.rank, e.start, e.lane))))


def _at_head(queues: dict[str, list[int]], head: dict[str, int], index: int) -> bool:
    """Whether task ``index`` is next on both storage lanes of a rank."""
    return all(head[lane] < len(queues[lane]) and queues[lane][head[lane]] == index
               for lane in ("upload", "download"))
