"""The AWS Lambda platform: every rank one asynchronous invocation of a container-image function.

Lambda fixes memory per function, so there is one function per memory size, named
`<prefix>-<MB>` (`jaxpipe-worker-2048`); `jaxpipe deploy aws` creates them. A rank is launched
with `Invoke(InvocationType="Event")`: Lambda queues the event and answers 202 at once, and the
event is only a pointer into the store (job id, rank, window, attempt, invocation, store spec),
a few hundred bytes against the 256 KB asynchronous limit.

An asynchronous invocation has no exit code, so the handle learns how a rank ended from the
store, where the worker writes its `RankStatus` at `status/<attempt>/<inv>/rank<r>`:

    status "done" / "handover"   -> FINISHED  the window ran to its end
    status "failed"              -> FAILED    the handler raised (the error is in the status)
    status "refused"             -> REFUSED   too little time left to finish the window
    no status past the deadline  -> SILENT    killed: timeout, out of memory, or never started

(each an `Outcome`; the driver knows nothing else of Lambda.)

Lambda may deliver one event twice; the worker's claim (`put_if_absent`) makes the second
delivery exit at once, so it writes no status and the handle never sees it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from jaxpipe.errors import EventTooLargeError, LaunchError
from jaxpipe.runtime.event import RankEvent, RankStatus, Status
from jaxpipe.runtime.platforms.base import Outcome, wait_for_outcome
from planners import Platform
from transports import KeyNotFound, ObjectStore

__all__ = ["ASYNC_PAYLOAD_LIMIT", "FUNCTION_PREFIX", "AwsLambdaPlatform", "LambdaInvocation",
           "function_name", "invocation_dollars", "lambda_client"]

FUNCTION_PREFIX = "jaxpipe-worker"
"""Worker functions are `<FUNCTION_PREFIX>-<memory MB>` unless told otherwise (one fact: the
CLIs, `jaxpipe deploy aws` and `jaxpipe train` all default to it)."""
ASYNC_PAYLOAD_LIMIT = 256 * 1024  # bytes; AWS raised it to 1 MB in 2025, we keep the old bound


def function_name(memory_mb: int, prefix: str = FUNCTION_PREFIX) -> str:
    """The Lambda function that runs ranks of `memory_mb` MB, e.g. `jaxpipe-worker-2048`."""
    return f"{prefix}-{int(memory_mb)}"


def lambda_client(region_name: str | None = None, endpoint_url: str | None = None) -> Any:
    """A boto3 Lambda client whose throttled Invoke calls are retried with backoff."""
    import boto3
    import botocore.config

    config = botocore.config.Config(retries={"total_max_attempts": 8, "mode": "adaptive"},
                                    read_timeout=60)
    return boto3.client("lambda", region_name=region_name, endpoint_url=endpoint_url,
                        config=config)


def invocation_dollars(platform: Platform, memory_mb: float, billed_s: float) -> float:
    """Dollars of one invocation: billed seconds (rounded up to 1 ms) x GB, plus the request.

    Example:
      >>> from planners import platforms
      >>> round(invocation_dollars(platforms.get("aws-lambda"), 2048, 60.0), 6)
      0.002
    """
    billed = math.ceil(max(billed_s, 0.0) * 1000) / 1000
    return platform.function_dollars(memory_mb, billed) + platform.invocation_dollars(1)


@dataclass
class LambdaInvocation:
    """A launched rank; how it ended is read from its status key (module docstring).

    Attributes:
      rank: the rank.
      function: the Lambda function invoked.
      request_id: Lambda's id of the asynchronous request (find its logs with it).
      status_key: where the worker writes how the window ended.
      deadline: epoch seconds after which a rank without a status counts as killed; once the
        rank's claim (its "started" marker, written when it takes its slot) is seen, it counts
        from then: a rank that waited in Lambda's queue behind throttled launches is not
        declared dead while it runs.
      run_limit_s: seconds a started rank may run without a status (time limit plus grace).
      poll_every_s: the store is read at most this often (a poll is one GET).
    """

    rank: int
    function: str
    request_id: str
    store: ObjectStore
    status_key: str
    deadline: float
    poll_every_s: float = 5.0
    run_limit_s: float = 0.0
    started_seen: float | None = None  # when this driver first saw the rank's claim
    outcome: Outcome | None = None
    status: RankStatus | None = None
    _checked: float = 0.0

    def poll(self) -> Outcome | None:
        if self.outcome is not None or time.time() - self._checked < self.poll_every_s:
            return self.outcome
        return self._check()

    def _check(self) -> Outcome | None:
        self._checked = time.time()
        try:
            self.status = RankStatus.from_dict(json.loads(self.store.get(self.status_key)))
        except KeyNotFound:
            self._look_for_start()
            if time.time() > self.deadline:
                self.outcome = Outcome.SILENT
            return self.outcome
        self.outcome = _OUTCOMES[self.status.status]
        return self.outcome

    def _look_for_start(self) -> None:
        """Until the rank's claim is seen (one HEAD per check), look for it; once seen, the
        deadline is that moment on the driver's clock plus `run_limit_s` (no clocks of the
        driver and the function are compared)."""
        if self.started_seen is not None or not self.run_limit_s:
            return
        if self.store.exists(self.status_key + ".claim"):
            self.started_seen = time.time()
            self.deadline = self.started_seen + self.run_limit_s

    def wait(self, timeout: float) -> Outcome:
        """Blocks until the rank ends; `Outcome.SILENT` if it has not after `timeout` seconds."""
        return wait_for_outcome(self._check, timeout, self.poll_every_s)

    def kill(self) -> None:
        """Lambda cannot stop a running invocation: a rank of an abandoned attempt ends when
        its next wait times out (the job's `wait_timeout_s`), and it writes nothing useful."""

    def tail(self, lines: int = 15) -> str:
        if self.status is not None and self.status.error:
            return "\n".join(self.status.error.splitlines()[-lines:])
        if self.status is not None and self.status.status == Status.REFUSED:
            return (f"refused the window: {self.status.remaining_s} s left, "
                    f"{self.status.needed_s} s needed")
        return (f"no status from {self.function} (request {self.request_id}); its log: "
                f"aws logs tail /aws/lambda/{self.function} --since 1h "
                f"--filter-pattern '\"{self.request_id}\"'")


_OUTCOMES = {Status.DONE: Outcome.FINISHED, Status.HANDOVER: Outcome.FINISHED,
             Status.REFUSED: Outcome.REFUSED, Status.FAILED: Outcome.FAILED,
             Status.DUPLICATE: Outcome.FAILED}  # a duplicate never writes its status


class AwsLambdaPlatform:
    """Launches ranks as asynchronous invocations of `<prefix>-<MB>` functions.

    Args:
      platform: the catalog platform (time limit, prices).
      store: the job's store as the driver sees it; the handles read status keys from it.
      client: a boto3 Lambda client (default: `lambda_client()`).
      function_prefix: functions are `<prefix>-<memory MB>`.
      grace_s: seconds past the platform's time limit (plus queueing) before a rank with no
        status counts as killed.
      poll_every_s: how often a handle reads its status key.
    """

    name = "aws-lambda"

    def __init__(self, platform: Platform, store: ObjectStore, client: Any = None,
                 function_prefix: str = FUNCTION_PREFIX, grace_s: float = 60.0,
                 poll_every_s: float = 5.0) -> None:
        self.platform = platform
        self.store = store
        self.client = client if client is not None else lambda_client()
        self.function_prefix = function_prefix
        self.grace_s = grace_s
        self.poll_every_s = poll_every_s

    def launch(self, event: RankEvent, memory_mb: int) -> LambdaInvocation:
        """Invokes the rank's function asynchronously; returns once Lambda queued the event.

        Raises:
          EventTooLargeError: the event is too large for an asynchronous invocation.
          LaunchError: Lambda did not accept it (the message names the function and the answer).
        """
        # The function's own link is real: never emulate bandwidth on top of it.
        event = dataclasses.replace(event, link=False, launched_at=time.time())
        payload = json.dumps(event.to_dict(), separators=(",", ":")).encode()
        if len(payload) > ASYNC_PAYLOAD_LIMIT:
            raise EventTooLargeError(f"the event of rank {event.rank} is {len(payload)} bytes, "
                                     f"above the {ASYNC_PAYLOAD_LIMIT}-byte asynchronous limit; "
                                     "an event must point into the store, not carry data")
        name = function_name(memory_mb, self.function_prefix)
        answer = self.client.invoke(FunctionName=name, InvocationType="Event", Payload=payload)
        if answer.get("StatusCode") != 202 or answer.get("FunctionError"):
            raise LaunchError(f"Lambda did not queue rank {event.rank} on {name}: "
                               f"{answer.get('StatusCode')} {answer.get('FunctionError', '')}; "
                               "check that `jaxpipe deploy aws` created this memory size")
        request_id = answer.get("ResponseMetadata", {}).get("RequestId", "?")
        return LambdaInvocation(
            rank=event.rank, function=name, request_id=request_id, store=self.store,
            status_key=event.status_key,
            deadline=time.time() + self.platform.timeout_s + self.grace_s,
            poll_every_s=self.poll_every_s, run_limit_s=self.platform.timeout_s + self.grace_s)
