"""The driver: run a prepared training job on functions, survive their deaths, report.

    run       launch every rank for a window of iterations; watch the losses arrive; on a
              crash (a rank fails, is refused or goes silent) give up the attempt and restart
              from the latest complete checkpoint; at the window's end start fresh invocations
    finish    charge what the windows measured, delete the scratch keys

A window is as many iterations as fit in one invocation's time limit after its start-up
(with a safety factor), so a rank checkpoints at an iteration boundary and hands over before the
platform would kill it. The start-up is the plan's prediction for the first window, then what
the previous window measured (`runtime.startup`). When iterations run slower than predicted,
the ranks end the window early at an iteration they agree on through a hand-over marker
(`runtime.handover`); the driver reads it, continues from there, and sizes the next window
from the iterations that ran.
With `RunConfig.max_cost`, a window is also cut to what the budget still affords (`CostGuard`),
and the job stops before a window that would exceed it. The driver acts on `Outcome`s only:
each platform translates its own signals (exit codes, status records) into them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxpipe.errors import BudgetExceeded, DriverStopped, JobFailed
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.attempts import (
    RankDeath,
    Recovery,
    Window,
    failure_message,
    last_line,
    next_attempt,
    recovery,
)
from jaxpipe.runtime.billing import CostGuard, measured_dollars, steady_dollars
from jaxpipe.runtime.cancel import cancel_attempt
from jaxpipe.runtime.event import Fault, RankEvent, Stall
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import RankMetrics
from jaxpipe.runtime.patience import PatientStore
from jaxpipe.runtime.platforms import Invocation, Launcher, LocalPlatform
from jaxpipe.runtime.startup import Startup
from jaxpipe.runtime.stopping import Stopped, stop_signals
from jaxpipe.runtime.watching import WindowWatch
from planners import Schedule
from planners.schedule import build
from transports import ObjectStore, StoreError, store_to_spec

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
      stall: test hook (`event.Stall`): that rank sleeps in that iteration until little of
        its invocation is left, during the first attempt.
      emulate_time_limit: on the local platform (no `launcher` given), give every rank the
        time limit as a deadline and kill it past the limit, as Lambda does
        (`platforms.local`); off, local ranks have no deadline.
      log_dir: where rank processes write their output.
      startup_seconds: time an invocation needs before its first iteration, in seconds, for
        every window's size and budget; None (the default): the plan's prediction
        (`Platform.cold_start_s`) for the first window, then what the previous window measured
        (`runtime.startup`).
      max_cost: budget of the whole run, in the platform's currency; None means no limit.
      keep_checkpoints: complete checkpoints a finished job keeps, the final one included
        (`checkpoint.prune`, after the summary is made); 0 keeps all.
    """

    invocation_seconds: float | None = None
    max_restarts: int = 3
    link: bool = True
    faults: tuple[Fault, ...] = ()
    stall: Stall | None = None
    emulate_time_limit: bool = False
    log_dir: str = ".jaxpipe/logs"
    startup_seconds: float | None = None
    max_cost: float | None = None
    keep_checkpoints: int = 3


@dataclass
class Progress:
    """What the driver knows while a job runs; `on_iteration` sees it after every iteration."""

    losses: dict[int, float] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)  # seconds from the previous iteration
    clock: float = 0.0  # when the previous iteration (or the window's launch) ended
    restarts: int = 0
    handovers: int = 0
    early_handovers: int = 0  # of those, windows the ranks ended before their planned stop
    invocations: int = 0
    dollars: float = 0.0  # spent so far: measured windows plus estimates for failed ones


def run_job(store: ObjectStore, spec: JobSpec, start: int = 0, config: RunConfig = RunConfig(),
            on_iteration: Callable[[int, Progress], None] | None = None,
            launcher: Launcher | None = None) -> Progress:
    """Runs iterations [start, spec.iterations) of a job whose objects are in `store`.

        (1) window [t, stop)     as long as the time limit, the budget and the cap allow
              |
        (2) launch every rank    one RankEvent each, on `launcher`
              |
        (3) watch                the losses of t .. stop-1, then every rank's end
              |                  (`watching.WindowWatch`: exit codes, statuses, the markers;
              |                  a hand-over marker moves stop earlier)
        all FINISHED -------------------------- a RankDeath (FAILED, REFUSED, SILENT)
              |                                     |
        (4) charge the measured dollars;       (5) cancel the attempt (its marker) and kill
            t = stop (a handover)                  its ranks, charge its wall time; JobFailed
              |                                    after max_restarts, or at once when it
              |                                    failed as the attempt before it did
              |                                (6) `recovery`: t = the latest complete
              |                                    checkpoint, attempt + 1 (refused: cap / 2)
              +------------ back to (1) until t = spec.iterations ----------+

    The first attempt is numbered after every attempt the store shows (`next_attempt`), so a
    resumed job never reads an earlier run's messages, claims or losses. Store requests ride
    outages (`patience.PatientStore`). On SIGTERM or SIGINT (when run in the main thread), and
    on any error, the running attempt is cancelled and its ranks stopped before the error
    propagates: no rank runs on unattended.

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
      JobFailed: ranks kept dying; BudgetExceeded (a JobFailed): `config.max_cost` reached;
      NonFiniteLossError: a loss was NaN or infinite; DriverStopped: SIGTERM or SIGINT.
    """
    plan, keys = spec.plan, spec.keys
    store = PatientStore(store)
    schedule = build(plan)
    if launcher is None:
        emulated = config.invocation_seconds or spec.platform.timeout_s
        launcher = LocalPlatform(spec.platform, Path(config.log_dir) / spec.job_id,
                                 time_limit_s=emulated if config.emulate_time_limit else None)
    startup = Startup.planned(spec.platform, spec.num_stages)  # measured after each window
    guard = CostGuard(config.max_cost, spec.platform, plan,
                      startup_s=_startup_s(config, startup))
    limit = config.invocation_seconds or spec.platform.timeout_s
    per_iteration = plan.iteration_seconds or 1.0
    progress = Progress()
    cap = spec.iterations  # shrinks when ranks refuse a window they cannot finish in time
    attempt = first = next_attempt(store, keys)
    t, previous = start, None
    ranks: list[Invocation] = []
    with stop_signals():
        try:
            while t < spec.iterations:
                wanted = min(cap, window_for(limit, per_iteration,  # (1)
                                             _startup_s(config, startup)))
                stop = min(spec.iterations, t + guard.affordable(wanted, t, spec.job_id))
                window = Window(t, stop, attempt, progress.invocations)
                launched = time.time()
                ranks = _launch(launcher, store, spec, schedule, window, config,  # (2)
                                per_iteration, first, startup)
                progress.invocations += 1
                progress.clock = time.time()
                watch = WindowWatch(store, spec, schedule, window, ranks,  # (3)
                                    spec.wait_timeout_s + limit)
                death = (watch.losses(lambda t, loss: _record(t, loss, progress, on_iteration))
                         or watch.ends())
                if death is None:
                    ran = _ran(window, watch.stop, progress)
                    per_iteration, startup = _charge_window(store, spec, ran, guard, progress,
                                                            per_iteration, startup, config)
                    t, ranks = ran.stop, []  # (4)
                    continue
                _abandon(store, spec, attempt, ranks, _why(death))  # (5)
                guard.charge_failure(time.time() - launched, len(ranks))
                progress.dollars = guard.spent
                progress.restarts += 1
                tail = _tail(ranks, death.rank)
                stage = schedule.tasks[death.rank][0].stage
                if progress.restarts > config.max_restarts or _same(death, previous):
                    raise JobFailed(failure_message(death, stage, attempt, tail,
                                                    progress.restarts - 1))
                previous = death
                print(f"attempt {attempt}: {_why(death)}; restarting", file=sys.stderr)
                restart = recovery(death, window, cap,  # (6)
                                   checkpoint.latest_complete(store, keys, spec.num_stages))
                for skipped, why in checkpoint.skipped(store, keys, spec.num_stages).items():
                    print(f"checkpoint {skipped} skipped, it is corrupt: {why}", file=sys.stderr)
                _tidy(store, spec, attempt)
                attempt, t, cap, ranks = attempt + 1, restart.restart_at, restart.cap, []
        except BaseException as err:
            if ranks:
                _abandon(store, spec, attempt, ranks, f"the driver ended: {_describe(err)}")
            _tidy(store, spec, attempt)
            if isinstance(err, Stopped | KeyboardInterrupt):
                raise DriverStopped(
                    f"the driver was stopped ({_describe(err)}) in attempt {attempt}; its "
                    f"ranks were cancelled and the job {spec.job_id} is resumable: jaxpipe "
                    f"train --resume {spec.job_id} (same --store)") from None
            raise
    store.delete_prefix(keys.run(attempt))
    return progress


def _record(t: int, loss: float, progress: Progress,
            on_iteration: Callable[[int, Progress], None] | None) -> None:
    progress.losses[t] = loss
    progress.times[t] = time.time() - progress.clock
    progress.clock = time.time()
    if on_iteration:
        on_iteration(t, progress)


def _ran(window: Window, stop: int, progress: Progress) -> Window:
    """The part of `window` that ran: up to `stop`, the hand-over marker's if the ranks ended
    it early (counted in `progress`, and said on stderr)."""
    if stop >= window.stop:
        return window
    progress.early_handovers += 1
    print(f"attempt {window.attempt}: window {window.start}..{window.stop - 1} handed over "
          f"early at iteration {stop} (slower than predicted)", file=sys.stderr)
    return dataclasses.replace(window, stop=stop)


def _launch(launcher: Launcher, store: ObjectStore, spec: JobSpec, schedule: Schedule,
            window: Window, config: RunConfig, per_iteration: float, first: int,
            startup: Startup) -> list[Invocation]:
    """Launches every rank for `window`, in rank order; the fault hook in this run's first
    attempt only. Each rank learns every stage's predicted start-up (its first iteration's
    waits cover the others')."""
    fault = config.faults[0] if window.attempt == first and config.faults else None
    stall = config.stall if window.attempt == first else None
    event = RankEvent(job=spec.job_id, rank=0, store=store_to_spec(store), start=window.start,
                      stop=window.stop, attempt=window.attempt, invocation=window.invocation,
                      link=config.link, iteration_s=per_iteration, fault=fault, stall=stall,
                      stages_startup_s=startup.stages_s)
    ranks: list[Invocation] = []
    for r in range(schedule.num_ranks):  # appended one by one: a failed launch stops the rest
        ranks.append(launcher.launch(dataclasses.replace(event, rank=r),
                                     spec.plan.stages[schedule.tasks[r][0].stage].memory_mb))
    return ranks


def _abandon(store: ObjectStore, spec: JobSpec, attempt: int, ranks: list[Invocation],
             reason: str) -> None:
    """Cancels the attempt (its marker, for ranks the driver cannot kill) and kills its ranks."""
    try:
        cancel_attempt(store, spec.keys, attempt, reason)
    except StoreError as err:
        print(f"could not write the cancellation marker of attempt {attempt}: {err}",
              file=sys.stderr)
    for rank in ranks:
        rank.kill()


def _tidy(store: ObjectStore, spec: JobSpec, attempt: int) -> None:
    """Deletes a given-up attempt's messages and claims (its statuses stay: they say why)."""
    keys = spec.keys
    try:
        store.delete_prefix(keys.run(attempt))
        store.delete_many([k for k in store.list(f"{keys.prefix}status/{attempt}/")
                           if k.endswith(".claim")])
    except StoreError as err:
        print(f"could not delete attempt {attempt}'s messages: {err}", file=sys.stderr)


def _charge_window(store: ObjectStore, spec: JobSpec, window: Window, guard: CostGuard,
                   progress: Progress, per_iteration: float, startup: Startup,
                   config: RunConfig) -> tuple[float, Startup]:
    """Charges a finished window (the iterations that ran: `_ran`) its measured dollars (its
    start-up apart, `CostGuard`); returns the seconds per iteration (the median of this
    window's, its first left out: it starts up; with none left, the estimate it was sized with)
    and the start-up (this window's, `runtime.startup`) the next is sized with."""
    metrics = [RankMetrics.from_dict(json.loads(store.get(
        spec.keys.metrics(r, window.attempt, window.invocation), timeout=spec.wait_timeout_s)))
        for r in range(spec.plan.num_functions)]
    measured = [progress.times[i] for i in range(window.start + 1, window.stop)]
    per_iteration = float(np.median(measured)) if measured else per_iteration
    startup = startup.measured(metrics, per_iteration)
    guard.charge_window(measured_dollars(spec.platform, metrics), window.size,
                        _startup_s(config, startup))
    progress.dollars = guard.spent
    if window.stop < spec.iterations:
        progress.handovers += 1
    return per_iteration, startup


def _startup_s(config: RunConfig, startup: Startup) -> float:
    """The start-up windows are sized and budgeted with: the override, else the prediction."""
    return startup.window_s if config.startup_seconds is None else config.startup_seconds


def _why(death: RankDeath) -> str:
    said = last_line(death.error) or death.reason or ""
    return f"rank {death.rank} ended {death.outcome.name}" + (f": {said}" if said else "")


def _same(death: RankDeath, previous: RankDeath | None) -> bool:
    """Whether two attempts in a row failed with the same error (retrying will not help).

    The rank may differ: when every rank hits the same fault (a cut bundle), whichever fails
    first is a race."""
    return (previous is not None and death.error is not None and previous.error is not None
            and last_line(death.error) == last_line(previous.error))


def _tail(ranks: list[Invocation], rank: int) -> str:
    found = [r for r in ranks if r.rank == rank]
    return found[0].tail() if found else "(not launched)"


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, Stopped) else (type(err).__name__ + (
        f": {err}" if str(err) else ""))


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
