"""No lane outlives its rank (`runtime.stoppable`): a rank whose attempt is cancelled while its
lanes wait for a peer that never sends returns within seconds of the marker (not at its
hour-long wait timeout), with every one of its threads ended, as a warm Lambda container needs
(its next invocation must not thaw old pollers)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from jaxpipe.runtime import worker
from jaxpipe.runtime.cancel import AttemptCancelled, cancel_attempt
from jaxpipe.runtime.event import RankEvent
from jaxpipe.runtime.stoppable import RankStopped, StoppableStore, abort
from jaxpipe.runtime.train import TrainOptions, prepare
from planners import Plan, StagePlan
from transports import store_to_spec
from transports.memory_store import MemoryStore

LANES = ("upload", "download", "cleanup")


def test_a_wait_in_a_lane_ends_when_the_rank_is_aborted():
    stop = threading.Event()
    store = StoppableStore(MemoryStore(), stop)
    store.put("here", b"1")
    pool = ThreadPoolExecutor(1, thread_name_prefix="download")
    waiting = pool.submit(store.get, "never-written", 3600)
    queued = pool.submit(store.get, "here")
    abort(stop, [pool])  # returns once the pool's thread has joined
    with pytest.raises(RankStopped):
        waiting.result(timeout=0)
    assert queued.cancelled()
    assert not any(t.name.startswith("download") for t in threading.enumerate())


def test_a_cancelled_rank_returns_with_no_lane_left(tmp_path):
    plan = Plan(stages=(StagePlan(0, 1, 1024), StagePlan(2, 3, 1024)), micro_batch=4,
                global_batch=8)
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    # An hour's wait timeout: only the cancellation marker can end rank 1's waits in time.
    job = prepare(TrainOptions(model="mlp", plan_file=str(tmp_path / "plan.json"), batch=8,
                               iterations=2, store=str(tmp_path / "store"), job_id="stop",
                               profile_cache=str(tmp_path / "profiles"), wait_timeout_s=3600))
    # Rank 1 alone: its download lane waits for rank 0's activations, which never come.
    event = RankEvent("stop", 1, store_to_spec(job.store), 0, 2, 0, 0, link=False).to_dict()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.handler(event)
        except BaseException as err:  # noqa: BLE001 - checked below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    job.store.get("jobs/stop/status/0/0/rank1.claim", timeout=600)  # it has started
    cancel_attempt(job.store, job.spec.keys, 0, "the test gave up the attempt")
    thread.join(timeout=600)
    assert not thread.is_alive()
    # cancelled, not failed: no "failed" status of its own, no marker blaming it
    assert len(errors) == 1 and isinstance(errors[0], AttemptCancelled)
    assert not job.store.exists("jobs/stop/status/0/0/rank1")
    assert not [t.name for t in threading.enumerate() if t.name.startswith(LANES)]
