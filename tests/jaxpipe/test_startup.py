"""Start-up (`runtime.startup`): what a window's fresh invocations need before they iterate, as
hand-made metrics give it, and the longer wait of a window's first iteration, both as a pure
function and as a real two-stage rank pair of the mlp waits in this process."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from jaxpipe.runtime.event import RankEvent
from jaxpipe.runtime.metrics import CompileRecord, IterationRecord, RankMetrics
from jaxpipe.runtime.rank import Rank
from jaxpipe.runtime.startup import (
    Startup,
    first_wait_s,
    iteration_wait_s,
    stage_startups,
    window_startup_s,
)
from jaxpipe.runtime.train import TrainOptions, prepare
from planners import Plan, StagePlan, platforms
from transports import FileStore, StoreStats, store_to_spec


def ran(stage: int, cold: float, *seconds: float, compile_s: float | None = None) -> RankMetrics:
    iterations = tuple(IterationRecord(t, s, float(t)) for t, s in enumerate(seconds))
    return RankMetrics(rank=stage, stage=stage, replica=0, attempt=0, invocation=0,
                       cold_start_s=cold, billed_s=0.0, peak_rss_mb=0.0, memory_mb=1024,
                       iterations=iterations, requests=StoreStats(), timeline=(),
                       compile=None if compile_s is None else CompileRecord(compile_s=compile_s))


# -- the numbers, from hand-made metrics -------------------------------------------------------

def test_a_windows_start_up_is_its_slowest_ranks_launch_to_first_end_beyond_a_steady_one():
    # rank 0: 2 + 10 - median(1, 3) = 10; rank 1 waited on rank 0: 1 + 14 - 2 = 13
    metrics = [ran(0, 2.0, 10.0, 1.0, 3.0), ran(1, 1.0, 14.0, 2.0, 2.0, 2.0)]
    assert window_startup_s(metrics, per_iteration=99.0) == 13.0
    # a rank of one iteration is measured against the driver's steady seconds
    assert window_startup_s([ran(0, 2.0, 10.0)], per_iteration=4.0) == 8.0
    # never negative (a first iteration faster than the median), None without iterations
    assert window_startup_s([ran(0, 0.0, 1.0, 5.0)], per_iteration=1.0) == 0.0
    assert window_startup_s([ran(0, 2.0)], per_iteration=1.0) is None


def test_each_stages_start_up_is_its_slowest_replicas_cold_start_plus_compile():
    metrics = [ran(0, 3.0, 1.0, compile_s=40.0), ran(0, 5.0, 1.0, compile_s=30.0),
               ran(2, 4.0, 1.0)]  # stage 2 wrote no compile record: its cold start alone
    assert stage_startups(metrics, previous=(7.0, 8.0, 9.0)) == (43.0, 8.0, 4.0)


def test_the_plan_predicts_the_platforms_cold_start_until_a_window_is_measured():
    aws = platforms.get("aws-lambda")
    planned = Startup.planned(aws, num_stages=3)
    assert planned == Startup(aws.cold_start_s, (aws.cold_start_s,) * 3)
    assert aws.cold_start_s > 0  # the catalog prices start-up (experiments/bench_coldstart)
    measured = planned.measured([ran(1, 2.0, 12.0, 1.0, compile_s=6.0)], per_iteration=1.0)
    assert measured == Startup(13.0, (aws.cold_start_s, 8.0, aws.cold_start_s))
    assert planned.measured([], per_iteration=1.0) == planned  # nothing measured: kept


def test_the_first_iterations_wait_adds_every_other_stages_start_up():
    startups = (18.0, 25.0, 30.0)
    assert first_wait_s(120.0, 0, startups) == 120.0 + 25.0 + 30.0
    assert first_wait_s(120.0, 2, startups) == 120.0 + 18.0 + 25.0
    assert first_wait_s(120.0, 0, (18.0,)) == 120.0  # one stage: nobody to wait for
    waits = [iteration_wait_s(120.0, 1, t, start=10, startups=startups) for t in (10, 11, 12)]
    assert waits == [120.0 + 18.0 + 30.0, 120.0, 120.0]


def test_the_event_carries_the_stages_start_up():
    event = RankEvent("j", 1, {"kind": "memory"}, 0, 4, 0, 0, stages_startup_s=(18.0, 20.5))
    assert RankEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    plain = RankEvent("j", 1, {"kind": "memory"}, 0, 4, 0, 0)
    assert "stages_startup_s" not in plain.to_dict()  # an older worker's event keeps its bytes


# -- a real rank pair: the first iteration waits longer ----------------------------------------

class RecordingStore(FileStore):
    """A file store that records the timeout of every wait for a pipeline message, by
    iteration."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.waits: dict[int, set[float]] = {}
        self.lock = threading.Lock()

    def get(self, key: str, timeout: float | None = None) -> bytes:
        found = re.search(r"/it/(\d+)/(act|grad)/", key)
        if found and timeout is not None:
            with self.lock:
                self.waits.setdefault(int(found.group(1)), set()).add(timeout)
        return super().get(key, timeout)


def test_a_ranks_first_iteration_waits_longer_than_its_later_ones(tmp_path: Path):
    plan = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024)), micro_batch=4,
                global_batch=8)
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    job = prepare(TrainOptions(
        model="mlp", plan_file=str(tmp_path / "plan.json"), batch=8, iterations=3,
        optimizer="momentum", learning_rate=0.05, store=str(tmp_path / "store"),
        job_id="startup", profile_cache=str(tmp_path / "profiles"), wait_timeout_s=60))
    store = RecordingStore(str(tmp_path / "store"))
    startups = (25.0, 40.0)  # as the driver would send them
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        event = RankEvent(job.spec.job_id, rank, store_to_spec(store), start=0, stop=3,
                          attempt=0, invocation=0, link=False, stages_startup_s=startups)
        try:
            ranked = Rank(job.spec, store, event)
            ranked.run_window()
            ranked.close()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    # stage 0 waits for stage 1's gradients (60 + 40), stage 1 for stage 0's activations
    # (60 + 25), in iteration 0 only; afterwards both wait the job's 60 s
    assert store.waits[0] == {60.0 + 40.0, 60.0 + 25.0}
    assert store.waits[1] == store.waits[2] == {60.0}
    assert min(store.waits[0]) > max(store.waits[1])


@pytest.mark.parametrize("name", platforms.names())
def test_every_catalog_platform_prices_a_start_up(name):
    platform = platforms.get(name)
    assert platform.cold_start_s > 0  # measured or documented, cited in platforms.py
