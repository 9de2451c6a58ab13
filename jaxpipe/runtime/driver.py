"""The driver: prepare a training job, run it on functions, survive their deaths, report.

    prepare   check every input, trace, profile (cached), plan, split, export, upload
    run       launch every rank for a window of iterations; watch the losses arrive; on a
              crash (a rank exits non-zero or goes silent) kill the attempt and restart from
              the latest complete checkpoint; at the window's end start fresh invocations
    finish    gather metrics, compare measured with predicted, delete scratch keys

A window is as many iterations as fit in one invocation's time limit (with a safety factor),
so a rank checkpoints at an iteration boundary and hands over before the platform would kill it.
With `RunConfig.max_cost`, a window is also cut to what the budget still affords (`CostGuard`),
and the job stops before a window that would exceed it.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxpipe.errors import BudgetExceeded, JobFailed
from jaxpipe.runtime import checkpoint
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.runtime.platforms import Launcher
from jaxpipe.runtime.platforms.aws import REFUSED
from jaxpipe.runtime.platforms.local import LocalPlatform
from planners import Plan, Platform
from planners.schedule import build
from transports import ObjectStore, store_to_spec

__all__ = ["BudgetExceeded", "CostGuard", "JobFailed", "RunConfig", "run_job"]


@dataclass(frozen=True)
class RunConfig:
    """How to run a prepared job.

    Attributes:
      invocation_seconds: time limit of one invocation (default: the platform's), seconds.
      max_restarts: crash recoveries before the job is declared failed.
      link: emulate the platform's storage bandwidth and latency in each rank.
      faults: test hook, e.g. ({"rank": 1, "iteration": 2},): that rank SIGKILLs itself
        mid-iteration during the first attempt.
      log_dir: where rank processes write their output.
      max_cost: budget of the whole run, in the platform's currency; None means no limit.
    """

    invocation_seconds: float | None = None
    max_restarts: int = 3
    link: bool = True
    faults: tuple[dict[str, int], ...] = ()
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


@dataclass
class CostGuard:
    """Keeps a run under `max_cost`: predicts a window's cost before launching it.

    Dollars per iteration are predicted from the plan (`iteration_dollars`, else its time at
    the platform's GB-s price) until a window has run, then measured from the workers' metrics
    (billed GB-s, invocations and requests; startup included). A failed window is charged its
    wall time for every function, since Lambda bills the dead ranks too.
    """

    max_cost: float | None
    platform: Platform
    plan: Plan
    spent: float = 0.0
    measured_dollars: float = 0.0
    measured_iterations: int = 0

    def per_iteration(self) -> float:
        if self.measured_iterations:
            return self.measured_dollars / self.measured_iterations
        if self.plan.iteration_dollars:
            return float(self.plan.iteration_dollars)
        return (self.plan.iteration_seconds or 1.0) * self.gb() * self.platform.price_gb_second

    def gb(self) -> float:
        return sum(s.replicas * s.memory_mb / 1024 for s in self.plan.stages)

    def affordable(self, wanted: int, t: int, job: str) -> int:
        """How many of `wanted` iterations from t fit the budget; raises if not even one."""
        if self.max_cost is None:
            return wanted
        per = self.per_iteration()
        fits = math.floor((self.max_cost - self.spent) / per) if per > 0 else wanted
        if fits < 1:
            raise BudgetExceeded(
                f"stopped before iteration {t}: {self.spent:.4f} spent, one more iteration is "
                f"predicted at {per:.4f}, and --max-cost is {self.max_cost:.4f} "
                f"({self.platform.currency}). The checkpoint of iteration {t} is in the store: "
                f"continue with `jaxpipe train --resume {job} --max-cost <larger>`.")
        return min(wanted, fits)

    def charge_window(self, dollars: float, iterations: int) -> None:
        self.spent += dollars
        self.measured_dollars += dollars
        self.measured_iterations += iterations

    def charge_failure(self, seconds: float, functions: int) -> None:
        self.spent += (seconds * self.gb() * self.platform.price_gb_second
                       + functions * self.platform.price_invocation)


def run_job(store: ObjectStore, spec: JobSpec, start: int = 0, config: RunConfig = RunConfig(),
            on_iteration: Callable[[int, Progress], None] | None = None,
            launcher: Launcher | None = None) -> Progress:
    """Runs iterations [start, spec.iterations) of a job whose objects are in `store`.

    `launcher` is the platform ranks run on (default: local processes, `LocalPlatform`).

    Raises:
      JobFailed: ranks kept dying; BudgetExceeded (a JobFailed): `config.max_cost` reached.
    """
    plan = Plan.from_dict(spec.plan)
    platform = Platform.from_dict(spec.platform)
    schedule = build(plan)
    keys = spec.keys
    if launcher is None:
        launcher = LocalPlatform(platform, Path(config.log_dir) / spec.job_id)
    guard = CostGuard(config.max_cost, platform, plan)
    cap = spec.iterations  # shrinks when ranks refuse a window they cannot finish in time
    limit = config.invocation_seconds or platform.timeout_s
    per_iteration = plan.iteration_seconds or 1.0
    progress = Progress()
    last_ranks = [schedule.rank(len(plan.stages) - 1, r) for r in range(plan.stages[-1].replicas)]
    attempt, t = 0, start
    while t < spec.iterations:
        wanted = min(cap, window_for(limit, per_iteration, config.startup_seconds))
        stop = min(spec.iterations, t + guard.affordable(wanted, t, spec.job_id))
        event = {"job": spec.job_id, "store": store_to_spec(store), "start": t, "stop": stop,
                 "attempt": attempt, "invocation": progress.invocations, "link": config.link,
                 "iteration_s": per_iteration}
        launched = time.time()
        if attempt == 0 and config.faults:
            event["fault"] = dict(config.faults[0])
        ranks = [launcher.launch({**event, "rank": r}, plan.stages[_stage(schedule, r)].memory_mb)
                 for r in range(schedule.num_ranks)]
        progress.invocations += 1
        progress.clock = time.time()
        try:
            for it in range(t, stop):
                _wait_for_losses(store, keys, it, last_ranks, ranks, spec.wait_timeout_s,
                                 progress, limit)
                if on_iteration:
                    on_iteration(it, progress)
            for rank in ranks:
                code = rank.wait(timeout=spec.wait_timeout_s)
                if code != 0:
                    raise _RankDied(rank, code)
        except _RankDied as death:
            for rank in ranks:
                rank.kill()
            guard.charge_failure(time.time() - launched, len(ranks))
            progress.dollars = guard.spent
            if death.code == REFUSED:  # the window did not fit the time left: halve it
                cap = max(1, (stop - t) // 2)
            progress.restarts += 1
            if progress.restarts > config.max_restarts:
                raise JobFailed(
                    f"rank {death.rank.rank} died (exit {death.code}) and the job has been "
                    f"restarted {config.max_restarts} times; its last output:\n"
                    f"{death.rank.tail()}\nIf it ran out of memory, give its stage more memory "
                    "in the plan.") from None
            resume = checkpoint.latest_complete(store, keys, len(plan.stages))
            store.delete_prefix(keys.run(attempt))
            attempt += 1
            t = resume if resume is not None else 0
            continue
        window_metrics = [json.loads(store.get(keys.metrics(r, attempt, event["invocation"]),
                                               timeout=spec.wait_timeout_s))
                          for r in range(schedule.num_ranks)]
        guard.charge_window(measured_dollars(platform, window_metrics), stop - t)
        progress.dollars = guard.spent
        measured = [progress.times[i] for i in range(t + 1, stop)]  # the first includes startup
        if measured:
            per_iteration = float(np.median(measured))
        if stop < spec.iterations:
            progress.handovers += 1
        t = stop
    store.delete_prefix(keys.run(attempt))
    return progress


class _RankDied(Exception):
    def __init__(self, rank: Any, code: Any):
        super().__init__(f"rank {rank.rank} ended with {code}")
        self.rank, self.code = rank, code


def _wait_for_losses(store: ObjectStore, keys: Keys, t: int, last_ranks: list[int],
                     ranks: list[Any], timeout: float, progress: Progress, limit: float) -> None:
    """Waits until every last-stage rank reported iteration t, watching for dead ranks."""
    began = time.time()
    losses: list[float] = []
    for r in last_ranks:
        while True:
            for rank in ranks:
                code = rank.poll()
                if code not in (None, 0):
                    raise _RankDied(rank, code)
            try:
                body = store.get(keys.loss(t, r), timeout=0.5)
                break
            except TimeoutError:
                if time.time() - began > timeout + limit:
                    raise _RankDied(ranks[r], "silence") from None
        losses += json.loads(body)["losses"]
    progress.losses[t] = float(np.mean(losses))
    progress.times[t] = time.time() - progress.clock
    progress.clock = time.time()


def _stage(schedule: Any, rank: int) -> int:
    return schedule.tasks[rank][0].stage


def job_id(model: str) -> str:
    """A fresh job id: the model, the time, a random suffix."""
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def measured_dollars(platform: Platform, metrics: list[dict[str, Any]]) -> float:
    """Dollars of the run at the platform's prices: GB-s of every invocation plus requests."""
    gb_s = sum(m["billed_s"] * m["memory_mb"] / 1024 for m in metrics)
    puts = sum(m["requests"]["puts"] + m["requests"]["lists"] for m in metrics)
    gets = sum(m["requests"]["gets"] + m["requests"]["heads"] + m["requests"]["misses"]
               for m in metrics)
    return (gb_s * platform.price_gb_second + len(metrics) * platform.price_invocation
            + puts * platform.price_put + gets * platform.price_get)


def steady_dollars(platform: Platform, plan: Plan, metrics: list[dict[str, Any]],
                   seconds: float, iterations: int) -> float:
    """Dollars of one steady-state iteration, comparable with the cost model's: every function's
    GB-s for `seconds`, plus the run's requests per iteration (cold starts and compilation,
    which `measured_dollars` bills, left out)."""
    gb = sum(st.replicas * st.memory_mb / 1024 for st in plan.stages)
    puts = sum(m["requests"]["puts"] + m["requests"]["lists"] for m in metrics)
    gets = sum(m["requests"]["gets"] + m["requests"]["heads"] + m["requests"]["misses"]
               for m in metrics)
    return (seconds * gb * platform.price_gb_second
            + (puts * platform.price_put + gets * platform.price_get) / iterations)


def window_for(limit: float, per_iteration: float, startup: float) -> int:
    """Iterations that fit in one invocation of `limit` seconds, with a factor 2 of slack."""
    return max(1, math.floor((limit - startup) / (2.0 * per_iteration)))
