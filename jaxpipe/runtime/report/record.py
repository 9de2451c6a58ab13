"""A job as the store holds it: read back from what the driver and the workers wrote under its
prefix (`jaxpipe.runtime.job`), whatever state it is in.

    job.json                 the spec and plan               always (a job exists once written)
    problem.json             the planning problem            jobs planned or summarised by train
    metrics/loss/.../<t>/rank<r>   losses per iteration      as iterations end
    metrics/rank<r>/<a>-<i>.json   per-invocation metrics    as invocations end
    status/<a>/<i>/rank<r>   how invocations ended           until the job finishes
    cancel/<a>               why an attempt was given up     until the job is cleaned up
    driver.json              the running driver's lease      while a driver runs it
    ckpt/<t>/stage<k>/...    checkpoints                     (latest complete: `checkpoint`)
    results/summary.json     the summary                     once finished

Only reading: nothing here writes or deletes, so it is safe on a running job.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field

from jaxpipe.errors import UnknownJobError
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.billing import measured_dollars
from jaxpipe.runtime.cancel import Cancellation
from jaxpipe.runtime.event import RankStatus, Status
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.runtime.metrics import LossRecord, RankMetrics
from jaxpipe.runtime.summary import Summary
from planners import Problem
from transports import ObjectStore

__all__ = ["FAILED", "FINISHED", "RUNNING", "STOPPED", "JobRecord", "job_ids", "problem_key",
           "read_job"]

FINISHED = "finished"
"""The job has its `results/summary.json`."""
RUNNING = "running"
"""No summary, and a driver holds the job's lease (`Keys.driver`; on this host: its process
still runs)."""
FAILED = "failed"
"""No summary, no driver, and the job's latest attempt recorded a failed rank or was
cancelled (`runtime.cancel`)."""
STOPPED = "stopped"
"""No summary, no driver and no failure recorded: stopped before its end (resume it)."""

_STAMP = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{6}$")


def problem_key(keys: Keys) -> str:
    """Where `train` stores the planning problem of a job (`Problem.to_dict()`)."""
    return keys.prefix + "problem.json"


@dataclass(frozen=True)
class JobRecord:
    """Everything the store holds about one job.

    Attributes:
      spec: the job's spec (plan and platform included).
      summary: its summary once finished, else None.
      problem: the planning problem it was planned or summarised with, if stored.
      losses: iteration -> mean loss, from the loss records (or the summary's).
      metrics: every invocation's metrics found, in key order.
      statuses: (attempt, invocation, rank) -> how that invocation ended, while kept.
      checkpoints: iterations of every checkpoint found, ascending.
      latest_checkpoint: the latest complete checkpoint (`checkpoint.latest_complete`).
      created: when the job was made, in epoch seconds (None: unknown).
      driver: whether a driver's lease is in the store (`Keys.driver`).
      cancellations: attempt -> why it was given up (`cancel.Cancellation`), while kept.
    """

    spec: JobSpec
    summary: Summary | None
    problem: Problem | None
    losses: dict[int, float] = field(hash=False)
    metrics: tuple[RankMetrics, ...]
    statuses: dict[tuple[int, int, int], RankStatus] = field(hash=False)
    checkpoints: tuple[int, ...]
    latest_checkpoint: int | None
    created: float | None
    driver: bool = False
    cancellations: dict[int, Cancellation] = field(default_factory=dict, hash=False)

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def state(self) -> str:
        """`FINISHED`, `RUNNING`, `FAILED` or `STOPPED` (see those constants)."""
        if self.summary is not None:
            return FINISHED
        if self.driver:
            return RUNNING
        return FAILED if self.failures or self.last_cancellation else STOPPED

    @property
    def last_cancellation(self) -> Cancellation | None:
        """The cancellation of the latest attempt the store shows, if it was cancelled."""
        attempts = ({m.attempt for m in self.metrics} | {a for a, _, _ in self.statuses}
                    | set(self.cancellations))
        return self.cancellations.get(max(attempts)) if attempts else None

    @property
    def failures(self) -> dict[tuple[int, int, int], RankStatus]:
        """The failed invocations of the latest attempt that recorded any status."""
        if not self.statuses:
            return {}
        last = max(a for a, _, _ in self.statuses)
        return {k: s for k, s in self.statuses.items()
                if k[0] == last and s.status is Status.FAILED}

    @property
    def iterations_done(self) -> int:
        """Iterations whose losses arrived."""
        return len(self.losses)

    @property
    def restarts(self) -> int:
        """The driver's restarts: the summary's, else attempts seen beyond the first."""
        if self.summary is not None:
            return self.summary.restarts
        attempts = {m.attempt for m in self.metrics} | {a for a, _, _ in self.statuses}
        return max(attempts) if attempts else 0

    @property
    def handovers(self) -> int:
        """Invocations that handed over to a fresh one (the summary's, else counted)."""
        if self.summary is not None:
            return self.summary.handovers
        windows = {(m.attempt, m.invocation) for m in self.metrics}
        return max(0, len(windows) - 1 - self.restarts)

    @property
    def dollars(self) -> float:
        """Dollars spent so far: the whole run's measured bill (`billing.measured_dollars`)."""
        if self.summary is not None:
            return self.summary.measured_run_dollars_per_iteration * max(
                len(self.summary.losses), 1)
        return measured_dollars(self.spec.platform, list(self.metrics)) if self.metrics else 0.0

    def age_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the job was made (None: unknown)."""
        if self.created is None:
            return None
        return (time.time() if now is None else now) - self.created


def job_ids(store: ObjectStore) -> list[str]:
    """Every job in the store: the folders under `jobs/` holding a `job.json`."""
    ids = set()
    for key in store.list("jobs/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "job.json":
            ids.add(parts[1])
    return sorted(ids)


def read_job(store: ObjectStore, job_id: str) -> JobRecord:
    """Reads job `job_id` from `store` (see the module docstring for what it looks at).

    Raises:
      UnknownJobError: the store has no job of that id.
    """
    keys = Keys(job_id)
    if not store.exists(keys.spec):
        known = job_ids(store)
        raise UnknownJobError(f"no job {job_id!r} in this store; its jobs: "
                              f"{', '.join(known) if known else 'none'} (`jaxpipe jobs`)")
    spec = JobSpec.from_json(store.get(keys.spec))
    listed = store.list(keys.prefix)
    summary = (Summary.from_dict(json.loads(store.get(keys.summary)))
               if keys.summary in listed else None)
    pkey = problem_key(keys)
    problem = Problem.from_dict(json.loads(store.get(pkey))) if pkey in listed else None
    metrics = tuple(RankMetrics.from_dict(json.loads(store.get(k))) for k in sorted(listed)
                    if k.startswith(keys.all_metrics()) and k.endswith(".json"))
    losses = _losses(store, keys, listed) or (dict(enumerate(summary.losses)) if summary else {})
    return JobRecord(
        spec=spec, summary=summary, problem=problem, losses=losses, metrics=metrics,
        statuses=_statuses(store, keys, listed), checkpoints=_checkpoints(keys, listed),
        latest_checkpoint=checkpoint.latest_complete(store, keys, spec.num_stages),
        created=_created(spec, metrics), driver=_driver_alive(store, keys, listed),
        cancellations=_cancellations(store, keys, listed))


def _losses(store: ObjectStore, keys: Keys, listed: list[str]) -> dict[int, float]:
    """Iteration -> mean of its micro-batch losses over the last-stage ranks, from
    `metrics/loss/<t>/rank<r>` or `metrics/loss/<t>/<attempt>/rank<r>` (the latest attempt of
    each iteration wins)."""
    prefix = keys.prefix + "metrics/loss/"
    per: dict[int, dict[int, list[float]]] = {}  # t -> attempt -> losses
    for key in sorted(k for k in listed if k.startswith(prefix)):
        parts = key[len(prefix):].split("/")
        try:
            t, attempt = int(parts[0]), int(parts[1]) if len(parts) == 3 else 0
            record = LossRecord.from_json(store.get(key))
        except (ValueError, IndexError, KeyError):
            continue  # not a loss record of either layout: skip rather than guess
        per.setdefault(t, {}).setdefault(attempt, []).extend(record.losses)
    out = {}
    for t, attempts in sorted(per.items()):
        losses = attempts[max(attempts)]
        out[t] = sum(losses) / max(1, len(losses))
    return out


def _statuses(store: ObjectStore, keys: Keys,
              listed: list[str]) -> dict[tuple[int, int, int], RankStatus]:
    prefix = keys.prefix + "status/"
    out = {}
    for key in listed:
        parts = key[len(prefix):].split("/") if key.startswith(prefix) else []
        if len(parts) != 3 or not parts[2].startswith("rank"):
            continue
        try:
            where = (int(parts[0]), int(parts[1]), int(parts[2].removeprefix("rank")))
            out[where] = RankStatus.from_dict(json.loads(store.get(key)))
        except (ValueError, KeyError):
            continue
    return out


def _driver_alive(store: ObjectStore, keys: Keys, listed: list[str]) -> bool:
    """Whether a driver holds the job's lease (`runtime.lease`): the record is there, and its
    process still runs if it is on this host (another host's driver is taken as alive)."""
    if keys.driver not in listed:
        return False
    try:
        holder = json.loads(store.get(keys.driver))
        host, pid = str(holder["host"]), int(holder["pid"])
    except (ValueError, KeyError, TypeError):
        return True  # a lease being written: count it as held
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cancellations(store: ObjectStore, keys: Keys, listed: list[str]) -> dict[int, Cancellation]:
    prefix = keys.prefix + "cancel/"
    out = {}
    for key in listed:
        attempt = key[len(prefix):] if key.startswith(prefix) else ""
        if attempt.isdigit():
            try:
                out[int(attempt)] = Cancellation.from_json(store.get(key))
            except ValueError:
                continue
    return out


def _checkpoints(keys: Keys, listed: list[str]) -> tuple[int, ...]:
    prefix = keys.checkpoints()
    found = set()
    for key in listed:
        if key.startswith(prefix):
            head = key[len(prefix):].split("/")[0]
            if head.isdigit():
                found.add(int(head))
    return tuple(sorted(found))


def _created(spec: JobSpec, metrics: tuple[RankMetrics, ...]) -> float | None:
    """The spec's record of its creation, else the job id's time stamp (local time, as
    `driver.job_id` writes it), else the start of the earliest iteration measured."""
    if isinstance(spec.meta.get("created"), int | float):
        return float(spec.meta["created"])
    stamp = _STAMP.search(spec.job_id)
    if stamp:
        return time.mktime(time.strptime(stamp.group(1), "%Y%m%d-%H%M%S"))
    starts = [r.end - r.seconds for m in metrics for r in m.iterations]
    return min(starts) if starts else None
