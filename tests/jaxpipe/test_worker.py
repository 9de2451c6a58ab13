"""The worker in this process: `handler` runs ranks of small mlp jobs that `train.prepare` put
in a directory store, one thread per rank, with no driver. Each rank runs every task of its
schedule, once per iteration, on the lane the schedule names; a two-stage pipeline gives the
losses of one stage; duplicates, deadlines, failures and task events end as documented."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxpipe.errors import UnknownTaskError
from jaxpipe.runtime import checkpoint, worker
from jaxpipe.runtime.event import RankEvent, RankStatus, Status, TaskEvent
from jaxpipe.runtime.metrics import LossRecord, RankMetrics
from jaxpipe.runtime.train import Prepared, TrainOptions, prepare
from planners import Plan, StagePlan
from planners.schedule import Kind, Task, build, lane_of
from transports import FileStore, store_to_spec

BATCH, ITERATIONS = 16, 2
ONE_STAGE = Plan(stages=(StagePlan(0, 3, 1024),), micro_batch=4, global_batch=BATCH)
TWO_STAGES = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024)), micro_batch=4,
                  global_batch=BATCH)
# 1F1B on three stages: each rank alternates forwards and backwards, its receives of both kinds
# interleaved in its task list (`runtime.receives` downloads them at most two ahead per kind)
THREE_1F1B = Plan(stages=(StagePlan(0, 0, 1024), StagePlan(1, 2, 1024), StagePlan(3, 3, 1024)),
                  micro_batch=2, global_batch=BATCH, schedule="1f1b")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker")


def prepared(workdir: Path, job: str, plan: Plan) -> Prepared:
    (workdir / f"{job}-plan.json").write_text(json.dumps(plan.to_dict()))
    return prepare(TrainOptions(
        model="mlp", plan_file=str(workdir / f"{job}-plan.json"), batch=BATCH,
        iterations=ITERATIONS, optimizer="momentum", learning_rate=0.05,
        store=str(workdir / "store"), job_id=job, profile_cache=str(workdir / "profiles"),
        wait_timeout_s=60))


def event(job: Prepared, rank: int, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict(start=0, stop=ITERATIONS, attempt=0, invocation=0, link=False)
    values.update(fields)
    return RankEvent(job.spec.job_id, rank, store_to_spec(job.store), **values).to_dict()


def run_ranks(job: Prepared) -> dict[int, Any]:
    """Every rank's handler on its own thread, as functions would run; rank -> reply."""
    results: dict[int, Any] = {}

    def run(rank: int) -> None:
        try:
            results[rank] = worker.handler(event(job, rank))
        except BaseException as err:  # noqa: BLE001 - reported by the test
            results[rank] = err

    threads = [threading.Thread(target=run, args=(r,), daemon=True)
               for r in range(job.spec.plan.num_functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def task_name(task: Task) -> str:
    return str(task.kind) if task.micro_batch is None else f"{task.kind} {task.micro_batch}"


def metrics_of(job: Prepared, rank: int) -> RankMetrics:
    return RankMetrics.from_dict(json.loads(job.store.get(job.spec.keys.metrics(rank, 0, 0))))


def losses_of(job: Prepared, rank: int) -> list[float]:
    return [x for t in range(ITERATIONS)
            for x in LossRecord.from_json(job.store.get(job.spec.keys.loss(t, rank, 0))).losses]


@pytest.fixture(scope="module")
def one_stage(workdir) -> tuple[Prepared, dict[int, Any]]:
    job = prepared(workdir, "one", ONE_STAGE)
    return job, run_ranks(job)


@pytest.fixture(scope="module")
def two_stages(workdir) -> tuple[Prepared, dict[int, Any]]:
    job = prepared(workdir, "two", TWO_STAGES)
    return job, run_ranks(job)


@pytest.fixture(scope="module")
def three_1f1b(workdir) -> tuple[Prepared, dict[int, Any]]:
    job = prepared(workdir, "three-1f1b", THREE_1F1B)
    return job, run_ranks(job)


def test_a_plan_file_prepares_without_profiling(workdir, one_stage):
    job, _ = one_stage
    assert not list((workdir / "profiles").glob("*.json"))  # nothing profiled yet
    assert job.problem is not None  # ... until the summary asks for its predictions


@pytest.mark.parametrize("case", ["one_stage", "two_stages", "three_1f1b"])
def test_every_rank_runs_each_task_of_its_schedule_once_per_iteration(case, request):
    job, results = request.getfixturevalue(case)
    schedule = build(job.spec.plan)
    for rank in range(schedule.num_ranks):
        assert results[rank] == {"status": "done", "next": ITERATIONS,
                                 "metrics": job.spec.keys.metrics(rank, 0, 0)}, results[rank]
        metrics = metrics_of(job, rank)
        assert [r.iteration for r in metrics.iterations] == list(range(ITERATIONS))
        assert metrics.timeline_from == 0  # short runs keep the whole timeline
        expected = Counter(task_name(t) for t in schedule.tasks[rank])
        for t in range(ITERATIONS):
            spans = metrics.spans_of(t)
            assert Counter(s.name for s in spans) == expected
            for s in spans:
                lane = lane_of(Kind(s.kind))
                assert s.lane == lane and s.end >= s.start
        assert sum(r.spans or 0 for r in metrics.iterations) == len(metrics.timeline)
        status = RankStatus.from_dict(json.loads(job.store.get(job.spec.keys.status(0, 0, rank))))
        assert status == RankStatus(Status.DONE, next=ITERATIONS)


@pytest.mark.parametrize("case", ["one_stage", "two_stages", "three_1f1b"])
def test_the_window_ends_with_a_complete_checkpoint_and_no_messages_left(case, request):
    job, _ = request.getfixturevalue(case)
    assert checkpoint.latest_complete(job.store, job.spec.keys, job.spec.num_stages) == ITERATIONS
    assert job.store.list(job.spec.keys.run(0)) == []  # consumed messages were deleted


def test_two_pipelined_stages_give_the_losses_of_one_stage(one_stage, two_stages):
    one, _ = one_stage
    two, _ = two_stages
    expected = losses_of(one, 0)
    assert len(expected) == ITERATIONS * ONE_STAGE.num_micro_batches
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(losses_of(two, 1), expected, rtol=1e-5)


def test_three_stages_under_1f1b_give_the_losses_of_one_stage(one_stage, three_1f1b):
    # micro-batches of 2 instead of 4: each of the 4-sample losses is the mean of two of them
    one, _ = one_stage
    three, _ = three_1f1b
    pairs = np.asarray(losses_of(three, 2)).reshape(-1, 2).mean(axis=1)
    np.testing.assert_allclose(pairs, losses_of(one, 0), rtol=1e-5)


def test_a_second_delivery_of_an_event_does_nothing(one_stage):
    job, _ = one_stage
    before = set(job.store.list(job.spec.keys.prefix))
    assert worker.handler(event(job, 0)) == {"status": "duplicate", "next": 0, "metrics": None}
    assert set(job.store.list(job.spec.keys.prefix)) == before


class Seconds:
    """A Lambda context with this many seconds left."""

    def __init__(self, seconds: float):
        self.deadline = time.time() + seconds
        self.aws_request_id = "r-1"

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.deadline - time.time()) * 1000)


def test_a_window_whose_first_iteration_cannot_finish_in_the_time_left_is_refused(one_stage):
    job, _ = one_stage
    reply = worker.handler(event(job, 0, attempt=7, iteration_s=1.0), Seconds(5.0))
    assert reply["status"] == "refused" and reply["next"] == 0 and reply["metrics"] is None
    # one iteration, the checkpoint after it (a small MLP's: well under a second) and the margin
    margin = worker.HANDOVER_MARGIN_S
    assert 1.0 + margin < reply["needed_s"] < 2.0 + margin
    stored = RankStatus.from_dict(json.loads(job.store.get(job.spec.keys.status(7, 0, 0))))
    assert stored.status is Status.REFUSED and stored.reason == "deadline"
    assert not job.store.exists(job.spec.keys.metrics(0, 7, 0))


def test_a_rank_that_raises_writes_failed_with_its_traceback(workdir):
    job = prepared(workdir, "broken", ONE_STAGE)
    spec = json.loads(job.store.get(job.spec.keys.spec))
    job.store.put(job.spec.keys.spec, json.dumps({**spec, "wait_timeout_s": 0.2}).encode())
    job.store.delete(job.spec.keys.bundle)  # the rank cannot load its program
    with pytest.raises(TimeoutError):
        worker.handler(event(job, 0))
    status = RankStatus.from_dict(json.loads(job.store.get(job.spec.keys.status(0, 0, 0))))
    assert status.status is Status.FAILED and "bundle.zip" in (status.error or "")


def test_an_unknown_task_is_reported_at_its_key(tmp_path):
    store = FileStore(str(tmp_path))
    task = TaskEvent("juggle", store_to_spec(store), "jobs/calibration-x/juggle.json", 1024)
    with pytest.raises(UnknownTaskError, match="unknown task 'juggle'"):
        worker.handler(task.to_dict())
    assert "UnknownTaskError" in json.loads(store.get(task.key))["error"]
