"""What `train` plans with, and the checks of a plan against the model before any work.

    profile_sizes        the micro-batch sizes profiled (and planned over) for a global batch
    profile_cache_path   where a model config's profile is cached
    planning_problem     profile (cached) -> `planners.Problem`, coarsened to 30 layers
    optimizer_slots      the optimizer's state per parameter, from its traced init
    plan_for             the planner's plan, expanded back to the model's layers
    check_plan           every reason a plan cannot run on this model, batch and platform
    refuse_shared_parameters   tied weights across stages, which the runtime cannot update
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxpipe.errors import PlanMismatchError, TiedParameterError
from jaxpipe.runtime import optim
from jaxpipe.runtime.optimizer import state_slots
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.staging.stage import StageProgram
from jaxpipe.staging.tracing import Traced
from planners import ModelProfile, Plan, Platform, Problem, coarsen, expand_plan
from planners import plan as make_plan
from planners.problem import ANY_SCHEDULE

__all__ = ["OPTIMIZER_SLOTS", "check_plan", "optimizer_slots", "plan_for", "planning_problem",
           "profile_cache_path", "profile_sizes", "refuse_shared_parameters"]

OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
"""Optimizer state per parameter of the named optimizers, in parameter copies, for callers
without the optimizer at hand; `planning_problem` counts the traced init's (`optimizer_slots`)."""


def profile_sizes(batch: int) -> tuple[int, ...]:
    """The micro-batch sizes `train` profiles (and plans over) for a global batch.

    Example:
      >>> profile_sizes(12)
      (1, 2, 4)
    """
    return tuple(b for b in (1, 2, 4, 8, 16) if batch % b == 0)


def planning_problem(traced: Traced, name: str, platform: Platform, options: TrainOptions,
                     data_bytes: float | None, cache_bytes: float = 0.0) -> Problem:
    """The planning problem of a job: the model's profile (the shipped one of the default job's
    model unless `options.live_profile`, `first_job.shipped_profile`; else from the cache at
    `profile_cache_path`, else measured here and cached), coarsened to at most 30 layers. The
    planner chooses the schedule too (`schedule="any"`): FuncPipe-ordered pipelines, or one
    stage accumulating gradients one micro-batch at a time (1F1B) where that is better.

    `data_bytes` is the training set stage 0 holds whole once read (no request per
    micro-batch, its bytes in memory), or None when it streams shards through a bounded cache
    (`jaxpipe.runtime.dataset.cache_shards`): then each micro-batch's input counts as a read,
    and `cache_bytes`, the shards that cache keeps, count in stage 0's memory.
    """
    from jaxpipe.runtime.first_job import shipped_profile
    from jaxpipe.staging.profiling import profile

    sizes = profile_sizes(options.batch)
    cache = profile_cache_path(options.profile_cache, name, options.model_overrides, sizes)
    shipped = None if options.live_profile else shipped_profile(
        name, options.model_overrides, sizes)
    if shipped is not None:  # the default job's, measured once on one core
        prof = ModelProfile.from_dict(json.loads(shipped.read_text()))
    elif cache.exists():
        prof = ModelProfile.from_dict(json.loads(cache.read_text()))
    else:
        prof = profile(traced, sizes, repeats=3, name=name)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(prof.to_dict()))
    if prof.num_layers > 30:
        prof = coarsen(prof, 30)
    return Problem(profile=prof, platform=platform, global_batch=options.batch,
                   micro_batches=sizes, replica_options=(1, 2, 4), schedule=ANY_SCHEDULE,
                   max_functions=options.max_functions,
                   optimizer_slots=optimizer_slots(traced, options),
                   cached_input_bytes=data_bytes, checkpoint_every=options.checkpoint_every,
                   input_cache_bytes=cache_bytes)


def profile_cache_path(folder: str | Path, name: str, overrides: dict[str, Any],
                       sizes: tuple[int, ...]) -> Path:
    """Where `train` keeps the profile of a model config at these micro-batch sizes."""
    config = json.dumps(overrides, sort_keys=True).encode()
    tag = hashlib.sha256(config).hexdigest()[:8] if overrides else "default"
    return Path(folder) / f"{name}-{tag}-{'-'.join(map(str, sizes))}.json"


def plan_for(problem: Problem, method: str, traced: Traced) -> Plan:
    """The planner's plan for `problem`, expanded back to the model's layers if the profile
    was coarsened."""
    plan = make_plan(problem, method)
    if problem.profile.num_layers != len(traced.layers):
        plan = expand_plan(plan, problem.profile)
    return plan


def check_plan(plan: Plan, traced: Traced, platform: Platform, options: TrainOptions) -> None:
    """Every reason the plan cannot run, listed at once, before any function starts."""
    problems = []
    if plan.num_layers != len(traced.layers):
        names = ", ".join(layer.name for layer in traced.layers)
        problems.append(f"the plan covers {plan.num_layers} layers; model {options.model} has "
                        f"{len(traced.layers)} ({names})")
    if plan.global_batch != options.batch:
        problems.append(f"the plan is for batch {plan.global_batch}, not --batch {options.batch}")
    for s, stage in enumerate(plan.stages):
        if plan.num_micro_batches % stage.replicas:
            problems.append(f"stage {s}: {plan.num_micro_batches} micro-batches do not divide "
                            f"over {stage.replicas} replicas")
        if stage.memory_mb not in platform.memory_options_mb:
            problems.append(f"stage {s}: {stage.memory_mb} MB is not a memory option of "
                            f"{platform.name} {platform.memory_options_mb}")
        if s < len(plan.peak_memory_mb) and plan.peak_memory_mb[s] > stage.memory_mb:
            problems.append(f"stage {s}: the plan itself predicts {plan.peak_memory_mb[s]:.0f} MB "
                            f"peak, above its {stage.memory_mb} MB cap; choose more memory")
    if problems:
        raise PlanMismatchError("the plan cannot run:\n- " + "\n- ".join(problems))


def refuse_shared_parameters(stages: Sequence[StageProgram]) -> None:
    owners: dict[str, int] = {}
    for stage in stages:
        for path in stage.spec.param_paths:
            if path in owners:
                raise TiedParameterError(
                    f"parameter {path} is used by stages {owners[path]} and {stage.spec.index} "
                    "(tied weights); the distributed runtime needs each parameter in one stage: "
                    "cut elsewhere")
            owners[path] = stage.spec.index


def optimizer_slots(traced: Traced, options: TrainOptions) -> int:
    """The job's optimizer state per parameter in parameter-sized slots (rounded up), from
    its traced init on the model's parameters (`runtime.optimizer.state_slots`); the
    optimizer is `options.optimizer`, a name (with `learning_rate`) or an optax object."""
    optimizer: Any = options.optimizer
    if isinstance(optimizer, str):
        optimizer = optim.make(optimizer, options.learning_rate)
    return state_slots(optimizer, dict(zip(traced.params.paths, traced.params.leaves)))
