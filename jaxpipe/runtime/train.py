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
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from numpy.typing import NDArray

from jaxpipe import models
from jaxpipe.errors import (
    JobExistsError,
    PlatformError,
    UnknownModelError,
    UnknownPlatformError,
    UnsupportedModelError,
)
from jaxpipe.runtime import checkpoint, dataset, optim
from jaxpipe.runtime.arrays import decode_named
from jaxpipe.runtime.billing import functions_gigabytes
from jaxpipe.runtime.driver import Progress, job_id, run_job
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
from jaxpipe.runtime.summary import Summary, summarize
from jaxpipe.staging.split import Staged
from jaxpipe.staging.stage import StageProgram
from jaxpipe.staging.tracing import Traced, trace
from planners import Plan, Platform, Problem, platforms
from transports import FileStore, ObjectStore, S3Store

__all__ = ["Prepared", "TrainOptions", "dataset_bytes", "first_rows", "linen_module",
           "open_store", "prepare", "train", "trains_on_digits", "training_data"]

RUNNABLE_PLATFORMS = ("local", "aws-lambda")

HeldOut = tuple[NDArray[Any], NDArray[Any]]  # (inputs, labels) of the test set


@dataclass(frozen=True)
class Prepared:
    """A job ready to run: its spec in the store, and what the summary needs.

    Attributes:
      spec: the job, as stored.
      store: the job's store.
      test_set: (inputs, labels) held out, for models with a test set; else None.
      problem: builds (once, then cached) the planning problem the summary predicts with; None
        for no predictions (a resumed job). Without a plan file it is the problem the plan was
        made from; with one it profiles only when first called.
    """

    spec: JobSpec
    store: ObjectStore
    test_set: HeldOut | None = None
    problem: Callable[[], Problem] | None = None


@dataclass(frozen=True)
class _Checked:
    """What `_validate` found: the inputs resolved, before any work."""

    model: models.ModelSpec
    module: nn.Module
    platform: Platform
    optimizer: optax.GradientTransformation
    store: ObjectStore
    job_id: str


def open_store(location: str, endpoint_url: str | None = None) -> ObjectStore:
    """`s3://bucket` (any S3 API server with `endpoint_url`) or a directory for a FileStore."""
    if location.startswith("s3://"):
        return S3Store(location[5:].strip("/"), endpoint_url=endpoint_url)
    return FileStore(location)


def prepare(options: TrainOptions) -> Prepared:
    """Checks, traces, plans, splits and uploads a job, in these steps:

        1 validate   names, platform, optimizer, store, job id      no work yet   _validate
        2 plan file  read and parsed, if one is given                              _read_plan
        3 trace      the model on its first batch                                  _trace
        4 plan       the plan file's, or profile and plan                 planning.plan_for
        5 check      the plan against the model, batch and platform     planning.check_plan
        6 split      stage programs; tied weights refused     planning.refuse_shared_parameters
        7 upload     bundle, shards, checkpoint 0, and job.json last               _upload

    Raises:
      InputError: any subclass, before anything is written (see `jaxpipe.errors`).
    """
    checked = _validate(options)  # 1
    given = _read_plan(options.plan_file)  # 2
    model = checked.model
    data, test_set = training_data(model, options)
    traced = _trace(model, checked.module, data, options)  # 3
    problem = functools.cache(functools.partial(
        planning_problem, traced, model.name, checked.platform, options, dataset_bytes(data)))
    plan = given if given is not None else plan_for(problem(), options.method, traced)  # 4
    check_plan(plan, traced, checked.platform, options)  # 5
    staged = traced.split(plan.cuts, [s.mode for s in plan.stages])  # 6
    stages = staged.stages(plan.micro_batch)
    refuse_shared_parameters(stages)
    initial = dict(zip(traced.params.paths, traced.params.leaves))  # CouplingError here, if any
    programs = compile_optimizer(checked.optimizer, [
        {p: initial[p] for p in s.spec.param_paths} for s in stages])
    job = JobSpec(  # 7
        job_id=checked.job_id, model=options.model, plan=plan, platform=checked.platform,
        iterations=options.iterations, optimizer=options.optimizer,
        learning_rate=options.learning_rate, seed=options.seed,
        num_samples=len(jax.tree.leaves(data)[0]), rng_names=tuple(traced.rng_names),
        checkpoint_every=options.checkpoint_every, wait_timeout_s=options.wait_timeout_s,
        allreduce=options.allreduce, meta={"model_overrides": dict(options.model_overrides)})
    _upload(checked.store, job, staged, stages, traced, data, programs)
    return Prepared(job, checked.store, test_set, problem)


def _validate(options: TrainOptions) -> _Checked:
    """Every check that needs no tracing: names, the platform and its store, the job id."""
    if options.model not in models.names():
        raise UnknownModelError(f"unknown model {options.model!r}; choose one of {models.names()}")
    model = models.get(options.model, **options.model_overrides)
    module = linen_module(model)
    optimizer = optim.make(options.optimizer, options.learning_rate)
    if options.platform not in platforms.names():
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
    platform = platforms.get(options.platform, options.platform_file)
    store = open_store(options.store, options.endpoint_url)
    job = options.job_id or job_id(options.model)
    if store.exists(Keys(job).spec):
        raise JobExistsError(f"job {job} already exists in the store; resume it with "
                             f"--resume {job} or choose another --job-id")
    return _Checked(model, module, platform, optimizer, store, job)


def _read_plan(path: str | None) -> Plan | None:
    return Plan.from_dict(json.loads(Path(path).read_text())) if path else None


def _trace(model: models.ModelSpec, module: nn.Module, data: tuple[Any, Any],
           options: TrainOptions) -> Traced:
    variables = model.init(jax.random.PRNGKey(options.seed))
    assert isinstance(variables, dict), "a linen model's init returns its variables"
    batch = tuple(first_rows(part, options.batch) for part in data)
    rngs = model.rngs(jax.random.PRNGKey(options.seed))
    return trace(module, variables, batch, model.loss_fn, rngs=rngs)


def linen_module(model: models.ModelSpec) -> nn.Module:
    """The zoo model's Flax linen module, the kind of model the runtime trains.

    Raises:
      UnsupportedModelError: the model is of an NNX family.
    """
    if not isinstance(model.module, nn.Module):
        raise UnsupportedModelError(
            f"model {model.name!r} is an NNX model; `jaxpipe train` runs the linen models of "
            "the zoo (trace and split NNX models in one process with `jaxpipe.trace`)")
    return model.module


def _upload(store: ObjectStore, job: JobSpec, staged: Staged, stages: Sequence[StageProgram],
            traced: Traced, data: tuple[Any, Any],
            optimizer: OptimizerPrograms) -> None:
    """The bundle, the shards and checkpoint 0; the spec last: a job exists once complete."""
    keys = job.keys
    store.put(keys.bundle, staged.export(job.plan.micro_batch))
    blob = optimizer.export()
    store.put(keys.optimizer, blob)
    dataset.write_shards(store, keys, [np.asarray(x) for x in jax.tree.leaves(data)],
                         job.shard_size)
    params = dict(zip(traced.params.paths, traced.params.leaves))
    state = dict(zip(traced.state.paths, traced.state.leaves))
    checkpoint.save_initial(store, keys, [(list(s.spec.param_paths), list(s.spec.state_paths))
                                          for s in stages], params, state, blob)
    store.put(keys.spec, job.to_json())


def train(options: TrainOptions, resume: str | None = None, show_progress: bool = True,
          ) -> Summary:
    """Prepares (or resumes) a job, runs it, and returns its summary (also stored as JSON at
    `Keys.summary`).

    Raises:
      InputError: before any work (see `prepare`).
      JobFailed: the run could not finish; its checkpoints stay for `resume`.
    """
    prepared, start = _resumed(options, resume) if resume else (prepare(options), 0)
    spec, store = prepared.spec, prepared.store
    began = time.time()
    progress = run_job(store, spec, start, options.run,
                       on_iteration=_progress_bar(spec, start, show_progress),
                       launcher=_launcher(spec, store, options))
    wall = time.time() - began
    if show_progress:
        print(file=sys.stderr)
    summary = _summarize(prepared, progress, wall)
    _clean_up(store, spec)
    store.put(spec.keys.summary, json.dumps(summary.to_dict(), indent=1).encode())
    return summary


def _resumed(options: TrainOptions, job: str) -> tuple[Prepared, int]:
    """A stored job and the iteration of its latest complete checkpoint (no predictions)."""
    store = open_store(options.store, options.endpoint_url)
    spec = JobSpec.from_json(store.get(Keys(job).spec, timeout=1))
    start = checkpoint.latest_complete(store, spec.keys, spec.num_stages) or 0
    return Prepared(spec, store), start


def _launcher(spec: JobSpec, store: ObjectStore, options: TrainOptions) -> Launcher | None:
    """The aws-lambda launcher for a Lambda job; None (the driver's local default) otherwise."""
    if spec.platform.name != "aws-lambda":
        return None
    from jaxpipe.runtime.platforms.aws import AwsLambdaPlatform

    return AwsLambdaPlatform(spec.platform, store, function_prefix=options.function_prefix)


def trains_on_digits(model: models.ModelSpec) -> bool:
    """Whether a zoo model trains on scikit-learn's digits (the MLP family: 64 features, 10
    classes) rather than on its own synthetic data."""
    return isinstance(model.config, models.MLPConfig)


def training_data(model: models.ModelSpec, options: TrainOptions,
                  ) -> tuple[tuple[Any, Any], HeldOut | None]:
    """A job's training set (inputs, targets) and its test set, or None: scikit-learn's digits
    for the models that train on them (`trains_on_digits`), two global batches of the model's
    synthetic data otherwise."""
    if trains_on_digits(model):
        x, y, x_test, y_test = models.digits()
        return (x, y), (x_test, y_test)
    inputs, targets = model.make_batch(jax.random.PRNGKey(options.seed + 1), 2 * options.batch)
    return (inputs, targets), None


def dataset_bytes(data: Any) -> float:
    """Bytes of a training set as stage 0's workers hold it: they keep every shard they read
    (`jaxpipe.runtime.dataset.ShardReader`), which the planner counts
    (`Problem.cached_input_bytes`)."""
    return float(sum(np.asarray(a).nbytes for a in jax.tree.leaves(data)))


def first_rows(tree: Any, n: int) -> Any:
    """The first n rows of every array in `tree`, as numpy arrays (e.g. the batch to trace)."""
    return jax.tree.map(lambda a: np.asarray(a)[:n], tree)


def _progress_bar(spec: JobSpec, start: int, show: bool,
                  ) -> Callable[[int, Progress], None] | None:
    """A tqdm bar with the loss, seconds and (GB-s) dollars of each iteration, or None."""
    if not show:
        return None
    from tqdm import tqdm

    gigabytes = functions_gigabytes(spec.plan)
    bar = tqdm(total=spec.iterations, initial=start, desc=spec.job_id, unit="it")
    spent = [0.0]

    def update(t: int, progress: Progress) -> None:
        seconds = progress.times.get(t, 0.0)
        spent[0] += spec.platform.compute_dollars(gigabytes, seconds)
        bar.set_postfix(loss=f"{progress.losses[t]:.4f}", s_per_it=f"{seconds:.2f}",
                        dollars=f"{spent[0]:.5f}")
        bar.update()

    return update


def _summarize(prepared: Prepared, progress: Progress, wall: float) -> Summary:
    """Every invocation's metrics and the predictions (building the problem if it must)."""
    spec, store = prepared.spec, prepared.store
    metrics = [RankMetrics.from_dict(json.loads(store.get(k)))
               for k in store.list(spec.keys.all_metrics())]
    problem = prepared.problem() if prepared.problem is not None else None
    accuracy = (_accuracy(store, spec, prepared.test_set) if prepared.test_set is not None
                else None)
    return summarize(spec, metrics, progress, wall, problem, accuracy)


def _accuracy(store: ObjectStore, spec: JobSpec, test_set: HeldOut) -> float:
    """Accuracy of the final checkpoint's parameters, run through the unsplit model."""
    from jaxpipe.tree import nest

    params: dict[str, Any] = {}
    for k in range(spec.num_stages):
        key = spec.keys.checkpoint(spec.iterations, k, "params")
        params.update(decode_named(store.get(key, timeout=10), key))
    model = models.get(spec.model, **spec.meta.get("model_overrides", {}))
    module = dataclasses.replace(linen_module(model), train=False)
    logits = module.apply({"params": nest(params, strip="params")}, test_set[0])
    return float(np.mean(np.argmax(np.asarray(logits), -1) == test_set[1]))


def _clean_up(store: ObjectStore, spec: JobSpec) -> None:
    """Leaves only results (job.json, metrics, summary) and checkpoints under the job prefix."""
    keys = spec.keys
    for prefix in ("run/", "status/", "data/"):
        store.delete_prefix(keys.prefix + prefix)
    store.delete(keys.bundle)
    store.delete(keys.optimizer)
