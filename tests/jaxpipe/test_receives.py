"""`runtime.receives`: a rank's receives are downloaded in task order, never more than two of a
kind ahead of use, each exactly once, and a whole pipeline of ranks that consume them that way
finishes under both schedules (a deadlock would time out)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from jaxpipe.runtime.receives import DEPTH, RECEIVES, Receives
from planners.schedule import Kind, Task, build

SHAPES = [((1,), 5), ((1, 1), 6), ((1, 1, 1), 7), ((2, 2), 6), ((1, 1, 1, 1), 8),
          ((3, 3, 3), 7)]
FUNCPIPE_ONLY = [((1, 2, 1), 8), ((2, 1), 5), ((1, 3), 7)]  # unequal replicas: FuncPipe order


def mb(task: Task) -> int:
    assert task.micro_batch is not None
    return task.micro_batch


def consume(tasks: tuple[Task, ...], receives: Receives) -> list[Any]:
    """Takes every receive as the compute thread does (FWD: its RECV_ACT, BWD: its RECV_GRAD)."""
    got = []
    for task in tasks:
        if task.kind == Kind.FWD:
            got.append(receives.take(Kind.RECV_ACT, mb(task), timeout=10))
        elif task.kind == Kind.BWD and any(t.kind == Kind.RECV_GRAD for t in tasks):
            got.append(receives.take(Kind.RECV_GRAD, mb(task), timeout=10))
    return got


@pytest.mark.parametrize("policy", ["funcpipe", "1f1b"])
@pytest.mark.parametrize(("reps", "M"), SHAPES)
def test_a_rank_holds_at_most_two_receives_per_kind_and_fetches_each_once_in_order(
        policy, reps, M):
    schedule = build(reps, M, policy)
    for rank, tasks in enumerate(schedule.tasks):
        fetched: list[Task] = []

        def fetch(task: Task, fetched: list[Task] = fetched) -> Any:
            fetched.append(task)
            return [(task.kind, task.micro_batch)]

        with ThreadPoolExecutor(1) as lane:
            receives = Receives(tasks, fetch, lane)
            got = consume(tasks, receives)
        expected = [t for t in tasks if t.kind in RECEIVES]
        assert fetched == expected, rank  # each once, in task order
        assert got == [[(t.kind, t.micro_batch)] for t in expected]  # each to its consumer
        assert receives.outstanding == 0  # every value dropped once taken
        assert all(1 <= receives.most[kind] <= DEPTH
                   for kind in {t.kind for t in expected}), receives.most


def test_without_a_bound_every_receive_is_queued_at_the_start():
    tasks = build([1, 1], 6, "funcpipe").tasks[1]  # the last stage: 6 RECV_ACT
    with ThreadPoolExecutor(1) as lane:
        bounded = Receives(tasks, lambda t: [t.micro_batch], lane)
        unbounded = Receives(tasks, lambda t: [t.micro_batch], lane, depth=None)
        assert (bounded.outstanding, unbounded.outstanding) == (2, 6)
        consume(tasks, bounded)
        consume(tasks, unbounded)
    assert bounded.most[Kind.RECV_ACT] == 2 and unbounded.most[Kind.RECV_ACT] == 6
    with pytest.raises(ValueError, match="depth"):
        Receives(tasks, lambda t: [], lane, depth=0)


@pytest.mark.parametrize("policy", ["funcpipe", "1f1b"])
@pytest.mark.parametrize(("reps", "M"), SHAPES)
def test_a_pipeline_of_ranks_with_bounded_receives_finishes(policy, reps, M):
    run_pipeline(build(reps, M, policy))


@pytest.mark.parametrize(("reps", "M"), FUNCPIPE_ONLY)
def test_a_replicated_funcpipe_pipeline_with_bounded_receives_finishes(reps, M):
    run_pipeline(build(reps, M, "funcpipe"))


def run_pipeline(schedule: Any) -> None:
    """Every rank on a thread: a receive waits (on its one download thread) for its peer's
    send, which the peer makes when it computes; sends never block. A cycle of waits would
    leave some receive waiting past its timeout."""
    sent: dict[tuple[str, int, int], threading.Event] = {}
    lock = threading.Lock()

    def message(kind: str, stage: int, m: int) -> threading.Event:
        with lock:
            return sent.setdefault((kind, stage, m), threading.Event())

    errors: list[BaseException] = []

    def rank(tasks: tuple[Task, ...]) -> None:
        s = tasks[0].stage
        last = s == len(schedule.stage_replicas) - 1

        def fetch(task: Task) -> list[Any]:
            if task.peer is None:
                return [task.micro_batch]  # stage 0 reads the data
            kind, peer = ("act", s - 1) if task.kind == Kind.RECV_ACT else ("grad", s + 1)
            if not message(kind, peer, mb(task)).wait(timeout=20):
                raise TimeoutError(f"stage {s} waited for {kind} {task.micro_batch}")
            return [task.micro_batch]

        try:
            with ThreadPoolExecutor(1) as lane:
                receives = Receives(tasks, fetch, lane)
                for task in tasks:
                    if task.kind == Kind.FWD:
                        receives.take(Kind.RECV_ACT, mb(task), timeout=30)
                    elif task.kind == Kind.BWD and not last:
                        receives.take(Kind.RECV_GRAD, mb(task), timeout=30)
                    elif task.kind == Kind.SEND_ACT:
                        message("act", s, mb(task)).set()
                    elif task.kind == Kind.SEND_GRAD:
                        message("grad", s, mb(task)).set()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    threads = [threading.Thread(target=rank, args=(tasks,), daemon=True)
               for tasks in schedule.tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
