"""The driver: prepare a training job, run it on functions, survive their deaths, report.

    prepare   check every input, trace, profile (cached), plan, split, export, upload
    run       launch every rank for a window of iterations; watch the losses arrive; on a
              crash (a rank exits non-zero or goes silent) kill the attempt and restart from
              the latest complete checkpoint; at the window's end start fresh invocations
    finish    gather metrics, compare measured with predicted, delete scratch keys

A window is as many iterations as fit in one invocation's time limit (with a safety factor),
so a rank checkpoints at an iteration boundary and hands over before the platform would kill it.
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

from jaxpipe import checkpoint
from jaxpipe.errors import JaxPipeError
from jaxpipe.job import JobSpec, Keys
from jaxpipe.platforms.local import LocalPlatform
from planners import Plan, Platform
from planners.schedule import build
from transports import ObjectStore, store_to_spec

__all__ = ["JobFailed", "RunConfig", "run_job"]


class JobFailed(JaxPipeError, RuntimeError):
    """A job could not finish: ranks kept dying, or a rank stayed silent past the timeout."""


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
    """

    invocation_seconds: float | None = None
    max_restarts: int = 3
    link: bool = True
    faults: tuple[dict[str, int], ...] = ()
    log_dir: str = ".jaxpipe/logs"
    startup_seconds: float = 20.0


@dataclass
class Progress:
    """What the driver knows while a job runs; `on_iteration` sees it after every iteration."""

    losses: dict[int, float] = field(default_factory=dict)
    times: dict[int, float] = field(default_factory=dict)  # seconds from the previous iteration
    clock: float = 0.0  # when the previous iteration (or the window's launch) ended
    restarts: int = 0
    handovers: int = 0
    invocations: int = 0


def run_job(store: ObjectStore, spec: JobSpec, start: int = 0, config: RunConfig = RunConfig(),
            on_iteration: Callable[[int, Progress], None] | None = None) -> Progress:
    """Runs iterations [start, spec.iterations) of a job whose objects are in `store`."""
    plan = Plan.from_dict(spec.plan)
    platform = Platform.from_dict(spec.platform)
    schedule = build(plan)
    keys = spec.keys
    launcher = LocalPlatform(platform, Path(config.log_dir) / spec.job_id)
    limit = config.invocation_seconds or platform.timeout_s
    per_iteration = plan.iteration_seconds or 1.0
    progress = Progress()
    last_ranks = [schedule.rank(len(plan.stages) - 1, r) for r in range(plan.stages[-1].replicas)]
    attempt, t = 0, start
    while t < spec.iterations:
        stop = min(spec.iterations, t + window_for(limit, per_iteration, config.startup_seconds))
        event = {"job": spec.job_id, "store": store_to_spec(store), "start": t, "stop": stop,
                 "attempt": attempt, "invocation": progress.invocations, "link": config.link}
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


def window_for(limit: float, per_iteration: float, startup: float) -> int:
    """Iterations that fit in one invocation of `limit` seconds, with a factor 2 of slack."""
    return max(1, math.floor((limit - startup) / (2.0 * per_iteration)))
