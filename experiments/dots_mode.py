"""Dots mode: what keeping only matmul and convolution outputs saves, and what it costs.

Question (issue 16 part 3): between `stash` (the forward returns every VJP residual) and
`recompute` (it returns only its inputs; the backward re-runs it), `dots` runs each stage under
`jax.checkpoint(policy=dots_saveable)`, so its forward returns only the outputs of
`dot_general` and `conv_general_dilated` (and the stage's inputs) and the backward recomputes
the elementwise ops. The claim to check, from `bench_split` on AmoebaNet-D(18, 64): the stash
forward writes 708 MB of residuals per call (4 stages at micro-batch 4) and such a policy cuts
them to 166 MB for about 5% more time.

    python -m experiments.dots_mode [--quick] [--rounds N] [--out DIR]

1. Staged: AmoebaNet-D(18, 64) at micro-batch 4, cut at bench_split's layers [4, 9, 15]; per
   mode, every stage's residual bytes (what its forward returns for the backward) and the
   median forward and backward seconds over `rounds` interleaved rounds (each round times the
   unsplit jitted step once, then every stage of every mode once, so machine noise hits all
   alike).
2. Profiled: `jaxpipe.profile` at micro-batch 4 with dots mode on: per layer, stash and dots
   residual bytes per sample and backward seconds (what the planner prices).
3. Planned: that profile on alibaba-fc (3 GB functions, where memory binds) at batch 64, the
   MIQP with dots allowed and forbidden (recompute allowed in both): the modes it picks and
   the predicted time and cost.

Full: 24 min on 2 shared cores at load 5-14 (compiles dominate). `--quick`: the -tiny AmoebaNet,
cuts balancing parameter bytes, 3 rounds (10.5 min at load 14, compiles dominate; its times
are per-call dispatch, so only the full run speaks to the claim).
Writes experiments/results/dots_mode[/quick]/dots_mode.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import jax

import jaxpipe
from experiments import common
from experiments.bench_split import _seconds, _stage_calls, _unsplit_step, balanced_cuts
from jaxpipe import models
from jaxpipe.runtime.zoo import linen_module
from planners import Problem, platforms

MICRO_BATCH = 4  # bench_split's (its _stage_calls feed micro-batches of this size)
CUTS = [4, 9, 15]  # bench_split's balanced cuts of AmoebaNet-D(18, 64) at micro-batch 4
MODES = ("stash", "dots", "recompute")


def staged(spec: models.ModelSpec, quick: bool, rounds: int) -> tuple[dict[str, Any], Any]:
    """Part 1: residual bytes and per-stage times of every mode; also returns the trace."""
    variables = spec.init(jax.random.PRNGKey(0))
    batch = spec.make_batch(jax.random.PRNGKey(1), MICRO_BATCH)
    rngs = spec.rngs(jax.random.PRNGKey(2))
    traced = jaxpipe.trace(linen_module(spec), variables, batch, spec.loss_fn, rngs=rngs)
    cuts = (balanced_cuts([float(la.param_bytes) for la in traced.layers], 4) if quick
            else CUTS)
    unsplit = _unsplit_step(spec, variables, batch, rngs)
    jax.block_until_ready(unsplit())
    split = {mode: traced.split(cuts, mode) for mode in MODES}
    calls = {}
    for mode in MODES:  # first calls compile; one more run of each warms up
        calls[mode] = _stage_calls(split[mode], batch)
        for fwd, bwd in calls[mode]:
            jax.block_until_ready(bwd())
            jax.block_until_ready(fwd())
        print(f"  {mode}: compiled", flush=True)
    times: dict[str, Any] = {"unsplit": []} | {
        m: [{"forward": [], "backward": []} for _ in cuts + [0]] for m in MODES}
    for _ in range(rounds):
        times["unsplit"].append(_seconds(unsplit))
        for mode in MODES:
            for k, (fwd, bwd) in enumerate(calls[mode]):
                times[mode][k]["forward"].append(_seconds(fwd))
                times[mode][k]["backward"].append(_seconds(bwd))
    out: dict[str, Any] = {"cuts": cuts, "unsplit_s": statistics.median(times["unsplit"]),
                           "modes": {}}
    for mode in MODES:
        stages = [{"saved_bytes": sum(t.nbytes for t in st.spec.saved),
                   "forward_s": statistics.median(times[mode][k]["forward"]),
                   "backward_s": statistics.median(times[mode][k]["backward"])}
                  for k, st in enumerate(split[mode].stages(MICRO_BATCH))]
        out["modes"][mode] = {
            "stages": stages, "saved_bytes": sum(s["saved_bytes"] for s in stages),
            "forward_s": sum(s["forward_s"] for s in stages),
            "backward_s": sum(s["backward_s"] for s in stages),
            "sum_s": sum(s["forward_s"] + s["backward_s"] for s in stages)}
    stash = out["modes"]["stash"]
    for mode in MODES:
        m = out["modes"][mode]
        m["saved_over_stash"] = m["saved_bytes"] / stash["saved_bytes"]
        m["time_over_stash"] = m["sum_s"] / stash["sum_s"]
        m["time_over_unsplit"] = m["sum_s"] / out["unsplit_s"]
        print(f"  {mode:9s}: residuals {m['saved_bytes'] / 1e6:8.1f} MB per call "
              f"({m['saved_over_stash']:.3f} of stash), fwd+bwd {m['sum_s'] * 1e3:7.1f} ms "
              f"({m['time_over_stash']:.3f}x stash, {m['time_over_unsplit']:.3f}x unsplit)",
              flush=True)
    return out, traced


def profiled(traced: Any, name: str, repeats: int) -> tuple[dict[str, Any], Any]:
    """Part 2: the per-layer profile with dots mode, and its totals."""
    t0 = time.perf_counter()
    prof = jaxpipe.profile(traced, (MICRO_BATCH,), repeats=repeats, name=name, dots=True)
    layers = [{"name": la.name, "stash_bytes_per_sample": la.stash_bytes_per_sample,
               "dots_stash_bytes_per_sample": la.dots_stash_bytes_per_sample,
               "bwd_s": la.bwd_time(MICRO_BATCH), "dots_bwd_s": la.dots_bwd_time(MICRO_BATCH),
               "fwd_s": la.fwd_time(MICRO_BATCH)} for la in prof.layers]
    total = {k: sum(x[k] or 0.0 for x in layers) for k in layers[0] if k != "name"}
    print(f"  profile: stash {total['stash_bytes_per_sample'] / 1e6:.1f} MB/sample, dots "
          f"{total['dots_stash_bytes_per_sample'] / 1e6:.1f} MB/sample; backward "
          f"{total['bwd_s'] * 1e3:.1f} ms (stash) vs {total['dots_bwd_s'] * 1e3:.1f} ms (dots) "
          f"at b={MICRO_BATCH}", flush=True)
    return {"layers": layers, "total": total,
            "profile_s": round(time.perf_counter() - t0, 1)}, prof


def planned(prof: Any, batch: int, time_limit: float) -> dict[str, Any]:
    """Part 3: the MIQP on alibaba-fc with dots allowed and forbidden."""
    base = Problem(prof, platforms.get("alibaba-fc"), batch, micro_batches=(MICRO_BATCH,),
                   replica_options=(1, 2, 4))
    out: dict[str, Any] = {"platform": "alibaba-fc", "batch": batch}
    for allow in (True, False):
        prob = dataclasses.replace(base, allow_dots=allow)
        p = common.solve(prob, "miqp", time_limit)
        key = "dots on" if allow else "dots off"
        out[key] = {"infeasible": True} if p is None else common.plan_row(p, prob, sim=False)
        print(f"  plan, {key}: {out[key].get('modes', 'infeasible')}, "
              f"{out[key].get('seconds', float('nan')):.3f} s, "
              f"{out[key].get('dollars', float('nan')):.3g} per iteration", flush=True)
    return out


def run(out: Path | str | None = None, quick: bool = False,
        rounds: int | None = None) -> dict[str, Any]:
    """Runs the three parts; writes dots_mode.json into ``out``; returns the data."""
    path = common.out_dir("dots_mode", out, quick)
    rounds = rounds or (3 if quick else 9)
    spec = models.get("amoebanet18-tiny") if quick else models.get("amoebanet18", filters=64)
    t0 = time.perf_counter()
    print(f"{spec.name} ({spec.config}), micro-batch {MICRO_BATCH}", flush=True)
    split, traced = staged(spec, quick, rounds)
    prof_data, prof = profiled(traced, spec.name, 1 if quick else 3)
    data = {"model": spec.name, "config": repr(spec.config), "micro_batch": MICRO_BATCH,
            "rounds": rounds, "quick": quick, "jax": jax.__version__, "staged": split,
            "profiled": prof_data, "planned": planned(prof, 64, 2.0 if quick else 5.0),
            "runtime_seconds": round(time.perf_counter() - t0, 1)}
    common.save_json(path / "dots_mode.json", data)
    print(f"wrote {path / 'dots_mode.json'}")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    data = run(args.out, args.quick, args.rounds)
    print(f"runtime {data['runtime_seconds']} s")


if __name__ == "__main__":
    main()
