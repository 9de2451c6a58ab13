"""`jaxpipe train`: from a zoo model name to a trained model on emulated serverless functions.

`prepare` checks every input before any function starts (unknown names, a plan that does not
fit the model, memory caps below the plan's own prediction, batches that do not divide), then
traces, profiles (cached), plans, splits, exports and uploads the job. `train` runs it with
`jaxpipe.runtime.driver.run_job` and writes the summary: losses, time and dollars per iteration
measured against the cost model's and the simulator's predictions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxpipe import models
from jaxpipe.errors import (
    JobExistsError,
    PlanMismatchError,
    PlatformError,
    TiedParameterError,
    UnknownModelError,
    UnknownPlatformError,
)
from jaxpipe.runtime import checkpoint, dataset, optim
from jaxpipe.runtime.driver import RunConfig, job_id, measured_dollars, run_job, steady_dollars
from jaxpipe.runtime.job import JobSpec
from jaxpipe.staging.tracing import trace
from planners import (
    ModelProfile,
    Plan,
    Platform,
    Problem,
    coarsen,
    cost,
    expand_plan,
    platforms,
    simulate,
)
from planners import plan as make_plan
from transports import FileStore, ObjectStore, S3Store, codec

__all__ = ["TrainOptions", "dataset_bytes", "first_rows", "prepare", "profile_cache_path",
           "train", "training_data"]

OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


@dataclass(frozen=True)
class TrainOptions:
    """Every knob of `jaxpipe train`, each with the default the CLI uses."""

    model: str = "mlp"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"seq_len": 32}
    platform: str = "local"
    platform_file: str | None = None
    plan_file: str | None = None
    method: str = "miqp"
    batch: int = 64
    iterations: int = 60
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    seed: int = 0
    store: str = ".jaxpipe/store"
    endpoint_url: str | None = None
    job_id: str | None = None
    checkpoint_every: int = 10
    max_functions: int = 4
    allreduce: str = "pipelined"
    profile_cache: str = ".jaxpipe/profiles"
    wait_timeout_s: float = 120.0
    function_prefix: str = "jaxpipe-worker"  # aws-lambda: ranks run on <prefix>-<memory MB>
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True)
class Prepared:
    """A job ready to run: its spec in the store, and what the report needs."""

    spec: JobSpec
    store: ObjectStore
    problem: Problem | None
    test_set: tuple[np.ndarray, np.ndarray] | None


def open_store(location: str, endpoint_url: str | None = None) -> ObjectStore:
    """`s3://bucket` (any S3 API server with `endpoint_url`) or a directory for a FileStore."""
    if location.startswith("s3://"):
        return S3Store(location[5:].strip("/"), endpoint_url=endpoint_url)
    return FileStore(location)


def prepare(options: TrainOptions) -> Prepared:
    """Checks, traces, plans, splits and uploads a job; see the module docstring."""
    if options.model not in models.names():
        raise UnknownModelError(f"unknown model {options.model!r}; choose one of {models.names()}")
    optimizer = optim.make(options.optimizer, options.learning_rate)
    if options.platform not in platforms.names():
        raise UnknownPlatformError(
            f"unknown platform {options.platform!r}; choose one of {platforms.names()}")
    # aws-lambda runs ranks as Lambda invocations (jaxpipe.runtime.platforms.aws); they can only
    # share an S3 bucket, never a directory of this machine.
    if options.platform not in ("local", "aws-lambda"):
        raise PlatformError(f"running on {options.platform!r} is not available yet; use "
                            "--platform local or aws-lambda (other platforms: `jaxpipe plan`)")
    if options.platform == "aws-lambda" and not options.store.startswith("s3://"):
        raise PlatformError(f"--platform aws-lambda needs --store s3://<bucket> (the bucket "
                            f"`jaxpipe deploy aws` set up), not {options.store!r}")
    platform = platforms.get(options.platform, options.platform_file)
    spec = models.get(options.model, **options.model_overrides)
    variables = spec.init(jax.random.PRNGKey(options.seed))
    data, test_set = training_data(spec, options)
    batch = tuple(first_rows(part, options.batch) for part in data)
    rngs = spec.rngs(jax.random.PRNGKey(options.seed))
    traced = trace(spec.module, variables, batch, spec.loss_fn, rngs=rngs)

    problem = None
    if options.plan_file:
        plan = Plan.from_dict(json.loads(Path(options.plan_file).read_text()))
    else:
        problem = _problem(traced, spec.name, platform, options, dataset_bytes(data))
        plan = make_plan(problem, options.method)
        if problem.profile.num_layers != len(traced.layers):
            plan = expand_plan(plan, problem.profile)
    _check_plan(plan, traced, platform, options)
    if problem is None:
        problem = _problem(traced, spec.name, platform, options, dataset_bytes(data))

    staged = traced.split(plan.cuts, [s.mode for s in plan.stages])
    stages = staged.stages(plan.micro_batch)
    _refuse_shared_parameters(stages)
    store = open_store(options.store, options.endpoint_url)
    job = JobSpec(
        job_id=options.job_id or job_id(options.model), model=options.model,
        plan=plan.to_dict(), platform=platform.to_dict(), iterations=options.iterations,
        optimizer=options.optimizer, learning_rate=options.learning_rate, seed=options.seed,
        num_samples=len(jax.tree.leaves(data)[0]), rng_names=tuple(traced.rng_names),
        checkpoint_every=options.checkpoint_every, wait_timeout_s=options.wait_timeout_s,
        allreduce=options.allreduce, meta={"model_overrides": dict(options.model_overrides)})
    keys = job.keys
    if store.exists(keys.spec):
        raise JobExistsError(f"job {job.job_id} already exists in the store; resume it with "
                             f"--resume {job.job_id} or choose another --job-id")
    store.put(keys.bundle, staged.export(plan.micro_batch))
    dataset.write_shards(store, keys, [np.asarray(x) for x in jax.tree.leaves(data)],
                         job.shard_size)
    params = dict(zip(traced.params.paths, traced.params.leaves))
    state = dict(zip(traced.state.paths, traced.state.leaves))
    checkpoint.save_initial(store, keys, [(list(s.spec.param_paths), list(s.spec.state_paths))
                                          for s in stages], params, state, optimizer)
    store.put(keys.spec, job.to_json())  # last: a job exists once it is complete
    return Prepared(job, store, problem, test_set)


def train(options: TrainOptions, resume: str | None = None, show_progress: bool = True,
          ) -> dict[str, Any]:
    """Prepares (or resumes) a job, runs it, and returns the summary (also stored as JSON)."""
    if resume:
        store = open_store(options.store, options.endpoint_url)
        spec = JobSpec.from_json(store.get(f"jobs/{resume}/job.json", timeout=1))
        plan = Plan.from_dict(spec.plan)
        start = checkpoint.latest_complete(store, spec.keys, len(plan.stages)) or 0
        prepared = Prepared(spec, store, None, None)
    else:
        prepared, start = prepare(options), 0
    spec, store = prepared.spec, prepared.store
    bar = _progress_bar(spec, start, show_progress)
    began = time.time()
    progress = run_job(store, spec, start, options.run, on_iteration=bar,
                       launcher=_launcher(spec, store, options))
    wall = time.time() - began
    if show_progress:
        print(file=sys.stderr)
    summary = _summarize(prepared, progress, wall)
    _clean_up(store, spec)
    store.put(spec.keys.prefix + "results/summary.json", json.dumps(summary, indent=1).encode())
    return summary


def _launcher(spec: JobSpec, store: ObjectStore, options: TrainOptions) -> Any:
    """The aws-lambda launcher for a Lambda job; None (the driver's local default) otherwise."""
    platform = Platform.from_dict(spec.platform)
    if platform.name != "aws-lambda":
        return None
    from jaxpipe.runtime.platforms.aws import AwsLambdaPlatform

    return AwsLambdaPlatform(platform, store, function_prefix=options.function_prefix)


def training_data(spec: Any, options: TrainOptions) -> tuple[Any, Any]:
    """A job's training set (inputs, targets) and its test set, or None: scikit-learn's digits
    for the mlp models, two global batches of the model's synthetic data otherwise."""
    if options.model.startswith("mlp"):
        x, y, x_test, y_test = models.digits()
        return (x, y), (x_test, y_test)
    inputs, targets = spec.make_batch(jax.random.PRNGKey(options.seed + 1), 2 * options.batch)
    return (inputs, targets), None


def dataset_bytes(data: Any) -> float:
    """Bytes of a training set as stage 0's workers hold it: they keep every shard they read
    (`jaxpipe.runtime.dataset.ShardReader`), which the planner counts
    (`Problem.cached_input_bytes`)."""
    return float(sum(np.asarray(a).nbytes for a in jax.tree.leaves(data)))


def first_rows(tree: Any, n: int) -> Any:
    """The first n rows of every array in `tree`, as numpy arrays (e.g. the batch to trace)."""
    return jax.tree.map(lambda a: np.asarray(a)[:n], tree)


def _problem(traced: Any, name: str, platform: Platform, options: TrainOptions,
             data_bytes: float) -> Problem:
    from jaxpipe.staging.profiling import profile

    sizes = tuple(b for b in (1, 2, 4, 8, 16) if options.batch % b == 0)
    cache = profile_cache_path(options.profile_cache, name, options.model_overrides, sizes)
    if cache.exists():
        prof = ModelProfile.from_dict(json.loads(cache.read_text()))
    else:
        prof = profile(traced, sizes, repeats=3, name=name)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(prof.to_dict()))
    if prof.num_layers > 30:
        prof = coarsen(prof, 30)
    return Problem(profile=prof, platform=platform, global_batch=options.batch,
                   micro_batches=sizes, replica_options=(1, 2, 4),
                   max_functions=options.max_functions,
                   optimizer_slots=OPTIMIZER_SLOTS[options.optimizer],
                   cached_input_bytes=data_bytes)


def profile_cache_path(folder: str | Path, name: str, overrides: dict[str, Any],
                       sizes: tuple[int, ...]) -> Path:
    """Where `train` keeps the profile of a model config at these micro-batch sizes."""
    config = json.dumps(overrides, sort_keys=True).encode()
    tag = hashlib.sha256(config).hexdigest()[:8] if overrides else "default"
    return Path(folder) / f"{name}-{tag}-{'-'.join(map(str, sizes))}.json"


def _check_plan(plan: Plan, traced: Any, platform: Platform, options: TrainOptions) -> None:
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


def _refuse_shared_parameters(stages: Any) -> None:
    owners: dict[str, int] = {}
    for stage in stages:
        for path in stage.spec.param_paths:
            if path in owners:
                raise TiedParameterError(
                    f"parameter {path} is used by stages {owners[path]} and {stage.spec.index} "
                    "(tied weights); the distributed runtime needs each parameter in one stage: "
                    "cut elsewhere")
            owners[path] = stage.spec.index


def _progress_bar(spec: JobSpec, start: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    platform = Platform.from_dict(spec.platform)
    plan = Plan.from_dict(spec.plan)
    per_second = sum(s.replicas * s.memory_mb / 1024 for s in plan.stages) * \
        platform.price_gb_second
    bar = tqdm(total=spec.iterations, initial=start, desc=spec.job_id, unit="it")
    spent = [0.0]

    def update(t: int, progress: Any) -> None:
        seconds = progress.times.get(t, 0.0)
        spent[0] += seconds * per_second
        bar.set_postfix(loss=f"{progress.losses[t]:.4f}", s_per_it=f"{seconds:.2f}",
                        dollars=f"{spent[0]:.5f}")
        bar.update()

    return update


def _summarize(prepared: Prepared, progress: Any, wall: float) -> dict[str, Any]:
    spec, store = prepared.spec, prepared.store
    plan = Plan.from_dict(spec.plan)
    platform = Platform.from_dict(spec.platform)
    metrics = [json.loads(store.get(k)) for k in store.list(spec.keys.prefix + "metrics/rank")]
    seconds = _iteration_period(metrics) or (
        float(np.median(list(progress.times.values()))) if progress.times else None)
    iterations = max(len(progress.losses), 1)
    summary: dict[str, Any] = {
        "job": spec.job_id, "model": spec.model, "plan": spec.plan,
        "losses": [progress.losses[t] for t in sorted(progress.losses)],
        "measured_seconds_per_iteration": seconds,
        "measured_dollars_per_iteration": steady_dollars(platform, plan, metrics, seconds,
                                                         iterations) if seconds else None,
        "measured_run_dollars_per_iteration": measured_dollars(platform, metrics) / iterations,
        "wall_seconds": wall, "restarts": progress.restarts, "handovers": progress.handovers,
        "invocations": progress.invocations,
        "cold_start_seconds": [m["cold_start_s"] for m in metrics],
        "peak_rss_mb": {m["rank"]: m["peak_rss_mb"] for m in metrics},
    }
    if prepared.problem is not None:
        summary["predicted_seconds_per_iteration"] = cost.iteration_time(plan, prepared.problem)
        summary["predicted_dollars_per_iteration"] = cost.iteration_cost(plan, prepared.problem)
        summary["simulated_seconds_per_iteration"] = simulate.simulate(
            plan, prepared.problem).iteration_seconds
    if prepared.test_set is not None:
        summary["test_accuracy"] = _accuracy(store, spec, prepared.test_set)
    return summary


def _iteration_period(metrics: list[dict[str, Any]]) -> float | None:
    """Median time between the ends of successive iterations, from the workers' own clocks.

    An iteration ends when its last rank finishes it. The first gap is left out: it still
    includes warm-up (first calls, first shard reads).
    """
    ends: dict[int, float] = {}
    for m in metrics:
        for it in m["iterations"]:
            ends[it["iteration"]] = max(ends.get(it["iteration"], 0.0), it["end"])
    ts = sorted(ends)
    gaps = [ends[b] - ends[a] for a, b in itertools.pairwise(ts) if b == a + 1]
    steady = gaps[1:] or gaps
    return float(np.median(steady)) if steady else None


def _accuracy(store: ObjectStore, spec: JobSpec, test_set: tuple[np.ndarray, np.ndarray]) -> float:
    """Accuracy of the final checkpoint's parameters, run through the unsplit model."""
    from jaxpipe.tree import nest

    plan = Plan.from_dict(spec.plan)
    params: dict[str, Any] = {}
    for k in range(len(plan.stages)):
        key = spec.keys.checkpoint(spec.iterations, k, "params")
        params.update(codec.decode(store.get(key, timeout=10), key=key))
    spec_model = models.get(spec.model, **spec.meta.get("model_overrides", {}))
    module = dataclasses.replace(spec_model.module, train=False)
    logits = module.apply({"params": nest(params, strip="params")}, test_set[0])
    return float(np.mean(np.argmax(np.asarray(logits), -1) == test_set[1]))


def _clean_up(store: ObjectStore, spec: JobSpec) -> None:
    """Leaves only results (job.json, metrics, summary) and checkpoints under the job prefix."""
    keys = spec.keys
    for prefix in ("run/", "status/", "data/"):
        store.delete_prefix(keys.prefix + prefix)
    store.delete(keys.bundle)
