"""The body of one serverless function: run one rank of a job for a window of iterations.

`handler(event, context)` is the same code on every platform. The event (`RankEvent`) carries
only small values; the rest is read from the store under the job's prefix (see
`jaxpipe.runtime.job`). The rank itself, its lanes and one iteration, is `jaxpipe.runtime.rank`.

    handler(dict)  --parse_event-->  RankEvent  --run_rank-->  RankStatus, RankMetrics
                                     TaskEvent  --platforms.aws_tasks.run_task-->  result at key
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from jaxpipe.runtime import billing, compile_cache
from jaxpipe.runtime.cancel import AttemptCancelled, RankWatch, cancel_attempt
from jaxpipe.runtime.event import RankEvent, RankStatus, Status, TaskEvent, parse_event
from jaxpipe.runtime.handover import HANDOVER_MARGIN_S, ClockDeadline, Deadline
from jaxpipe.runtime.job import JobSpec, read_spec
from jaxpipe.runtime.rank import Rank
from jaxpipe.runtime.stoppable import StoppableStore, abort
from jaxpipe.versions import check_versions
from planners import Plan, Platform
from planners.schedule import build
from transports import Backoff, ObjectStore, ThrottledStore, store_from_spec

__all__ = ["HANDOVER_MARGIN_S", "LambdaContext", "handler", "run_rank"]

_PROCESS_STARTED = billing.process_started_at()  # for the INIT phase (`billing.init_seconds`)
_IMPORTED = time.time()


class LambdaContext(Deadline, Protocol):
    """The part of Lambda's context object the worker uses (None on the local platform): its
    deadline and its request id."""

    aws_request_id: str


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The function's entry point: parses `event` once and runs it.

    A `RankEvent` runs its rank (`run_rank`); an event with a `task` field is a profiling or
    calibration run (`jaxpipe.runtime.platforms.aws_tasks.run_task`), which shares this entry
    point in the container image.

    Args:
      event: the JSON event as a dict (`RankEvent.to_dict()` or `TaskEvent.to_dict()`).
      context: Lambda's context object, or None for a local process.

    Returns:
      dict: for a rank, its `RankStatus` as a dict plus `metrics` (the metrics key, or None).
    """
    parsed = parse_event(event)
    if isinstance(parsed, TaskEvent):
        from jaxpipe.runtime.platforms.aws_tasks import run_task

        return run_task(parsed, context)
    return run_rank(parsed, context)


def run_rank(event: RankEvent, context: LambdaContext | None = None,
             on_stop: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Runs rank `event.rank` of job `event.job` for iterations [start, stop).

    (a) The first delivery of an event claims its slot (job, attempt, invocation, rank) with a
    conditional write, and a duplicate delivery (Lambda may deliver an asynchronous event
    twice) returns at once. (b) With a deadline (a `context`; on the local platform, the
    event's `deadline_at`), a window whose first iteration cannot finish in the time left is
    refused with status "refused" before any iteration starts, and one that runs slower than
    predicted ends early at an iteration boundary all ranks agree on (`runtime.handover`).
    (c) A rank that raises writes status "failed" with the traceback, then its attempt's
    cancellation marker (so its peers stop within seconds, `jaxpipe.runtime.cancel`), then
    raises. (d) A `RankWatch` follows the attempt's marker and the driver's heartbeat: it calls
    `on_stop(reason)` (the local worker exits there), and the rank raises `AttemptCancelled`
    at its next iteration; a cancelled rank writes no status.

    Returns:
      dict: `status` ("done", "handover", "refused" or "duplicate"), `next` iteration, and
      `metrics`, the metrics key (None unless the window ran).
    """
    began = time.time()
    base = store_from_spec(event.store)
    # (a) Lambda may deliver one asynchronous event twice: only the first claim runs the rank.
    token = json.dumps({"token": uuid.uuid4().hex, "at": began,
                        "request": getattr(context, "aws_request_id", None)}).encode()
    if not base.put_if_absent(event.claim_key, token):
        return _reply(RankStatus(Status.DUPLICATE, next=event.start), None)
    watch = RankWatch(base, event.keys, event.attempt, on_stop=on_stop).start()  # (d)
    try:
        return _run(event, context, _deadline(event, context), base, began, watch)
    except AttemptCancelled:
        raise
    except Exception as err:  # (c) tell the driver and the peers why, then fail
        watch.stop()
        failed = RankStatus(Status.FAILED, error=traceback.format_exc()[-4000:])
        base.put(event.status_key, json.dumps(failed.to_dict()).encode())
        cancel_attempt(base, event.keys, event.attempt, f"rank {event.rank} failed: "
                       f"{type(err).__name__}: {err}"[:500], by=f"rank {event.rank}",
                       rank=event.rank)
        raise
    finally:
        watch.stop()


def _deadline(event: RankEvent, context: Any) -> Deadline | None:
    """The invocation's deadline: the platform's context, else the event's (local emulation)."""
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        return context
    return None if event.deadline_at is None else ClockDeadline(event.deadline_at)


def _run(event: RankEvent, context: LambdaContext | None, deadline: Deadline | None,
         base: ObjectStore, began: float, watch: RankWatch) -> dict[str, Any]:
    spec = read_spec(base, event.job, timeout=60)  # CorruptJobError names the key
    check_versions(spec.job_id, spec.versions)  # VersionMismatchError: redeploy the image
    # Every wait of the rank ends once `stop` is set: no lane outlives it (`runtime.stoppable`)
    stop = threading.Event()
    store = StoppableStore(_linked(base, spec.platform) if event.link else base, stop,
                           watch.stopped)
    # The stage's compiled programs from the store, before it loads (`runtime.compile_cache`)
    cache = compile_cache.for_rank(store, spec, build(spec.plan).tasks[event.rank][0].stage,
                                   os.environ)
    try:
        rank = Rank(spec, store, event, watch, deadline)
        try:
            return _run_window(event, context, deadline, spec, base, store, began, rank, cache)
        except BaseException as err:  # failed or cancelled: stop the lanes before returning
            abort(stop, [rank.down, rank.up, rank.cleaner])
            if watch.stopped.is_set() and not isinstance(err, AttemptCancelled):
                # a wait ended by the attempt's cancellation, not a failure of this rank
                raise AttemptCancelled(watch.reason or "cancelled") from err
            raise
    finally:
        cache.close()


def _run_window(event: RankEvent, context: LambdaContext | None, deadline: Deadline | None,
                spec: JobSpec, base: ObjectStore, store: ObjectStore, began: float, rank: Rank,
                cache: compile_cache.CompileCache) -> dict[str, Any]:
    rank.after_first = cache.publish  # every program has compiled by the first iteration's end
    ready = time.time()
    refusal = deadline_refusal(event, deadline, spec.plan,
                               rank.handover.save_s if rank.handover is not None else 0.0)
    if refusal is not None:  # (b) hand the window back whole rather than die in the middle of it
        rank.close()
        base.put(event.status_key, json.dumps(refusal.to_dict()).encode())
        return _reply(refusal, None)
    rank.run_window()
    rank.close()
    done = rank.stop >= spec.iterations  # rank.stop: the event's, or a hand-over marker's
    status = RankStatus(Status.DONE if done else Status.HANDOVER, next=rank.stop)
    # On Lambda the bill starts when the handler does (queueing in the async queue is free);
    # locally the process start is part of the emulated function.
    launched = event.launched_at if event.launched_at is not None else began
    billed_from = began if context is not None else launched
    cache.publish()
    # Lambda bills a container image's INIT phase too: the first invocation of a process pays it
    init = billing.init_seconds(_PROCESS_STARTED, _IMPORTED, began) if context is not None else 0
    metrics = rank.metrics(cold_start=ready - launched, billed=time.time() - billed_from,
                           compile=cache.record(), init_s=init)
    store.put(event.metrics_key, json.dumps(metrics.to_dict()).encode())
    store.put(event.status_key, json.dumps(status.to_dict()).encode())
    return _reply(status, event.metrics_key)


def _linked(base: ObjectStore, platform: Platform) -> ThrottledStore:
    """`base` behind the platform's bandwidth and latency (the local emulation of its link)."""
    store = ThrottledStore(base, platform.uplink_bytes_per_s, platform.downlink_bytes_per_s,
                           platform.request_latency_s)
    # A message waited for is noticed at most a round trip plus one sleep late: sleeps capped
    # at the request latency, not the default 0.1 s, which a long wait reaches and which then
    # delayed every hand-off on the critical path (the extra GETs cost less than the seconds).
    store.poll = Backoff(max_s=max(Backoff.initial_s, platform.request_latency_s))
    return store


def _reply(status: RankStatus, metrics_key: str | None) -> dict[str, Any]:
    return {**status.to_dict(), "metrics": metrics_key}


def deadline_refusal(event: RankEvent, deadline: Deadline | None, plan: Plan,
                     save_s: float = 0.0) -> RankStatus | None:
    """The "refused" status if not even the window's first iteration can finish in the
    invocation's time left, else None.

    Needed time = one iteration (the driver's measurement in the event, else the plan's
    prediction) + `save_s` (the checkpoint after it, in seconds) + HANDOVER_MARGIN_S. A window
    that fits one iteration but not all of them runs and ends early instead
    (`runtime.handover`). Without a deadline (local processes, unless the platform emulates
    one) nothing is refused.

    Example:
      >>> from planners import StagePlan
      >>> class Ten:  # ten seconds left
      ...     def get_remaining_time_in_millis(self): return 10_000
      >>> plan = Plan((StagePlan(0, 0, 1024),), micro_batch=1, global_batch=1)
      >>> event = RankEvent("j", 0, {}, start=0, stop=2, attempt=0, invocation=0, iteration_s=1.0)
      >>> deadline_refusal(event, Ten(), plan, save_s=0.5).needed_s  # 1 s + 0.5 s + 15 s
      16.5
    """
    if deadline is None or not hasattr(deadline, "get_remaining_time_in_millis"):
        return None
    remaining = deadline.get_remaining_time_in_millis() / 1000.0
    per_iteration = event.iteration_s or plan.iteration_seconds or 0.0
    needed = per_iteration + save_s + HANDOVER_MARGIN_S
    if remaining >= needed:
        return None
    return RankStatus(Status.REFUSED, next=event.start, reason="deadline",
                      remaining_s=round(remaining, 3), needed_s=round(needed, 3))


def main() -> int:
    """`python -m jaxpipe.runtime.worker`: reads one event as JSON on stdin (the local platform)."""
    _die_with_parent()
    event = parse_event(json.loads(sys.stdin.read()))
    if isinstance(event, TaskEvent):
        print(json.dumps(handler(event.to_dict())))
        return 0
    try:
        result = run_rank(event, on_stop=_exit_now)
    except BaseException:  # noqa: BLE001 - the process ends here either way
        # Exit at once: a lane may be blocked in a wait for a peer that is gone, and the
        # interpreter would join it (up to the job's wait timeout) before exiting.
        traceback.print_exc()
        _exit_now(None, code=1)
    print(json.dumps(result))
    return 0


def _die_with_parent() -> None:
    """On Linux, has the kernel SIGKILL this process when its parent (the local driver) dies,
    so a killed driver leaves no rank running; elsewhere the driver's heartbeat does it, late
    (`cancel.RankWatch`)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        _exit_now("the driver is gone", code=3)


def _exit_now(reason: str | None, code: int = 3) -> None:
    """Ends this process without joining its threads (exit code 3: cancelled)."""
    if reason is not None:
        print(f"stopping: {reason}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
