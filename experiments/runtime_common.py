"""Helpers shared by the experiments: small model configs, profiling as a local function does,
and running a plan on the local platform (`experiments.timelines` reads what the run recorded).

Runtime experiments (fidelity, bench_runtime, convergence) run real jobs with
`jaxpipe.runtime.train`; every function is a fresh process that imports JAX, so a job costs
~5-10 s of start-up on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform as _platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the runtime imports JAX; experiments import it only when they run a job
    from jaxpipe.runtime.metrics import RankMetrics
    from jaxpipe.runtime.summary import Summary
    from planners import Plan, Problem
    from transports import ObjectStore

RESULTS = Path(__file__).parent / "results"
# One core's worth of XLA, as the local platform runs such a rank (`platforms.local.worker_env`;
# XLA sizes its thread pool from the CPU affinity, and Eigen's pool is what this turns off).
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"

# Experiment-only model configs: registry name -> (base registry name, config overrides).
SMALL_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # ResNet-18 (2, 2, 2, 2 basic blocks) at 32x32, width 16, 10 classes: 0.7 M parameters.
    "resnet18-small": ("resnet18", {"image_size": 32, "num_classes": 10, "width": 16}),
    # BERT with 4 encoder layers of width 128 on 32-token sequences: 0.9 M parameters.
    "bert-small": ("bert-base", {"num_layers": 4, "hidden": 128, "heads": 4, "seq_len": 32,
                                 "max_positions": 32, "vocab_size": 512, "dropout": 0.0}),
}


def results_dir(name: str, out: str | Path | None = None) -> Path:
    """experiments/results/<name>/ (or `out`), created."""
    path = Path(out) if out else RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpus": len(os.sched_getaffinity(0)), "load_avg_1m": os.getloadavg()[0],
            "python": _platform.python_version(), "machine": _platform.machine()}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=_json_default))


def cli(run: Any, doc: str, name: str) -> None:
    """The command line the runtime experiments share: `--quick` and `--out`, then `run`."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help=f"output folder (default experiments/results/{name})")
    args = parser.parse_args()
    run(args.quick, args.out)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON: {type(value)}")


# -- models ------------------------------------------------------------------------------------

def resolve(model: str) -> tuple[str, dict[str, Any]]:
    """(zoo name, config overrides) of a model name, experiment-only SMALL_MODELS included."""
    return SMALL_MODELS.get(model, (model, {}))


def profile_path(cache_dir: str | Path, model: str, batch: int) -> Path:
    """Where `jaxpipe.runtime.train` looks for the profile of `model` at global batch `batch`."""
    from jaxpipe.runtime.planning import profile_cache_path, profile_sizes

    base, overrides = resolve(model)
    return profile_cache_path(cache_dir, base, overrides, profile_sizes(batch))


# -- profiling like a function ---------------------------------------------------------------

def profile_like_a_function(model: str, batch: int, cache_dir: str | Path,
                            repeats: int = 5, sizes: tuple[int, ...] = (2, 4)) -> Path:
    """Profiles `model` in a fresh process with one XLA thread, as a local function runs, and
    stores it where `jaxpipe.runtime.train` looks for its profile cache (reference_cpus = 1).

    The driver's own profile would be taken with every core of this machine; the workers run
    single-threaded, so a profile with `reference_cpus` = cores would assume a 2x slow-down
    that small kernels never had. Only `sizes` are timed (each layer is compiled per size, which
    costs minutes on a loaded 2-core machine): pass the plan's micro-batch size and one more for
    the linear fit. Batch size 1 is avoided: BERT's trace changes structure at batch 1.
    """
    path = profile_path(cache_dir, model, batch)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XLA_FLAGS=SINGLE_THREAD_XLA, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "experiments.runtime_common", "profile", model,
                    str(batch), str(path), str(repeats), ",".join(map(str, sizes))],
                   check=True, env=env, cwd=Path(__file__).resolve().parents[1])
    return path


def _profile_main(model: str, batch: int, out: str, repeats: int, sizes: tuple[int, ...],
                  ) -> None:
    import jax

    from jaxpipe import models
    from jaxpipe.runtime.train import TrainOptions, first_rows, training_data
    from jaxpipe.staging.profiling import profile
    from jaxpipe.staging.tracing import trace

    base, overrides = resolve(model)
    spec = models.get(base, **overrides)
    options = TrainOptions(model=base, model_overrides=overrides, batch=batch)
    variables = spec.init(jax.random.PRNGKey(options.seed))
    data, _ = training_data(spec, options)
    traced = trace(spec.module, variables, tuple(first_rows(p, batch) for p in data), spec.loss_fn,
                   rngs=spec.rngs(jax.random.PRNGKey(options.seed)))
    prof = profile(traced, sizes, repeats=repeats, name=spec.name)
    prof = dataclasses.replace(prof, reference_cpus=1.0)
    Path(out).write_text(json.dumps(prof.to_dict()))


def local_platform(path: Path, share: float, **fields: Any) -> Path:
    """Writes a `local` platform file giving each function `share` of a core."""
    path.write_text(json.dumps({"max_cpus": share, **fields}))
    return path


def cpu_share(plan: Any, problem: Any, cores: int | None = None) -> float:
    """The CPU share each function of `plan` gets from `cores` cores (default: this machine's).

    `problem` predicts with a full core per function. Its functions' summed compute per
    iteration (forward and backward of every micro-batch, plus each replica's update) over the
    predicted iteration time is the number of cores they keep busy on average: while that fits
    in `cores`, a function computing finds a core (share 1); beyond, they get the part that
    fits. (Ranks of a pipeline compute in turns: with N functions on fewer cores, assuming all
    compute at once, i.e. cores / N, over-predicted compute 2-4x in bench_runtime.)
    """
    from planners import cost

    cores = cores or len(os.sched_getaffinity(0))
    terms = cost.plan_terms(plan, problem)
    busy = sum(plan.num_micro_batches * (t.fwd + t.bwd) + st.replicas * t.update
               for t, st in zip(terms, plan.stages, strict=True))
    demand = busy / cost.iteration_time(plan, problem)
    return min(1.0, cores / demand) if demand > 0 else 1.0


# -- running a plan ----------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A finished job: its summary, every rank's metrics (sorted by rank), the problem it was
    predicted with."""

    summary: Summary
    metrics: list[RankMetrics]
    problem: Problem
    plan: Plan
    store: ObjectStore
    job: str
    seconds: float


def run_plan(workdir: str | Path, job: str, model: str, plan: Any, batch: int, iterations: int,
             *, functions_share: bool = True, optimizer: str = "momentum",
             learning_rate: float = 0.05, checkpoint_every: int = 1000,
             platform_fields: dict[str, Any] | None = None, wait_timeout_s: float = 180.0,
             profile_repeats: int = 5, reuse: bool = False) -> Run:
    """Runs `plan` (a planners.Plan) for `model` on the local platform and returns the `Run`.

    The profile is taken as a function runs (`profile_like_a_function`); with
    `functions_share`, the platform's CPU share is what this machine's cores give the plan's
    functions (see `cpu_share`).
    """
    from jaxpipe.runtime.driver import RunConfig
    from jaxpipe.runtime.train import TrainOptions, train

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "profiles"
    sizes = tuple(sorted({max(plan.micro_batch // 2, 2), plan.micro_batch}))
    profile_like_a_function(model, batch, cache, profile_repeats, sizes)
    plan_path = workdir / f"{job}-plan.json"
    plan_path.write_text(json.dumps(plan.to_dict()))
    fields = dict(platform_fields or {})
    plat_path = workdir / f"{job}-platform.json"
    local_platform(plat_path, 1.0, **fields)
    if functions_share:
        local_platform(plat_path, cpu_share(plan, _problem(workdir, job, model, plan, batch,
                                                            optimizer)), **fields)
    else:
        plat_path.write_text(json.dumps(fields))
    base, overrides = resolve(model)
    options = TrainOptions(
        model=base, model_overrides=overrides, platform="local", platform_file=str(plat_path),
        plan_file=str(plan_path),
        batch=batch, iterations=iterations, optimizer=optimizer, learning_rate=learning_rate,
        store=str(workdir / "store"), job_id=job, checkpoint_every=checkpoint_every,
        profile_cache=str(cache), wait_timeout_s=wait_timeout_s,
        run=RunConfig(log_dir=str(workdir / "logs")))
    timing = workdir / f"{job}-seconds.json"
    if not (reuse and timing.exists()):  # reuse: analyse a finished job again, do not rerun it
        began = time.time()
        train(options, show_progress=False)
        timing.write_text(json.dumps(time.time() - began))
    return load_run(workdir, job, model, plan, batch, optimizer, json.loads(timing.read_text()))


def load_run(workdir: str | Path, job: str, model: str, plan: Any, batch: int,
             optimizer: str = "momentum", seconds: float = 0.0) -> Run:
    """The `Run` of a finished job of `run_plan` in `workdir` (its summary and metrics stay in
    the store), so that its timelines can be analysed again without running it."""
    from jaxpipe.runtime.job import Keys
    from jaxpipe.runtime.metrics import RankMetrics
    from jaxpipe.runtime.summary import Summary
    from jaxpipe.runtime.train import open_store

    workdir = Path(workdir)
    store = open_store(str(workdir / "store"))
    keys = Keys(job)
    summary = Summary.from_dict(json.loads(store.get(keys.summary)))
    metrics = [RankMetrics.from_dict(json.loads(store.get(k)))
               for k in store.list(keys.all_metrics())]
    metrics.sort(key=lambda m: (m.rank, m.attempt, m.invocation))
    problem = _problem(workdir, job, model, plan, batch, optimizer)
    return Run(summary, metrics, problem, plan, store, job, seconds)


def _problem(workdir: Path, job: str, model: str, plan: Plan, batch: int,
             optimizer: str) -> Problem:
    """The planning problem of a `run_plan` job, as `jaxpipe.runtime.train` built it: its cached
    profile, its platform file, and the training set stage 0 keeps in memory."""
    from jaxpipe import models
    from jaxpipe.runtime.planning import OPTIMIZER_SLOTS, profile_sizes
    from jaxpipe.runtime.train import TrainOptions, dataset_bytes, training_data
    from planners import Platform, Problem, platforms
    from planners.profile import ModelProfile

    base, overrides = resolve(model)
    data, _ = training_data(models.get(base, **overrides),
                            TrainOptions(model=base, model_overrides=overrides, batch=batch))
    prof = ModelProfile.from_dict(json.loads(profile_path(workdir / "profiles", model,
                                                          batch).read_text()))
    plat = platforms.get("local", str(workdir / f"{job}-platform.json"))
    return Problem(profile=prof, platform=Platform.from_dict(plat.to_dict()),
                   global_batch=batch, micro_batches=profile_sizes(batch),
                   replica_options=(1, 2, 4), max_functions=max(plan.num_functions, 4),
                   optimizer_slots=OPTIMIZER_SLOTS[optimizer],
                   cached_input_bytes=dataset_bytes(data))


def main() -> None:
    if len(sys.argv) >= 5 and sys.argv[1] == "profile":
        _profile_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                      tuple(int(b) for b in sys.argv[6].split(",")))
    else:
        raise SystemExit("usage: python -m experiments.runtime_common profile MODEL BATCH OUT "
                         "REPEATS SIZES")


if __name__ == "__main__":
    main()
