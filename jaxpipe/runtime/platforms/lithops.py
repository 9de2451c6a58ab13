"""The Lithops platform: every rank one Lithops call of the worker handler, on any backend.

Lithops (`lithops.FunctionExecutor`) runs a Python function on aws_lambda, aliyun_fc,
gcp_functions, azure_functions, ibm_cf, code_engine, knative, k8s, ... and on `localhost`, in
local processes, by the same code path. A rank is `call_async(run_call, (payload,),
runtime_memory=<its stage's MB>, timeout=<the job's time limit>)`, where the payload is a few
hundred bytes of JSON: the rank's `RankEvent` (a pointer into the job's store, as on Lambda),
the call's time limit and memory. `run_call` runs `jaxpipe.runtime.worker.handler`, the code
every platform runs, and the functions need JaxPipe installed (`jaxpipe deploy lithops`), since
no code travels with the call (`include_modules=None`).

How a rank ended, as on Lambda, is read from the store, where the worker writes its
`RankStatus`; Lithops' own future adds what the store cannot say:

    status "done" / "handover"          -> FINISHED
    status "failed" / "refused"         -> FAILED / REFUSED
    no status, Lithops says the call    -> FAILED    killed (SIGKILL, memory, Lithops' timeout)
      ended, its reply not "duplicate"             (a duplicate ends at once: wait on)
    no status past the deadline         -> SILENT    never started, or lost

Where backends differ from Lambda: no remaining-time API (the call counts its time from its own
start against the limit it was given, `CallContext`); duplicate delivery (the worker's claim,
a conditional write on the S3 store, makes a second call of one event return at once); a kill
(localhost: the call's process group; a cloud call cannot be stopped from outside: it sees its
attempt's cancellation marker within a second and ends its own process, `jaxpipe.runtime.
cancel`). Lithops' invocation protocol pickles the call into Lithops' own prefix of its storage
bucket (`lithops.jobs/`); everything JaxPipe writes stays JSON and raw arrays under `jobs/`.
Billing: each call's seconds from Lithops' call statistics, priced by the job's catalog
(`LithopsPlatform.bill`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jaxpipe.errors import EventTooLargeError
from jaxpipe.runtime.event import RankEvent, RankStatus
from jaxpipe.runtime.platforms.aws import ASYNC_PAYLOAD_LIMIT
from jaxpipe.runtime.platforms.base import Outcome, wait_for_outcome
from jaxpipe.runtime.platforms.lithops_config import LithopsSettings, interpreter
from jaxpipe.runtime.platforms.local import MIN_MEMORY_MB, worker_env
from planners import Platform
from transports import KeyNotFound, ObjectStore

__all__ = ["REPORT_WAIT_S", "CallContext", "CallRecord", "LithopsInvocation", "LithopsPlatform",
           "run_call"]

REPORT_WAIT_S = 60.0
"""Seconds the bill waits for Lithops' reports of calls whose ranks finished."""


@dataclass  # not frozen: the worker's LambdaContext protocol declares a plain attribute
class CallContext:
    """What the worker asks of its platform, for a Lithops call (Lambda's context's part).

    Lithops has no remaining-time API on most backends; the call knows when it started and the
    limit it was given, and the backend kills it at that limit.
    """

    started: float
    timeout_s: float
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.started + self.timeout_s - time.time()) * 1000)


def run_call(payload: str) -> str:
    """The function every Lithops call runs: one rank's window, through the worker handler.

    `payload` is JSON: {"event": RankEvent dict, "timeout_s", "memory_mb", "cap"}; with "cap"
    (localhost) the call caps its own memory as the local platform does. Returns the
    handler's reply as JSON (Lithops keeps it; the driver reads the status from the store).
    """
    started = time.time()
    data = json.loads(payload)
    if data.get("cap"):
        import resource

        cap = max(int(data["memory_mb"]), MIN_MEMORY_MB) * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    _s3_credentials_from_alibaba()
    from jaxpipe.runtime.event import parse_event
    from jaxpipe.runtime.worker import handler, run_rank

    context = CallContext(started, float(data["timeout_s"]),
                          os.environ.get("__LITHOPS_ACTIVATION_ID", "?"))
    event = parse_event(data["event"])
    if isinstance(event, RankEvent):  # a cancelled attempt ends the call at once
        return json.dumps(run_rank(event, context, on_stop=_end_call))
    return json.dumps(handler(data["event"], context))


def _end_call(reason: str) -> None:
    """Ends this call's process now (its lanes may be blocked in waits for peers that are
    gone). Lithops runs the function in a process of its own (its JobRunner), which reports
    the call as ended without a result; a cancelled rank writes no status."""
    print(f"stopping: {reason}", flush=True)
    os._exit(3)


def _s3_credentials_from_alibaba() -> None:
    """[ASSUMED] Function Compute hands a function its role's keys as ALIBABA_CLOUD_*; OSS's
    S3 API takes them as AWS_* (docs/alibaba.md says to check this on the account)."""
    env = os.environ
    if "AWS_ACCESS_KEY_ID" in env or "ALIBABA_CLOUD_ACCESS_KEY_ID" not in env:
        return
    env["AWS_ACCESS_KEY_ID"] = env["ALIBABA_CLOUD_ACCESS_KEY_ID"]
    env["AWS_SECRET_ACCESS_KEY"] = env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "")
    if env.get("ALIBABA_CLOUD_SECURITY_TOKEN"):
        env["AWS_SESSION_TOKEN"] = env["ALIBABA_CLOUD_SECURITY_TOKEN"]


@dataclass(frozen=True)
class CallRecord:
    """One call as Lithops measured it: `seconds` is its worker time (worker_end_tstamp -
    worker_start_tstamp), None when the call died before reporting."""

    rank: int
    attempt: int
    invocation: int
    memory_mb: int
    seconds: float | None
    activation_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LithopsInvocation:
    """A launched rank: its Lithops future and its status key (module docstring).

    Attributes:
      future: Lithops' `ResponseFuture` of the call.
      status_key: where the worker writes how the window ended.
      deadline: epoch seconds after which a rank with no status and no end counts as lost.
      stop: kills the call where the backend can (localhost).
    """

    rank: int
    attempt: int
    invocation: int
    memory_mb: int
    future: Any
    store: ObjectStore
    status_key: str
    deadline: float
    stop: Callable[[Any], None]
    poll_every_s: float = 1.0
    outcome: Outcome | None = None
    status: RankStatus | None = None
    _checked: float = 0.0
    _duplicate: bool | None = None

    def poll(self) -> Outcome | None:
        if self.outcome is not None or time.time() - self._checked < self.poll_every_s:
            return self.outcome
        return self._check()

    def duplicate(self) -> bool:
        """Whether the call that ended was a second delivery of its event, which returned
        "duplicate" at once while the delivery that claimed the slot runs the rank (read once,
        from the call's result: one GET)."""
        if self._duplicate is None:
            found = False
            try:
                reply = None if self.future.error else self.future.result(throw_except=False)
                found = isinstance(reply, str) and json.loads(reply).get("status") == "duplicate"
            except Exception:  # no result: it died, or its result is not the handler's
                found = False
            self._duplicate = found
            return found
        return self._duplicate

    def ended(self) -> bool:
        """Whether Lithops reported the call over (its status arrived, or it failed)."""
        f = self.future
        return bool(f.ready or f.done or f.error or f.success)

    def _check(self) -> Outcome | None:
        self._checked = time.time()
        ended = self.ended()  # before the read: a status written before the end is seen
        try:
            self.status = RankStatus.from_dict(json.loads(self.store.get(self.status_key)))
        except KeyNotFound:
            if ended and not self.duplicate():  # it ended, and wrote no status: it died
                self.outcome = Outcome.FAILED
            elif time.time() > self.deadline:
                self.outcome = Outcome.SILENT
            return self.outcome
        self.outcome = _OUTCOMES[str(self.status.status)]
        return self.outcome

    def wait(self, timeout: float) -> Outcome:
        """Blocks until the rank ends; `Outcome.SILENT` if it has not after `timeout` seconds."""
        return wait_for_outcome(self._check, timeout, self.poll_every_s)

    def kill(self) -> None:
        """Stops the call if it still runs (localhost: its process group; a cloud call ends
        itself on its attempt's cancellation marker, and writes nothing the next attempt
        reads)."""
        if self.outcome is None and not self.ended():
            self.stop(self.future)

    def tail(self, lines: int = 15) -> str:
        if self.status is not None and self.status.error:
            return "\n".join(self.status.error.splitlines()[-lines:])
        logs = getattr(self.future, "logs", None) or ""
        said = "Lithops reports the call ended" if self.ended() else "no end reported"
        return "\n".join([f"(no status from rank {self.rank}; {said}; Lithops call "
                          f"{self.future.job_key}/{self.future.call_id}, `lithops logs` has "
                          "its output)", *logs.splitlines()[-lines:]])

    def record(self) -> CallRecord:
        """This call's seconds and id from Lithops' statistics (None if it died unreported)."""
        seconds, activation = None, getattr(self.future, "activation_id", None)
        if self.ended() and not self.future.error:
            try:
                self.future.status(throw_except=False)
                stats = self.future.stats
                seconds = float(stats["worker_end_tstamp"] - stats["worker_start_tstamp"])
                activation = self.future.activation_id
            except Exception:  # a call that died reports an exception Lithops may not unpickle
                seconds = None
        return CallRecord(self.rank, self.attempt, self.invocation, self.memory_mb, seconds,
                          activation)


_OUTCOMES = {"done": Outcome.FINISHED, "handover": Outcome.FINISHED,
             "refused": Outcome.REFUSED, "failed": Outcome.FAILED,
             "duplicate": Outcome.FAILED}  # a duplicate never writes its status


class LithopsPlatform:
    """Launches ranks as Lithops calls on the configured backend (module docstring).

    Args:
      platform: the job's catalog platform (prices, time limit: `lithops_config.job_platform`).
      store: the job's store as the driver sees it; the handles read status keys from it.
      settings: the checked Lithops config (`lithops_config.load_settings`).
      executor: a `lithops.FunctionExecutor` (default: one from `settings`).
      grace_s: seconds past the time limit before a rank with no status counts as lost.
      poll_every_s: how often a handle reads its status key.
    """

    name = "lithops"

    def __init__(self, platform: Platform, store: ObjectStore, settings: LithopsSettings,
                 executor: Any = None, grace_s: float = 60.0, poll_every_s: float = 1.0) -> None:
        self.platform = platform
        self.store = store
        self.settings = settings
        self.local = settings.mode == "localhost"
        self.executor = executor if executor is not None else self._executor()
        self.grace_s = grace_s
        self.poll_every_s = poll_every_s
        self.calls: list[LithopsInvocation] = []

    def _executor(self) -> Any:
        import lithops

        config = json.loads(json.dumps(self.settings.config))  # a copy Lithops may complete
        if self.local:  # this interpreter has JaxPipe; the first `python` on PATH may not
            config.setdefault("localhost", {}).setdefault("runtime", interpreter())
        return lithops.FunctionExecutor(config=config, log_level=None)

    def launch(self, event: RankEvent, memory_mb: int) -> LithopsInvocation:
        """Calls `run_call` for one rank with its stage's memory; returns once Lithops invoked it.

        Raises:
          EventTooLargeError: the payload is not a small pointer into the store.
        """
        # A cloud function's link is real: emulate bandwidth only for local processes.
        event = dataclasses.replace(event, link=event.link and self.local,
                                    launched_at=time.time())
        payload = json.dumps({"event": event.to_dict(), "timeout_s": self.platform.timeout_s,
                              "memory_mb": int(memory_mb), "cap": self.local},
                             separators=(",", ":"))
        if len(payload) > ASYNC_PAYLOAD_LIMIT:
            raise EventTooLargeError(f"the payload of rank {event.rank} is {len(payload)} bytes; "
                                     "an event must point into the store, not carry data")
        # Localhost calls inherit this process's environment, as local ranks do; the same
        # XLA flags on top, so both platforms compute bitwise the same.
        env = (worker_env(self.platform, memory_mb, os.environ.get("XLA_FLAGS", ""))
               if self.local else {})
        future = self.executor.call_async(run_call, (payload,), extra_env=env,
                                          runtime_memory=int(memory_mb),
                                          timeout=int(self.platform.timeout_s),
                                          include_modules=None)
        call = LithopsInvocation(
            rank=event.rank, attempt=event.attempt, invocation=event.invocation,
            memory_mb=int(memory_mb), future=future, store=self.store,
            status_key=event.status_key,
            deadline=time.time() + self.platform.timeout_s + self.grace_s, stop=self._stop,
            poll_every_s=self.poll_every_s)
        self.calls.append(call)
        return call

    def _stop(self, future: Any) -> None:
        """Kills one call: Lithops clears its job (each call_async is a job of its own)."""
        handler = self.executor.compute_handler
        try:
            handler.clear(job_keys=[future.job_key], exception=True)
        except Exception:  # a backend that cannot stop it: the attempt's marker will
            return
        if self.local:
            # With no call left, the localhost backend stops its consumers and its job manager
            # exits; a launch before it has gone would queue behind no consumer.
            end = time.time() + 10.0
            while (time.time() < end and getattr(handler, "job_manager", None) is not None
                   and all(latch.done for latch in handler.env.jobs.values())):
                time.sleep(0.05)

    def bill(self) -> dict[str, Any]:
        """Every call's seconds from Lithops' statistics at the catalog's prices: each call's
        GB-s and one invocation; a call that died unreported is counted with no seconds."""
        # A rank's status is written before its call returns, and Lithops reports the return
        # a monitoring interval later: wait for the reports of the calls that ran to the end.
        ran = [c.future for c in self.calls
               if c.outcome in (Outcome.FINISHED, Outcome.REFUSED) and not c.ended()]
        if ran:
            try:
                self.executor.wait(fs=ran, throw_except=False, timeout=REPORT_WAIT_S,
                                   show_progressbar=False, clean_jobs=False)
            except Exception:  # a report that never comes leaves that call unreported
                pass
        records = [c.record() for c in self.calls]
        dollars = sum(self.platform.function_dollars(r.memory_mb, r.seconds or 0.0)
                      for r in records) + self.platform.invocation_dollars(len(records))
        return {"backend": self.settings.backend, "catalog": self.platform.name,
                "currency": self.platform.currency, "dollars": dollars,
                "seconds": sum(r.seconds or 0.0 for r in records),
                "unreported": sum(r.seconds is None for r in records),
                "calls": [r.to_dict() for r in records]}

    def close(self) -> None:
        """Stops Lithops' monitor and calls, and deletes this executor's objects under
        `lithops.jobs/` now, while the storage is surely there (Lithops' own cleaner would run
        at the interpreter's exit, in a process of its own)."""
        executor = self.executor
        executor.__exit__(None, None, None)
        try:
            internal = executor.internal_storage
            keys = internal.storage.list_keys(internal.bucket,
                                              f"lithops.jobs/{executor.executor_id}")
            if keys:
                internal.storage.delete_objects(internal.bucket, keys)
            executor.data_cleaner = False  # nothing is left for the cleaner at exit
        except Exception:  # the storage is gone: Lithops' cleaner tries again at exit
            pass
