"""How much of a fresh function's start does the compile cache save?

Every window of a long job starts fresh invocations, and each one imports JAX and compiles its
stage's programs before its first micro-batch. `jaxpipe.runtime.compile_cache` ships jax's
compiled executables through the job's store. For each model, cut into `--stages` stages at
micro-batch 4 and exported as a bundle into a file store, every stage is started three times as a
fresh Python process (what a cold function is), each timed from its spawn to the end of its
first micro-batch (forward and backward, `jax.block_until_ready`):

    off    no cache: the process compiles (what every window paid before)
    cold   the cache on, the store empty: it compiles and publishes its entries
    warm   the cache on, a fresh local directory: it fetches the entries and compiles nothing

and reports the seconds in XLA's compile (or cache load; `CompileMonitor`), the cache hits and
misses, the bytes fetched, and the start-up (spawn to first micro-batch, minus the steady
forward+backward time the process measures after it). Targets: compile seconds warm <= 1/5 of
off. The dollar effect for a 1-hour job: a rank starts ceil(3600 / 900) = 4 fresh invocations
an hour; at Lambda's GB-s price (`planners.platforms.get("aws-lambda")`) and the memory given
(`--memory`), each start-up second of each function costs the same as a second of training, so
dollars per iteration change by (3600 + 4 x startup_warm) / (3600 + 4 x startup_off).

Usage (from the repo root):
    python -m experiments.bench_coldstart            # ResNet-50, BERT-Base, AmoebaNet-D(18,64)
    python -m experiments.bench_coldstart --quick    # the -tiny configs
Writes experiments/results/bench_coldstart[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MICRO_BATCH = 4
HOUR_S, WINDOW_S = 3600.0, 900.0
MODELS = (("ResNet-50", "resnet50", {}), ("BERT-Base", "bert-base", {}),
          ("AmoebaNet-D(18, 64)", "amoebanet18", {"filters": 64}))
RUNS = ("off", "cold", "warm")


def export_job(name: str, overrides: dict[str, Any], stages: int, root: Path) -> str:
    """Traces `name`, cuts it into `stages` runs of about equal layer counts, and puts the bundle
    at `Keys(job).bundle` of a file store at `root`; returns the job id."""
    import jax

    import jaxpipe
    from jaxpipe import models
    from jaxpipe.runtime.job import Keys
    from transports import FileStore

    spec = models.get(name, **overrides) if overrides else models.get(name)
    variables = spec.init(jax.random.PRNGKey(0))
    batch = spec.make_batch(jax.random.PRNGKey(1), MICRO_BATCH)
    rngs = {"dropout": jax.random.PRNGKey(2)} if spec.uses_dropout else None
    traced = jaxpipe.trace(spec.module, variables, batch, spec.loss_fn, rngs=rngs)
    n = len(traced.layers)
    cuts = sorted({max(1, round(n * k / stages)) for k in range(1, stages)})
    job = f"bench-coldstart-{name}"
    FileStore(root).put(Keys(job).bundle, traced.split(cuts).export(MICRO_BATCH))
    return job


def child(root: str, job: str, stage: int) -> dict[str, Any]:
    """One fresh process: (the cache as the environment says) load, first micro-batch, steady."""
    began = time.time()
    import jax
    import numpy as np

    from jaxpipe.runtime import compile_cache
    from jaxpipe.runtime.job import Keys
    from jaxpipe.staging.bundle import load_stages
    from transports import FileStore

    imported = time.time()
    store = FileStore(root)
    keys = Keys(job)
    directory, temporary = compile_cache.local_dir(os.environ)
    cache = compile_cache.CompileCache(store, keys.compile_cache(compile_cache.host_fingerprint(),
                                                                 stage), directory, temporary)
    cache.fetch()
    runner = load_stages(store.get(keys.bundle), only=[stage])
    program, shapes = runner.stages[stage], runner.manifest["shapes"]
    assert program is not None
    spec = program.spec

    def zeros(shape: Sequence[int], dtype: str) -> Any:
        return np.zeros(tuple(shape), dtype)

    params = [zeros(shapes[p]["shape"], shapes[p]["dtype"]) for p in spec.param_paths]
    state = [zeros(shapes[p]["shape"], shapes[p]["dtype"]) for p in spec.state_paths]
    acts = [zeros(t.shape, t.dtype) for t in spec.inputs]
    cts = [zeros(t.shape, t.dtype) for t in spec.outputs if t.differentiable] or \
        [np.asarray(0.25, np.float32)]  # the last stage's seed: 1 / micro-batches

    def step() -> None:
        _, _, saved = program.forward(params, state, acts)
        jax.block_until_ready(program.backward(params, saved, cts))

    step()
    first = time.time()
    steady = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        steady.append(time.perf_counter() - t)
    published = cache.publish()
    record = cache.record()
    cache.close()
    return {"began": began, "import_s": imported - began, "first_done": first,
            "steady_s": float(np.median(steady)), "published": published, **record.to_dict()}


def run_stage(root: Path, job: str, stage: int, run: str, memory_mb: int) -> dict[str, Any]:
    """Spawns `child` for one stage with the cache `run` asks for; its result plus spawn times."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("JAXPIPE_COMPILE_CACHE_DIR", None)
    if run != "off":
        env["JAXPIPE_COMPILE_CACHE_DIR"] = "fresh"
    spawned = time.time()
    out = subprocess.run([sys.executable, "-m", "experiments.bench_coldstart", "--child",
                          str(root), job, str(stage)], env=env, capture_output=True, text=True,
                         timeout=1800, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    startup = result["first_done"] - spawned - result["steady_s"]
    return {"run": run, "stage": stage, "memory_mb": memory_mb, **result,
            "spawn_to_first_s": result["first_done"] - spawned, "startup_s": startup}


def hour_effect(rows: list[dict[str, Any]], memory_mb: int) -> dict[str, Any]:
    """Start-up dollars of a 1-hour job per function, and the dollars-per-iteration ratio."""
    from planners import platforms

    lam = platforms.get("aws-lambda")
    starts = math.ceil(HOUR_S / WINDOW_S)

    def mean_startup(run: str) -> float:
        values = [r["startup_s"] for r in rows if r["run"] == run]
        return sum(values) / len(values)

    off, warm = mean_startup("off"), mean_startup("warm")
    dollars = {run: starts * lam.function_dollars(memory_mb, mean_startup(run)) for run in RUNS}
    return {"invocations_per_hour": starts, "startup_s_off": off, "startup_s_warm": warm,
            "startup_dollars_per_function_hour": dollars,
            "training_dollars_per_function_hour": lam.function_dollars(memory_mb, HOUR_S),
            "dollars_per_iteration_ratio_warm_vs_off":
                (HOUR_S + starts * warm) / (HOUR_S + starts * off)}


def bench_model(label: str, name: str, overrides: dict[str, Any], stages: int,
                memory_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        root = Path(tmp)
        job = export_job(name, overrides, stages, root)
        rows = [run_stage(root, job, k, run, memory_mb) for run in RUNS for k in range(stages)]
    off = sum(r["compile_s"] for r in rows if r["run"] == "off")
    warm = sum(r["compile_s"] for r in rows if r["run"] == "warm")
    first_off = sum(r["spawn_to_first_s"] for r in rows if r["run"] == "off")
    first_warm = sum(r["spawn_to_first_s"] for r in rows if r["run"] == "warm")
    return {"label": label, "model": name, "overrides": overrides, "stages": stages,
            "micro_batch": MICRO_BATCH, "rows": rows,
            "compile_s": {run: sum(r["compile_s"] for r in rows if r["run"] == run)
                          for run in RUNS},
            "compile_ratio_off_vs_warm": off / warm if warm > 0 else None,
            "first_micro_batch_ratio_off_vs_warm": first_off / first_warm,
            "warm_misses": sum(r["misses"] for r in rows if r["run"] == "warm"),
            "hour": hour_effect(rows, memory_mb)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the -tiny configs")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--memory", type=int, default=3008,
                        help="function memory for the dollars, MB (a new account's largest)")
    parser.add_argument("--models", default=None, help="comma-separated zoo names")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "JOB", "STAGE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    chosen = [(f"{label} (tiny)" if args.quick else label, f"{name}-tiny" if args.quick else
               name, {} if args.quick else overrides) for label, name, overrides in MODELS]
    if args.models:
        wanted = args.models.split(",")
        chosen = [m for m in chosen if m[1] in wanted or m[1].removesuffix("-tiny") in wanted]
    results = []
    for label, name, overrides in chosen:
        result = bench_model(label, name, overrides, args.stages, args.memory)
        results.append(result)
        print(f"{label}: compile off {result['compile_s']['off']:.2f} s, warm "
              f"{result['compile_s']['warm']:.2f} s ({result['compile_ratio_off_vs_warm']:.1f}x);"
              f" spawn to first micro-batch {result['first_micro_batch_ratio_off_vs_warm']:.2f}x"
              f"; $/iteration x{result['hour']['dollars_per_iteration_ratio_warm_vs_off']:.4f}",
              flush=True)
    from experiments.runtime_common import machine

    out = Path(args.out) if args.out else RESULTS / (
        "bench_coldstart_quick.json" if args.quick else "bench_coldstart.json")
    out.write_text(json.dumps({"machine": machine(), "quick": args.quick, "memory_mb": args.memory,
                               "models": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
