"""The driver: run a prepared training job on functions, survive their deaths, report.

    run       launch every rank for a window of iterations; watch the losses arrive; on a
              crash (a rank fails, is refused or goes silent) give up the attempt and restart
              from the latest complete checkpoint; at the window's end start fresh invocations
    finish    charge what the windows measured, delete the scratch keys

A window is as many iterations as fit in one invocation's time limit (with a safety factor),
so a rank checkpoints at an iteration boundary and hands over before the platform would kill it.
With `RunConfig.max_cost`, a window is also cut to what the budget still affords (`CostGuard`),
and the job stops before a window that would exceed it. The driver acts on `Outcome`s only:
each platform translates its own signals (exit codes, status records) into them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxpipe.errors import BudgetExceeded, JobFailed
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.billing import CostGuard, measured_dollars, steady_dollars
from jaxpipe.runtime.event import Fault, RankEvent
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import LossRecord, RankMetrics
from jaxpipe.runtime.platforms import Invocation, Launcher, LocalPlatform, Outcome
from planners import Schedule
from planners.schedule import build
from transports import ObjectStore, store_to_spec

__all__ = ["BudgetExceeded", "CostGuard", "JobFailed", "Progress", "RankDeath", "Recovery",
           "RunConfig", "Window", "job_id", "measured_dollars", "recovery", "run_job",
           "steady_dollars", "window_for"]


@dataclass(frozen=True)
class RunConfig:
    """How to run a prepared job.

    Attributes:
      invocation_seconds: time limit of one invocation (default: the platform's), seconds.
      max_restarts: crash recoveries before the job is declared failed.
      link: emulate the platform's storage bandwidth and latency in each rank.
      faults: test hook, e.g. (Fault(rank=1, iteration=2),): that rank SIGKILLs itself
        mid-iteration during the first attempt.
      log_dir: where rank processes write their output.
      startup_seconds: time an invocation needs before its first iteration, seconds.
      max_cost: budget of the whole run, in the platform's currency; None means no limit.
    """

    invocation_seconds: float | None = None
    max_restarts: int = 3
    link: bool = True
    faults: tuple[Fault, ...] = ()
    log_dir: str = ".jaxpipe/logs"
    startup_seconds: float = 20.0
    max_cost: float | None = None


@dataclass
class Progress:
    """What the driver knows while a job runs; `on_iteration` sees it after every iteration."""

    losses: dict[int, float] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)  # seconds from the previous iteration
    clock: float = 0.0  # when the previous iteration (or the window's launch) ended
    restarts: int = 0
    handovers: int = 0
    invocations: int = 0
    dollars: float = 0.0  # spent so far: measured windows plus estimates for failed ones


@dataclass(frozen=True)
class Window:
    """One launch of every rank: iterations [start, stop) in attempt `attempt`, the job's
    `invocation`-th launch."""

    start: int
    stop: int
    attempt: int
    invocation: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RankDeath:
    """A rank that did not finish its window, and how it ended (never `Outcome.FINISHED`)."""

    rank: int
    outcome: Outcome


@dataclass(frozen=True)
class Recovery:
    """What the driver does after a death: start attempt + 1 at `restart_at`, with windows of
    at most `cap` iterations from then on."""

    restart_at: int
    cap: int


def recovery(death: RankDeath, window: Window, cap: int, checkpoint_at: int | None) -> Recovery:
    """The restart after `death` in `window`: from the latest complete checkpoint (0 if none).

    A refused window (too little time left in the invocation) halves the window size for the
    rest of the job; any other death keeps it.

    Example:
      >>> died = Window(start=4, stop=12, attempt=0, invocation=1)
      >>> recovery(RankDeath(1, Outcome.REFUSED), died, cap=100, checkpoint_at=4)
      Recovery(restart_at=4, cap=4)
      >>> recovery(RankDeath(1, Outcome.FAILED), died, cap=100, checkpoint_at=None)
      Recovery(restart_at=0, cap=100)
    """
    if death.outcome is Outcome.REFUSED:
        cap = max(1, window.size // 2)
    return Recovery(restart_at=checkpoint_at if checkpoint_at is not None else 0, cap=cap)


def run_job(store: ObjectStore, spec: JobSpec, start: int = 0, config: RunConfig = RunConfig(),
            on_iteration: Callable[[int, Progress], None] | None = None,
            launcher: Launcher | None = None) -> Progress:
    """Runs iterations [start, spec.iterations) of a job whose objects are in `store`.

        (1) window [t, stop)     as long as the time limit, the budget and the cap allow
              |
        (2) launch every rank    one RankEvent each, on `launcher`
              |
        (3) watch                the losses of t .. stop-1, then every rank's Outcome
              |
        all FINISHED -------------------------- a RankDeath (FAILED, REFUSED, SILENT)
              |                                     |
        (4) charge the measured dollars;       (5) kill the attempt's ranks, charge its
            t = stop (a handover)                  wall time; JobFailed after max_restarts
              |                                (6) `recovery`: t = the latest complete
              |                                    checkpoint, attempt + 1 (refused: cap / 2)
              +------------ back to (1) until t = spec.iterations ----------+

    Args:
      store: the job's store (`train.prepare` put the bundle, data and checkpoint 0 there).
      spec: the job.
      start: the first iteration; a complete checkpoint must exist there.
      config: time limits, restarts, budget and test hooks.
      on_iteration: called with (t, progress) as each iteration's losses arrive.
      launcher: the platform ranks run on (default: local processes, `LocalPlatform`).

    Returns:
      Progress: the losses, times, restarts, handovers, invocations and dollars of the run.

    Raises:
      JobFailed: ranks kept dying; BudgetExceeded (a JobFailed): `config.max_cost` reached.
    """
    plan, keys = spec.plan, spec.keys
    schedule = build(plan)
    if launcher is None:
        launcher = LocalPlatform(spec.platform, Path(config.log_dir) / spec.job_id)
    guard = CostGuard(config.max_cost, spec.platform, plan)
    limit = config.invocation_seconds or spec.platform.timeout_s
    per_iteration = plan.iteration_seconds or 1.0
    progress = Progress()
    cap = spec.iterations  # shrinks when ranks refuse a window they cannot finish in time
    attempt, t = 0, start
    while t < spec.iterations:
        wanted = min(cap, window_for(limit, per_iteration, config.startup_seconds))  # (1)
        stop = min(spec.iterations, t + guard.affordable(wanted, t, spec.job_id))
        window = Window(t, stop, attempt, progress.invocations)
        launched = time.time()
        ranks = _launch(launcher, store, spec, schedule, window, config, per_iteration)  # (2)
        progress.invocations += 1
        progress.clock = time.time()
        death = _watch(store, spec, schedule, window, ranks, progress, limit,  # (3)
                       on_iteration)
        if death is None:
            per_iteration = _charge_window(store, spec, window, guard, progress, per_iteration)
            t = stop  # (4)
            continue
        for rank in ranks:  # (5)
            rank.kill()
        guard.charge_failure(time.time() - launched, len(ranks))
        progress.dollars = guard.spent
        progress.restarts += 1
        if progress.restarts > config.max_restarts:
            raise _job_failed(death, ranks[death.rank], config.max_restarts)
        restart = recovery(death, window, cap,  # (6)
                           checkpoint.latest_complete(store, keys, spec.num_stages))
        store.delete_prefix(keys.run(attempt))
        attempt, t, cap = attempt + 1, restart.restart_at, restart.cap
    store.delete_prefix(keys.run(attempt))
    return progress


def _launch(launcher: Launcher, store: ObjectStore, spec: JobSpec, schedule: Schedule,
            window: Window, config: RunConfig, per_iteration: float) -> list[Invocation]:
    """Launches every rank for `window`, in rank order; the fault hook in attempt 0 only."""
    fault = config.faults[0] if window.attempt == 0 and config.faults else None
    event = RankEvent(job=spec.job_id, rank=0, store=store_to_spec(store), start=window.start,
                      stop=window.stop, attempt=window.attempt, invocation=window.invocation,
                      link=config.link, iteration_s=per_iteration, fault=fault)
    return [launcher.launch(dataclasses.replace(event, rank=r),
                            spec.plan.stages[schedule.tasks[r][0].stage].memory_mb)
            for r in range(schedule.num_ranks)]


def _watch(store: ObjectStore, spec: JobSpec, schedule: Schedule, window: Window,
           ranks: list[Invocation], progress: Progress, limit: float,
           on_iteration: Callable[[int, Progress], None] | None) -> RankDeath | None:
    """Follows a window: the losses of each iteration, then every rank's end; the first rank
    that did not finish, or None."""
    last = spec.num_stages - 1
    last_ranks = [schedule.rank(last, r) for r in range(spec.plan.stages[last].replicas)]
    for t in range(window.start, window.stop):
        death = _wait_for_losses(store, spec, t, last_ranks, ranks, progress, limit)
        if death is not None:
            return death
        if on_iteration:
            on_iteration(t, progress)
    for rank in ranks:
        outcome = rank.wait(timeout=spec.wait_timeout_s)
        if outcome is not Outcome.FINISHED:
            return RankDeath(rank.rank, outcome)
    return None


def _wait_for_losses(store: ObjectStore, spec: JobSpec, t: int, last_ranks: list[int],
                     ranks: list[Invocation], progress: Progress,
                     limit: float) -> RankDeath | None:
    """Waits until every last-stage rank reported iteration t, watching for dead ranks; a rank
    that stays silent for the job's wait timeout plus an invocation's limit counts as dead."""
    began = time.time()
    losses: list[float] = []
    for r in last_ranks:
        while True:
            for rank in ranks:
                outcome = rank.poll()
                if outcome is not None and outcome is not Outcome.FINISHED:
                    return RankDeath(rank.rank, outcome)
            try:
                body = store.get(spec.keys.loss(t, r), timeout=0.5)
                break
            except TimeoutError:
                if time.time() - began > spec.wait_timeout_s + limit:
                    return RankDeath(r, Outcome.SILENT)
        losses += LossRecord.from_json(body).losses
    progress.losses[t] = float(np.mean(losses))
    progress.times[t] = time.time() - progress.clock
    progress.clock = time.time()
    return None


def _charge_window(store: ObjectStore, spec: JobSpec, window: Window, guard: CostGuard,
                   progress: Progress, per_iteration: float) -> float:
    """Charges a finished window its measured dollars; returns the seconds per iteration the
    next window is sized with (the median of this one's, its first left out: startup)."""
    metrics = [RankMetrics.from_dict(json.loads(store.get(
        spec.keys.metrics(r, window.attempt, window.invocation), timeout=spec.wait_timeout_s)))
        for r in range(spec.plan.num_functions)]
    guard.charge_window(measured_dollars(spec.platform, metrics), window.size)
    progress.dollars = guard.spent
    if window.stop < spec.iterations:
        progress.handovers += 1
    measured = [progress.times[i] for i in range(window.start + 1, window.stop)]
    return float(np.median(measured)) if measured else per_iteration


def _job_failed(death: RankDeath, rank: Invocation, restarts: int) -> JobFailed:
    return JobFailed(
        f"rank {death.rank} ended {death.outcome.name} and the job has been restarted "
        f"{restarts} times; its last output:\n{rank.tail()}\nIf it ran out of memory, give "
        "its stage more memory in the plan.")


def job_id(model: str) -> str:
    """A fresh job id: the model, the time, a random suffix."""
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def window_for(limit: float, per_iteration: float, startup: float) -> int:
    """Iterations that fit in one invocation of `limit` seconds, with a factor 2 of slack.

    Example:
      >>> window_for(limit=900, per_iteration=2.0, startup=20)  # (900 - 20) / (2 x 2)
      220
      >>> window_for(limit=1, per_iteration=2.0, startup=20)  # never less than one
      1
    """
    return max(1, math.floor((limit - startup) / (2.0 * per_iteration)))
