"""`jaxpipe train`: from a zoo model name to a trained model on emulated serverless functions.

`prepare` checks every input before any work starts (unknown names, an existing job id, a plan
file that does not parse), then traces, plans (profiling, cached, only when there is no plan
file), checks the plan against the model (layers, batch, memory caps, tied weights), splits,
exports and uploads the job. `train` runs it with `jaxpipe.runtime.driver.run_job` and returns
the `Summary`: losses, time and dollars per iteration measured against the cost model's and the
simulator's predictions (a run from a plan file profiles for those only at the end).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from jaxpipe import models
from jaxpipe.errors import (
    JobExistsError,
    PlatformError,
    UnknownPlatformError,
)
from jaxpipe.runtime import (
    checkpoint,
    dataset,
    evaluation,
    first_job,
    lithops_job,
    optim,
    sources,
    zoo,
)
from jaxpipe.runtime.driver import Progress, job_id, run_job
from jaxpipe.runtime.input_checks import (
    check_memory_floor,
    check_options,
    check_store_location,
    read_plan_file,
)
from jaxpipe.runtime.job import JobSpec, Keys
from jaxpipe.runtime.metrics import RankMetrics
from jaxpipe.runtime.optimizer import OptimizerPrograms, compile_optimizer
from jaxpipe.runtime.options import TrainOptions
from jaxpipe.runtime.planning import (
    check_plan,
    plan_for,
    planning_problem,
    refuse_shared_parameters,
)
from jaxpipe.runtime.platforms import Launcher
from jaxpipe.runtime.progress_bar import progress_bar
from jaxpipe.runtime.resume import claim, fill_losses, resume_point
from jaxpipe.runtime.summary import Summary, summarize
from jaxpipe.runtime.training_setup import TrainingSetup
from jaxpipe.runtime.zoo import linen_module, trains_on_digits
from jaxpipe.staging.counters import counter_steps
from jaxpipe.staging.nnx_trace import NnxTraced
from jaxpipe.staging.split import Staged
from jaxpipe.staging.stage import StageProgram
from jaxpipe.staging.tracing import Traced, trace
from jaxpipe.versions import driver_versions
from planners import Plan, Platform, Problem, platforms
from transports import FileStore, ObjectStore, S3Store

__all__ = ["Prepared", "TrainOptions", "TrainingSetup", "dataset_bytes", "first_rows",
           "linen_module", "open_store", "prepare", "train", "trains_on_digits",
           "training_data"]

RUNNABLE_PLATFORMS = ("local", "local-small", "aws-lambda", lithops_job.PLATFORM)

MIB = 2**20
DATA_CACHE_SHARE = 0.25
"""Share of the platform's smallest memory option stage 0 may fill with the training set."""


@dataclass(frozen=True)
class Prepared:
    """A job ready to run: its spec in the store, and what the summary needs.

    Attributes:
      spec: the job, as stored.
      store: the job's store.
      setup: the model, loss and data it was made from (None: a resumed job without them);
        its evaluation data is scored at the end.
      problem: builds (once, then cached) the planning problem the summary predicts with; None
        for no predictions (a resumed job). Without a plan file it is the problem the plan was
        made from; with one it profiles only when first called.
    """

    spec: JobSpec
    store: ObjectStore
    setup: TrainingSetup | None = None
    problem: Callable[[], Problem] | None = None


@dataclass(frozen=True)
class _Checked:
    """What `_validate` found: the inputs resolved, before any work."""

    setup: TrainingSetup
    data: sources.Examples
    platform: Platform
    optimizer: optax.GradientTransformation
    store: ObjectStore
    job_id: str


def open_store(location: str, endpoint_url: str | None = None,
               region_name: str | None = None) -> ObjectStore:
    """`s3://bucket` (any S3 API server with `endpoint_url`; in `region_name` if given) or a
    directory for a FileStore."""
    if location.startswith("s3://"):
        return S3Store(location[5:].strip("/"), endpoint_url=endpoint_url,
                       region_name=region_name)
    return FileStore(location)


def prepare(options: TrainOptions, setup: TrainingSetup | None = None) -> Prepared:
    """Checks, traces, plans, splits and uploads a job, in these steps:

        1 validate   setup (the zoo's by name if None), data, platform,
                     optimizer, store, job id                         no work yet   _validate
        2 plan file  read and parsed, if one is given                              _read_plan
        3 trace      the model on its first batch                                  _trace
        4 plan       the plan file's, or profile and plan                 planning.plan_for
        5 check      the plan against the model, batch and platform     planning.check_plan
        6 split      stage programs; tied weights refused     planning.refuse_shared_parameters
        7 upload     bundle, shards, checkpoint 0, and job.json last               _upload

    Raises:
      InputError: any subclass, before anything is written (see `jaxpipe.errors`).
    """
    options = lithops_job.resolve(options)  # the store a Lithops backend reaches
    checked = _validate(options, setup)  # 1
    given = options.plan or _read_plan(options.plan_file)  # 2
    setup, data = checked.setup, checked.data
    traced = _trace(setup, data, options)  # 3
    cache = _cache_shards(data, options, checked.platform)
    problem = functools.cache(functools.partial(
        planning_problem, traced, _profile_name(setup, options), checked.platform, options,
        data.nbytes if cache is None else None,
        0.0 if cache is None else cache * options.shard_size * data.bytes_per_example))
    plan = given if given is not None else plan_for(problem(), options.method, traced)  # 4
    if given is None:  # the report replays the plan on it (`runtime.report`)
        _store_problem(checked.store, Keys(checked.job_id), problem())
    check_plan(plan, traced, checked.platform, options)  # 5
    check_memory_floor(plan, checked.platform)
    lithops_job.check_plan(options, plan)
    staged = traced.split(plan.cuts, [s.mode for s in plan.stages])  # 6
    stages = staged.stages(plan.micro_batch)
    refuse_shared_parameters(stages)
    initial = dict(zip(traced.params.paths, traced.params.leaves))  # CouplingError here, if any
    programs = compile_optimizer(checked.optimizer, [
        {p: initial[p] for p in s.spec.param_paths} for s in stages])
    job = JobSpec(  # 7
        job_id=checked.job_id, model=options.model, plan=plan, platform=checked.platform,
        iterations=options.iterations, optimizer=(options.optimizer if isinstance(
            options.optimizer, str) else "optax"),
        learning_rate=options.learning_rate, seed=options.seed,
        num_samples=data.count, rng_names=tuple(traced.rng_names),
        shard_size=options.shard_size, shuffle=options.shuffle, shard_cache=cache,
        checkpoint_every=options.checkpoint_every, wait_timeout_s=options.wait_timeout_s,
        allreduce=options.allreduce, meta={"model_overrides": dict(options.model_overrides),
                                           "eval_every": options.eval_every,
                                           "created": time.time()},
        compile_cache=options.compile_cache, versions=driver_versions().to_dict(),
        **_state_kinds(traced))
    _upload(checked.store, job, staged, stages, traced, data, programs)
    return Prepared(job, checked.store, setup, problem)


def _validate(options: TrainOptions, setup: TrainingSetup | None) -> _Checked:
    """Every check that needs no tracing: the options' ranges and the store's place
    (`input_checks`), the setup and its data, names, the platform and its store, the job id."""
    check_options(options)
    check_store_location(options.store)
    if setup is None:
        setup = zoo.zoo_setup(options.model, dict(options.model_overrides), options.seed,
                              options.batch)
    data = sources.examples(setup.data)
    optimizer = (optim.make(options.optimizer, options.learning_rate)
                 if isinstance(options.optimizer, str) else options.optimizer)
    if options.platform not in (*platforms.names(), lithops_job.PLATFORM):
        raise UnknownPlatformError(
            f"unknown platform {options.platform!r}; choose one of {platforms.names()}")
    # aws-lambda runs ranks as Lambda invocations (jaxpipe.runtime.platforms.aws); they can only
    # share an S3 bucket, never a directory of this machine.
    if options.platform not in RUNNABLE_PLATFORMS:
        raise PlatformError(f"running on {options.platform!r} is not available yet; use "
                            "--platform local or aws-lambda (other platforms: `jaxpipe plan`)")
    if options.platform == "aws-lambda" and not options.store.startswith("s3://"):
        raise PlatformError(f"--platform aws-lambda needs --store s3://<bucket> (the bucket "
                            f"`jaxpipe deploy aws` set up), not {options.store!r}")
    platform = (lithops_job.job_platform(options) if options.platform == lithops_job.PLATFORM
                else platforms.get(options.platform, options.platform_file))
    store = open_store(options.store, options.endpoint_url)
    if options.platform == "aws-lambda":  # region, functions, versions, quota (`aws_preflight`)
        from jaxpipe.runtime.platforms import aws_preflight

        region = aws_preflight.train_region(options.region)
        if options.aws_checks:
            platform = aws_preflight.check_train(options, platform,
                                                 options.plan or _read_plan(options.plan_file))
        store = open_store(options.store, options.endpoint_url, region)
    job = options.job_id or job_id(options.model)
    if store.exists(Keys(job).spec):
        raise JobExistsError(f"job {job} already exists in the store; resume it with "
                             f"--resume {job} or choose another --job-id")
    return _Checked(setup, data, platform, optimizer, store, job)


def _read_plan(path: str | None) -> Plan | None:
    return read_plan_file(path)  # PlanFileError: missing, not JSON, not a plan


def _trace(setup: TrainingSetup, data: sources.Examples, options: TrainOptions) -> Traced:
    batch = data.rows(0, options.batch)
    return trace(setup.model, setup.variables, batch, setup.loss_fn, rngs=setup.rngs)


def _state_kinds(traced: Traced) -> dict[str, Any]:
    """The JobSpec fields saying what the state leaves are: the model's kind, its typed PRNG
    keys (by the user's paths, as `variables.read_variables` restacks them) and its counters
    (by the program's paths, as the ranks hold them)."""
    impls = getattr(traced, "key_impls", {})
    return {"model_kind": "nnx" if isinstance(traced, NnxTraced) else "linen",
            "key_impls": {traced.user_state.paths[i]: str(impl) for i, impl in impls.items()},
            "state_counters": {p: step.tolist() for p, step in counter_steps(traced).items()}}


def _profile_name(setup: TrainingSetup, options: TrainOptions) -> str:
    """The zoo name, or the model's label and a hash of its config and variable shapes (the
    profile cache's key)."""
    if setup.name in (*models.names(), *first_job.NAMES):
        return setup.label
    if isinstance(setup.model, nnx.Module):  # its repr holds its arrays: their shapes do
        shapes = jax.tree.map(np.shape, nnx.state(setup.model))
        described = f"{type(setup.model).__qualname__}{shapes}"
    else:
        described = f"{setup.model!r}{jax.tree.map(np.shape, dict(setup.variables or {}))}"
    tag = hashlib.sha256(f"{described}{options.model_overrides}".encode())
    return f"{setup.label}-{tag.hexdigest()[:8]}"


def _cache_shards(data: sources.Examples, options: TrainOptions,
                  platform: Platform) -> int | None:
    """Shards stage 0 keeps (`dataset.cache_shards`), None when that is all of them."""
    budget = (options.data_cache_mb * MIB if options.data_cache_mb is not None
              else DATA_CACHE_SHARE * min(platform.memory_options_mb) * MIB)
    count = -(-data.count // options.shard_size)
    keep = dataset.cache_shards(data.count, options.shard_size, data.bytes_per_example, budget)
    return None if keep >= count else keep


def _upload(store: ObjectStore, job: JobSpec, staged: Staged, stages: Sequence[StageProgram],
            traced: Traced, data: sources.Examples,
            optimizer: OptimizerPrograms) -> None:
    """The bundle, the shards and checkpoint 0; the spec last: a job exists once complete."""
    keys = job.keys
    store.put(keys.bundle, staged.export(job.plan.micro_batch))
    blob = optimizer.export()
    store.put(keys.optimizer, blob)
    sources.upload(store, keys, data, job.shard_size)
    params = dict(zip(traced.params.paths, traced.params.leaves))
    state = dict(zip(traced.state.paths, traced.state.leaves))
    checkpoint.save_initial(store, keys, [(list(s.spec.param_paths), list(s.spec.state_paths))
                                          for s in stages], params, state, blob)
    store.put(keys.spec, job.to_json())


def train(options: TrainOptions, resume: str | None = None, show_progress: bool = True,
          setup: TrainingSetup | None = None,
          announce: Callable[[Prepared, int], None] | None = None,
          extend_to: int | None = None) -> Summary:
    """Prepares (or resumes) a job, runs it, and returns its summary (also stored as JSON at
    `Keys.summary`). The job's lease is held throughout (`resume.claim`).

    Raises:
      InputError: before any work (see `prepare`); JobRunningError: another driver holds the
        job; JobFinishedError: a resumed job has run all its iterations (and `extend_to`,
        the iterations to extend it to, is None).
      JobFailed: the run could not finish; its checkpoints stay for `resume`.

    `setup` is what to train (default: the zoo model `options.model`); `announce(prepared,
    start)` is called once the job is in the store, before any function starts.
    """
    options = lithops_job.resolve(options)
    job = resume or options.job_id or job_id(options.model)
    lease = claim(options, job, resuming=resume is not None)
    try:
        prepared, start = (_resumed(options, job, setup, extend_to) if resume else
                           (prepare(dataclasses.replace(options, job_id=job), setup), 0))
        spec, store = prepared.spec, prepared.store
        if announce is not None:
            announce(prepared, start)
        began = time.time()
        launcher = _launcher(spec, store, options)
        try:
            progress = run_job(store, spec, start, options.run,
                               on_iteration=progress_bar(spec, start, show_progress),
                               launcher=launcher)
        finally:
            lithops_job.finish(launcher, store, spec)  # Lithops' bill and executor; else nothing
        wall = time.time() - began
        if show_progress:
            print(file=sys.stderr)
        fill_losses(store, spec, progress)  # a resumed run's summary has every iteration's
        summary = _summarize(prepared, progress, wall)
        _clean_up(store, spec, options.run.keep_checkpoints)
        store.put(spec.keys.summary, json.dumps(summary.to_dict(), indent=1).encode())
        return summary
    finally:
        lease.release()


def _resumed(options: TrainOptions, job: str, setup: TrainingSetup | None,
             extend_to: int | None) -> tuple[Prepared, int]:
    """A stored job and where it continues (`resume.resume_point`; no predictions)."""
    store = open_store(options.store, options.endpoint_url)
    spec, start = resume_point(store, job, options.store, extend_to)
    return Prepared(spec, store, setup), start


def _launcher(spec: JobSpec, store: ObjectStore, options: TrainOptions) -> Launcher | None:
    """The aws-lambda launcher for a Lambda job, Lithops' for a Lithops job; None (the driver's
    local default) otherwise."""
    if options.platform == lithops_job.PLATFORM:
        return lithops_job.launcher(spec, store, options)
    if spec.platform.name != "aws-lambda":
        return None
    from jaxpipe.runtime.platforms import aws_preflight
    from jaxpipe.runtime.platforms.aws import AwsLambdaPlatform, lambda_client

    client = lambda_client(region_name=aws_preflight.train_region(options.region))
    if options.aws_checks:  # a resumed job's plan too
        aws_preflight.check_train(options, spec.platform, spec.plan, lam=client)
    return AwsLambdaPlatform(spec.platform, store, client,
                             function_prefix=options.function_prefix)


def training_data(model: models.ModelSpec, options: TrainOptions,
                  ) -> tuple[tuple[Any, Any], zoo.HeldOut | None]:
    """A zoo model's training and test sets for these options (`zoo.training_data`)."""
    return zoo.training_data(model, options.seed, options.batch)


def dataset_bytes(data: Any) -> float:
    """Bytes of a training set, which stage 0's workers hold whole when it fits their cache
    (`jaxpipe.runtime.dataset.cache_shards`), as the planner counts
    (`Problem.cached_input_bytes`)."""
    return float(sum(np.asarray(a).nbytes for a in jax.tree.leaves(data)))


def first_rows(tree: Any, n: int) -> Any:
    """The first n rows of every array in `tree`, as numpy arrays (e.g. the batch to trace)."""
    return jax.tree.map(lambda a: np.asarray(a)[:n], tree)


def _summarize(prepared: Prepared, progress: Progress, wall: float) -> Summary:
    """Every invocation's metrics and the predictions (building the problem if it must)."""
    spec, store = prepared.spec, prepared.store
    metrics = [RankMetrics.from_dict(json.loads(store.get(k)))
               for k in store.list(spec.keys.all_metrics())]
    problem = prepared.problem() if prepared.problem is not None else None
    if problem is not None:
        _store_problem(store, spec.keys, problem)
    setup = prepared.setup
    scored = (evaluation.evaluate_job(store, spec, setup, spec.meta.get("eval_every"))
              if setup is not None and setup.eval_data is not None else {})
    accuracy = scored[spec.iterations].get("accuracy") if scored else None
    return summarize(spec, metrics, progress, wall, problem, accuracy, scored)


def _store_problem(store: ObjectStore, keys: Keys, problem: Problem) -> None:
    """The planning problem at `jobs/<id>/problem.json`, for `jaxpipe report`'s replay."""
    from jaxpipe.runtime.report.record import problem_key

    store.put(problem_key(keys), json.dumps(problem.to_dict()).encode())


def _clean_up(store: ObjectStore, spec: JobSpec, keep_checkpoints: int) -> None:
    """Leaves only results (job.json, metrics, summary) and the last `keep_checkpoints`
    checkpoints (0: all) under the job prefix."""
    keys = spec.keys
    checkpoint.prune(store, keys, spec.num_stages, keep_checkpoints)
    for prefix in ("run/", "status/", "data/", "xla-cache/", "cancel/"):
        store.delete_prefix(keys.prefix + prefix)
    store.delete(keys.bundle)
    store.delete(keys.optimizer)
