"""What does cutting a model into stage programs cost, against the unsplit jitted step?

For ResNet-50, BERT-Base (seq 128) and AmoebaNet-D(18, 64) at micro-batch 4, cut into 4 stages,
and two models shaped like Flax code in the wild at the same BERT-Base-like size: the decoder-only
LM whose 12 blocks are one `nn.scan` (`lm-scan`: JaxPipe unrolls it, one unit per iteration) and
the NNX LM (`nnx-lm`, blocks in an `nnx.List`):

1. time ratio: the sum over stages of (forward + backward) seconds, divided by the seconds of
   the unsplit `jax.jit(jax.value_and_grad(loss))` step (with `mutable=['batch_stats']` where
   the model has state), in each mode, stash and recompute. Target: stash <= 1.10x.
   Every program is jitted and warmed up; each timed value is the median of `repeats` runs
   with `jax.block_until_ready`. Runs are interleaved: each round times the unsplit step once,
   then every stage's forward and backward of each mode once, so machine noise (the 2 cores are
   shared) hits all of them alike.
2. export size: `len(staged.export(4))`, bytes of the zip bundle.
3. load time: `jaxpipe.load_stages(blob)` (deserialising every stage), then the first call of
   every stage's loaded forward and backward (compilation plus one run), and the steady-state
   time of those calls, so first call - steady is the compile time.
4. compile time: the unsplit step's first call (compile + one run; for `lm-scan` the scanned
   original) against the first calls of every jitted stage's forward and backward (for
   `lm-scan`, the unrolled iterations).

Cuts balance compute: `jaxpipe.profile.profile` times every layer's forward and backward at
micro-batch 4, and the cuts minimise the largest stage's summed time (exact, by dynamic
programming over contiguous partitions). `--quick` runs the -tiny configs, balances parameter
bytes instead (no per-layer compiles) and times 3 rounds; its ratios are dominated by per-call
dispatch, so only the full run speaks to the target.

Usage:
    python -m experiments.bench_split           # full configs, 15 rounds (from the repo root)
    python -m experiments.bench_split --quick   # tiny configs, 3 rounds
    python -m experiments.bench_split --models lm-scan,nnx-lm --name bench_split_lm
Writes experiments/results/bench_split[_quick].json and .png (or `--name`.json and .png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxpipe
from jaxpipe import models
from jaxpipe.staging.profiling import profile

RESULTS = Path(__file__).parent / "results"
MICRO_BATCH = 4
STAGES = 4
TARGET = 1.10
MODES = ("stash", "recompute")
# (label, zoo name, overrides); --quick swaps in the -tiny configs.
MODELS = (
    ("ResNet-50", "resnet50", {}),
    ("BERT-Base", "bert-base", {}),
    ("AmoebaNet-D(18, 64)", "amoebanet18", {"filters": 64}),
    ("LM, nn.scan blocks", "lm-scan", {}),
    ("NNX LM", "nnx-lm", {}),
)


def balanced_cuts(costs: Sequence[float], stages: int) -> list[int]:
    """Cuts (first layer of stages 1..) splitting `costs` into `stages` contiguous runs so that
    the largest run's sum is as small as possible (dynamic programming, O(stages * L^2))."""
    n = len(costs)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    # best[k][i]: smallest max-run cost of the first i layers in k runs; start[k][i]: last cut.
    best = np.full((stages + 1, n + 1), np.inf)
    start = np.zeros((stages + 1, n + 1), dtype=int)
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], start[k][i] = value, j
    cuts, i = [], n
    for k in range(stages, 1, -1):
        i = start[k][i]
        cuts.append(int(i))
    return sorted(cuts)


def _unsplit_step(spec: models.ModelSpec, variables: Any, batch: tuple, rngs: Any) -> Callable:
    """The jitted value_and_grad of the whole model: () -> ((loss, new_state), grads)."""
    if spec.kind == "nnx":  # `variables` is the module; NNX's own jitted step, on a copy
        from flax import nnx

        model = nnx.clone(variables)

        @nnx.jit
        def nnx_step(model):
            return nnx.value_and_grad(lambda m: spec.loss_fn(m(batch[0]), batch[1]))(model)

        return lambda: nnx_step(model)
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        if state:
            out, new = spec.module.apply({"params": params, **state}, batch[0], rngs=rngs,
                                         mutable=list(state))
            return spec.loss_fn(out, batch[1]), new
        return spec.loss_fn(spec.module.apply({"params": params}, batch[0], rngs=rngs),
                            batch[1]), {}

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    params = variables["params"]
    return lambda: step(params)


def _stage_calls(staged: jaxpipe.Staged, batch: tuple) -> list[tuple[Callable, Callable]]:
    """Per stage, argument-free forward and backward calls on the values a real step feeds it
    (the variables, and the PRNG keys, are the ones given to `jaxpipe.trace`)."""
    traced = staged.traced
    params = dict(zip(traced.params.paths, traced.params.leaves))
    state = dict(zip(traced.state.paths, traced.state.leaves))
    data = [*traced.inputs.leaves_of(batch[0], "inputs"),
            *traced.targets.leaves_of(batch[1], "targets"), *traced.rng_keys]
    calls = []
    stages = staged.stages(MICRO_BATCH)
    acts = [data[i] for i in stages[0].spec.input_data]
    for stage in stages:
        spec = stage.spec
        p = [params[q] for q in spec.param_paths]
        s = [state[q] for q in spec.state_paths]
        a = list(acts)
        acts, _, saved = jax.block_until_ready(stage.forward(p, s, a))
        cts = [jnp.ones(t.shape, t.dtype) for t in spec.outputs if t.differentiable]
        fwd = stage.forward
        bwd = stage.backward
        calls.append((lambda fwd=fwd, p=p, s=s, a=a: fwd(p, s, a),
                      lambda bwd=bwd, p=p, saved=saved, cts=cts: bwd(p, saved, cts)))
    return calls


def _seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def _load(staged: jaxpipe.Staged, variables: dict, batch: tuple) -> dict[str, Any]:
    """Export size, deserialise time, first-call (compile + run) and steady time of the bundle."""
    start = time.perf_counter()
    blob = staged.export(MICRO_BATCH)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    runner = jaxpipe.load_stages(blob)
    deserialise_s = time.perf_counter() - start
    loaded = _stage_calls_of_runner(runner, staged, variables, batch)
    first = sum(_seconds(f) + _seconds(b) for f, b in loaded)
    steady = min(sum(_seconds(f) + _seconds(b) for f, b in loaded) for _ in range(3))
    return {"export_bytes": len(blob), "export_s": export_s, "deserialise_s": deserialise_s,
            "first_call_s": first, "steady_call_s": steady,
            "compile_s": max(first - steady, 0.0)}


def _stage_calls_of_runner(runner: jaxpipe.StageRunner, staged: jaxpipe.Staged,
                           variables: dict, batch: tuple) -> list[tuple[Callable, Callable]]:
    """The loaded programs' calls, fed with the inputs and residuals of the jitted stages."""
    traced = staged.traced
    params = dict(zip(traced.params.paths, traced.params.leaves))
    state = dict(zip(traced.state.paths, traced.state.leaves))
    data = [*traced.inputs.leaves_of(batch[0], "inputs"),
            *traced.targets.leaves_of(batch[1], "targets"), *traced.rng_keys]
    acts = [data[i] for i in staged.stages(MICRO_BATCH)[0].spec.input_data]
    calls = []
    for jitted, loaded in zip(staged.stages(MICRO_BATCH), runner.stages):
        spec = jitted.spec
        p = [params[q] for q in spec.param_paths]
        s = [state[q] for q in spec.state_paths]
        a = list(acts)
        acts, _, saved = jitted.forward(p, s, a)
        cts = [jnp.ones(t.shape, t.dtype) for t in spec.outputs if t.differentiable]
        calls.append((lambda f=loaded.forward, p=p, s=s, a=a: f(p, s, a),
                      lambda b=loaded.backward, p=p, saved=saved, cts=cts: b(p, saved, cts)))
    return calls


def bench_model(label: str, name: str, overrides: dict, quick: bool, rounds: int) -> dict:
    spec = models.get(f"{name}-tiny") if quick else models.get(name, **overrides)
    key = jax.random.PRNGKey(0)
    nnx_model = spec.build(key) if spec.kind == "nnx" else None
    variables = nnx_model if nnx_model is not None else spec.init(key)
    batch = spec.make_batch(jax.random.PRNGKey(1), MICRO_BATCH)
    rngs = spec.rngs(jax.random.PRNGKey(2))
    start = time.perf_counter()
    if nnx_model is not None:
        traced = jaxpipe.trace(nnx_model, None, batch, spec.loss_fn)
    else:
        traced = jaxpipe.trace(spec.module, variables, batch, spec.loss_fn, rngs=rngs)
    trace_s = time.perf_counter() - start
    print(f"{label}: {len(traced.layers)} layers, traced in {trace_s:.1f} s", flush=True)
    print("  choosing cuts", flush=True)

    start = time.perf_counter()
    if quick:  # no per-layer compiles: balance parameter bytes
        balance = "param_bytes"
        layer_costs = [float(la.param_bytes) for la in traced.layers]
    else:
        balance = "profiled fwd+bwd seconds"
        prof = profile(traced, (MICRO_BATCH,), repeats=3, name=spec.name)
        layer_costs = [la.fwd_time(MICRO_BATCH) + la.bwd_time(MICRO_BATCH) for la in prof.layers]
    profile_s = time.perf_counter() - start
    cuts = balanced_cuts(layer_costs, STAGES)
    print(f"  balanced {balance} in {profile_s:.1f} s; cuts {cuts}", flush=True)

    unsplit = _unsplit_step(spec, variables, batch, rngs)
    start = time.perf_counter()
    jax.block_until_ready(unsplit())
    unsplit_compile_s = time.perf_counter() - start
    staged = {mode: traced.split(cuts, mode) for mode in MODES}
    calls, first_calls_s = {}, {}
    for mode in MODES:  # first calls: _stage_calls runs each forward once, backwards run here
        start = time.perf_counter()
        calls[mode] = _stage_calls(staged[mode], batch)
        for _, bwd in calls[mode]:
            jax.block_until_ready(bwd())
        first_calls_s[mode] = time.perf_counter() - start
    for mode in MODES:  # warm-up
        for fwd, bwd in calls[mode]:
            jax.block_until_ready(fwd())
            jax.block_until_ready(bwd())

    times: dict[str, Any] = {"unsplit": []}
    for mode in MODES:
        times[mode] = [{"forward": [], "backward": []} for _ in range(STAGES)]
    for _ in range(rounds):  # interleaved: unsplit, then every stage of every mode
        times["unsplit"].append(_seconds(unsplit))
        for mode in MODES:
            for k, (fwd, bwd) in enumerate(calls[mode]):
                times[mode][k]["forward"].append(_seconds(fwd))
                times[mode][k]["backward"].append(_seconds(bwd))

    unsplit_s = statistics.median(times["unsplit"])
    result: dict[str, Any] = {
        "model": label, "zoo_name": spec.name, "config": repr(spec.config),
        "layers": [la.name for la in traced.layers], "cuts": cuts,
        "stage_layers": [[traced.layers[a].name, traced.layers[b - 1].name]
                         for a, b in staged["stash"].bounds],
        "balance": balance, "layer_costs": layer_costs,
        "param_bytes": sum(la.param_bytes for la in traced.layers),
        "trace_s": trace_s, "profile_s": profile_s, "unsplit_compile_s": unsplit_compile_s,
        "unsplit_s": unsplit_s, "unsplit_runs_s": times["unsplit"], "modes": {},
    }
    for mode in MODES:
        stages = []
        for k, stage in enumerate(staged[mode].stages(MICRO_BATCH)):
            f = statistics.median(times[mode][k]["forward"])
            b = statistics.median(times[mode][k]["backward"])
            stages.append({"forward_s": f, "backward_s": b,
                           "saved_bytes": sum(t.nbytes for t in stage.spec.saved),
                           "output_bytes": sum(t.nbytes for t in stage.spec.outputs)})
        total = sum(s["forward_s"] + s["backward_s"] for s in stages)
        load = _load(staged[mode], variables, batch)
        result["modes"][mode] = {"stages": stages, "sum_s": total, "ratio": total / unsplit_s,
                                 "jitted_first_calls_s": first_calls_s[mode], **load}
        print(f"  {mode:9s}: sum {total * 1e3:8.1f} ms / unsplit {unsplit_s * 1e3:8.1f} ms = "
              f"{total / unsplit_s:.3f}x; export {load['export_bytes'] / 1e6:.1f} MB, "
              f"load {load['deserialise_s']:.2f} s + first call {load['first_call_s']:.2f} s; "
              f"jitted stages' first calls {first_calls_s[mode]:.2f} s against the unsplit "
              f"step's {unsplit_compile_s:.2f} s", flush=True)
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    x = np.arange(len(results))
    for i, mode in enumerate(MODES):
        ratios = [r["modes"][mode]["ratio"] for r in results]
        bars = ax.bar(x + (i - 0.5) * width, ratios, width, label=mode)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(TARGET, color="red", linestyle="--", linewidth=1, label=f"target {TARGET:.2f}x")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xticks(x, [r["model"] for r in results])
    ax.set_ylabel("sum of stage fwd+bwd / unsplit step")
    ax.set_title(f"{STAGES} stages, micro-batch {MICRO_BATCH} (median of runs)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny configs, 3 rounds")
    parser.add_argument("--rounds", type=int, help="timed rounds (default: 15, or 3 with --quick)")
    parser.add_argument("--models", help="comma-separated zoo names to run (default: all three)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", help="file stem (default: bench_split[_quick]); e.g. "
                        "bench_split_lm for a --models subset, keeping the full run's file")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 15)
    chosen = [m for m in MODELS if not args.models or m[1] in args.models.split(",")]
    results = [bench_model(*m, quick=args.quick, rounds=rounds) for m in chosen]
    stem = args.name or ("bench_split_quick" if args.quick else "bench_split")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "micro_batch": MICRO_BATCH, "stages": STAGES, "target": TARGET, "rounds": rounds,
        "quick": args.quick, "jax": jax.__version__, "cpus": len(os.sched_getaffinity(0)),
        "machine": platform.platform(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "results": results,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    plot(results, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
