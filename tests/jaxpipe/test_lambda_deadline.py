"""A Lambda rank's deadline counts from its "started" marker (the claim it writes when it takes
its slot), not from the launch: a rank queued behind throttled launches is not declared dead
while it runs, and one that never starts still is (`platforms.aws.LambdaInvocation`)."""

from __future__ import annotations

import json
import time

from jaxpipe.runtime.event import RankStatus, Status
from jaxpipe.runtime.platforms import Outcome
from jaxpipe.runtime.platforms.aws import LambdaInvocation
from transports.memory_store import MemoryStore

STATUS = "jobs/j/status/0/0/rank1"


def invocation(store: MemoryStore) -> LambdaInvocation:
    # launched long ago: the launch-time deadline has passed
    return LambdaInvocation(rank=1, function="jaxpipe-worker-1024", request_id="r", store=store,
                            status_key=STATUS, deadline=time.time() - 1.0, poll_every_s=0.0,
                            run_limit_s=960.0)


def test_a_rank_that_started_late_in_the_queue_is_still_running():
    store = MemoryStore()
    store.put(STATUS + ".claim", json.dumps({"token": "t", "at": 0}).encode())
    late = invocation(store)
    assert late.poll() is None and late.started_seen is not None
    assert late.deadline == late.started_seen + 960.0
    store.put(STATUS, json.dumps(RankStatus(Status.HANDOVER, next=4).to_dict()).encode())
    assert late.poll() is Outcome.FINISHED


def test_a_rank_that_never_started_is_silent_past_its_deadline():
    never = invocation(MemoryStore())
    assert never.poll() is Outcome.SILENT and never.started_seen is None
