"""Early hand-over (`jaxpipe.runtime.handover`): the decision rule on hand-made numbers, ranks
racing for the marker agree on one stop, a rank in this process ends its window at the
marker's stop with a checkpoint there, the local platform kills a rank past its time limit,
and a job whose windows were sized from a far too optimistic iteration time finishes through
early hand-overs with no restart and the losses and parameters of single-process training.

The autouse fixture of tests/jaxpipe/conftest.py fails any test here that leaves a rank
process running after it.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from jaxpipe.runtime import checkpoint, worker
from jaxpipe.runtime.driver import RunConfig, run_job
from jaxpipe.runtime.event import RankEvent, RankStatus, Stall, Status
from jaxpipe.runtime.handover import (
    ClockDeadline,
    Handover,
    HandoverMarker,
    handover_stop,
    iteration_estimate,
    read_marker,
)
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.metrics import RankMetrics
from jaxpipe.runtime.platforms import LocalPlatform, Outcome
from jaxpipe.runtime.train import prepare
from jaxpipe.tree import nest
from planners import Plan, platforms
from tests.jaxpipe import test_reliability, test_worker
from tests.jaxpipe.helpers import max_relative_error
from tests.jaxpipe.test_runtime import single_process_training
from transports import FileStore, store_to_spec

# -- the rule --------------------------------------------------------------------------------

@pytest.mark.parametrize("t, stop, remaining, per, save, expected", [
    (0, 10, 100.0, 10.0, 2.0, None),  # 2 x 10 + 2 + 15 = 37 s needed, 100 left: go on
    (0, 10, 36.9, 10.0, 2.0, 1),  # just short of 37: run t = 0, end the window at 1
    (0, 10, 37.0, 10.0, 2.0, None),  # exactly enough
    (7, 10, 5.0, 10.0, 2.0, 8),  # far too late still ends at t + 1, never at t
    (8, 10, 34.9, 10.0, 0.0, 9),  # a rank that saves nothing counts no checkpoint
    (8, 10, 35.0, 10.0, 0.0, None),  # 2 x 10 + 15 = 35: enough
    (9, 10, 0.0, 10.0, 2.0, None),  # the window's last iteration: it ends at 10 anyway
])
def test_a_rank_hands_over_at_the_next_boundary_when_two_iterations_no_longer_fit(
        t, stop, remaining, per, save, expected):
    assert handover_stop(t, stop, remaining, per, save, margin_s=15.0) == expected


@pytest.mark.parametrize("seconds, expected", [
    ([], 2.0),  # nothing measured yet: the event's estimate
    ([40.0], 40.0),  # only the first (compiling) iteration: it, on the safe side
    ([40.0, 3.0, 3.0, 3.0], 3.0),  # the first left out
    ([40.0, 3.0, 3.0, 9.0], 9.0),  # slowing down: the latest
    ([40.0, 9.0, 3.0, 3.0], 3.0),  # one slow iteration long ago: the median
])
def test_the_iteration_estimate_leaves_out_the_first_and_follows_a_slowdown(seconds, expected):
    assert iteration_estimate(seconds, predicted=2.0) == expected


class Left:
    """A deadline with `seconds` left at every look."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def handover(store: FileStore, rank: int, invocation: int, left: float) -> Handover:
    return Handover(store, Keys("race"), rank, attempt=0, invocation=invocation,
                    deadline=Left(left), predicted_s=1.0, save_s=0.0, checkpoint_every=100,
                    margin_s=1.0)


def test_ranks_racing_to_write_the_marker_agree_on_one_stop(tmp_path):
    store = FileStore(str(tmp_path))
    racers = 6
    for invocation in range(10):  # ten windows, each raced for by six short-of-time ranks
        start = threading.Barrier(racers)
        stops: dict[int, int] = {}

        def race(rank: int, invocation: int = invocation, start: threading.Barrier = start,
                 stops: dict[int, int] = stops) -> None:
            mine = handover(store, rank, invocation, left=0.5)  # 0.5 s < 2 x 1 + 1
            start.wait(timeout=30)
            stops[rank] = mine.stop_at(3, 10, [5.0, 1.0])

        threads = [threading.Thread(target=race, args=(r,)) for r in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert stops == {r: 4 for r in range(racers)}
        marker = read_marker(store, Keys("race"), 0, invocation)
        assert marker is not None and marker.stop == 4 and marker.rank in range(racers)
        # a rank with time to spare obeys it: it runs 3 and ends at the top of 4
        calm = handover(store, racers, invocation, left=1000.0)
        assert calm.stop_at(3, 10, [5.0, 1.0]) == 4 and calm.stop_at(4, 4, [5.0, 1.0]) == 4
        assert read_marker(store, Keys("race"), 0, invocation) == marker  # nobody rewrote it
    assert read_marker(store, Keys("race"), 1, 0) is None  # each attempt has its own


# -- one rank in this process ------------------------------------------------------------------

class Script:
    """A Lambda context whose remaining time is `seconds[i]` at its i-th look (the last one
    repeats)."""

    aws_request_id = "r-1"

    def __init__(self, *seconds: float):
        self.seconds = list(seconds)

    def get_remaining_time_in_millis(self) -> int:
        value = self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]
        return int(value * 1000)


def test_a_rank_short_of_time_ends_its_window_at_the_next_boundary_with_a_checkpoint(tmp_path):
    job = test_worker.prepared(tmp_path, "short", test_worker.ONE_STAGE)
    keys = job.spec.keys
    # 60 s at the refusal check, then 5 s at the top of iteration 0: too little for 0 and 1
    reply = worker.handler(test_worker.event(job, 0, iteration_s=1.0), Script(60.0, 5.0))
    assert reply["status"] == "handover" and reply["next"] == 1
    assert RankStatus.from_dict(json.loads(job.store.get(keys.status(0, 0, 0)))) == RankStatus(
        Status.HANDOVER, next=1)
    marker = read_marker(job.store, keys, 0, 0)
    assert marker is not None and (marker.stop, marker.rank, marker.remaining_s) == (1, 0, 5.0)
    assert checkpoint.latest_complete(job.store, keys, 1) == 1  # the next window resumes at 1
    metrics = RankMetrics.from_dict(json.loads(job.store.get(reply["metrics"])))
    assert [r.iteration for r in metrics.iterations] == [0]


# -- the local platform's time limit -------------------------------------------------------------

def test_the_local_platform_kills_a_rank_past_its_time_limit(tmp_path):
    store = FileStore(str(tmp_path / "store"))  # no job: the rank would wait 60 s for its spec
    platform = LocalPlatform(platforms.get("local"), tmp_path / "logs", time_limit_s=2.0)
    began = time.time()
    rank = platform.launch(RankEvent("absent", 0, store_to_spec(store), 0, 1, 0, 0), 1024)
    assert rank.deadline == pytest.approx(began + 2.0, abs=1.0)
    assert rank.wait(timeout=60) is Outcome.SILENT
    assert rank.poll() is Outcome.SILENT and rank.timed_out
    assert time.time() - began < 30
    assert "killed at its time limit" in rank.tail()


def test_a_local_rank_without_a_limit_has_no_deadline(tmp_path):
    store = FileStore(str(tmp_path / "store"))
    platform = LocalPlatform(platforms.get("local"), tmp_path / "logs")
    rank = platform.launch(RankEvent("absent", 0, store_to_spec(store), 0, 1, 0, 0), 1024)
    try:
        assert rank.deadline is None and rank.poll() is None
    finally:
        rank.kill()
    assert not rank.timed_out


# -- a whole job on the local platform -----------------------------------------------------------

LIMIT_S, LEAVE_S = 60.0, 20.0


def test_a_job_sized_from_a_far_too_optimistic_prediction_finishes_by_handing_over(tmp_path):
    # The plan predicts 10 ms per iteration, so the driver sizes the first window to all three
    # iterations; rank 0 then takes until 20 s before the 60 s limit for its iteration 0 (as a
    # far slower iteration would). At the top of iteration 1 the ranks see that 1 and 2 do
    # not fit: they end the window at 2 instead of running into the limit, where the local
    # platform, as Lambda, would kill them (and the driver restart the attempt).
    plan = Plan(stages=test_reliability.PLAN.stages, micro_batch=4,
                global_batch=test_reliability.BATCH, iteration_seconds=0.01)
    run = RunConfig(log_dir=str(tmp_path / "logs"), link=False, invocation_seconds=LIMIT_S,
                    emulate_time_limit=True, stall=Stall(rank=0, iteration=0, leave_s=LEAVE_S))
    job = prepare(test_reliability.options(tmp_path, "overrun", plan=plan, run=run))
    progress = run_job(job.store, job.spec, config=run)
    keys, iterations = job.spec.keys, test_reliability.ITERATIONS
    assert progress.restarts == 0  # nobody was killed at the limit
    assert progress.early_handovers == 1 and progress.handovers == 1
    assert progress.invocations == 2
    marker = read_marker(job.store, keys, 0, 0)
    assert marker is not None and marker.stop == 2
    ends = {(i, r): RankStatus.from_dict(json.loads(job.store.get(keys.status(0, i, r))))
            for i in (0, 1) for r in (0, 1)}
    assert ends == {(0, 0): RankStatus(Status.HANDOVER, next=2),
                    (0, 1): RankStatus(Status.HANDOVER, next=2),
                    (1, 0): RankStatus(Status.DONE, next=iterations),
                    (1, 1): RankStatus(Status.DONE, next=iterations)}
    # the first window's ranks ran iterations 0 and 1 only, the second's iteration 2
    for rank in (0, 1):
        first = RankMetrics.from_dict(json.loads(job.store.get(keys.metrics(rank, 0, 0))))
        assert [r.iteration for r in first.iterations] == [0, 1]
    expected, losses = single_process_training()
    np.testing.assert_allclose([progress.losses[t] for t in range(iterations)], losses,
                               rtol=1e-5)
    params = test_reliability.final_params(job.store, "overrun")
    assert max_relative_error(nest(params, strip="params"), expected) <= 1e-5


def test_a_clock_deadline_counts_down_to_zero():
    assert ClockDeadline(time.time() - 5).get_remaining_time_in_millis() == 0
    assert 9_000 < ClockDeadline(time.time() + 10).get_remaining_time_in_millis() <= 10_000


def test_a_marker_says_where_the_window_ends_and_why():
    marker = HandoverMarker(stop=7, rank=3, remaining_s=12.5, needed_s=40.0)
    assert json.loads(marker.to_json()) == {"stop": 7, "rank": 3, "remaining_s": 12.5,
                                            "needed_s": 40.0}
