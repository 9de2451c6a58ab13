"""Recompute: what the per-stage choice between stashing and recomputing buys.

Question (an extension the paper does not have): when the planner may run a stage in
``recompute`` mode (keep only each micro-batch's input and rerun the forward in backward,
``Problem.allow_recompute``), how much memory, time and money does the best plan save, and
which stages does it put in recompute mode?

    python -m experiments.recompute [--quick] [--out DIR] [--cpu-scale 1.0]

For each model and platform at batch 64 and 256: the MIQP plan with recompute allowed and forbidden
(same cost model, same objective), and data-parallel likewise; for every stage the planner
recomputes, its peak memory in recompute mode against the stash mode of the same stage and
configuration. Full: 4 models x {aws-lambda, alibaba-fc} x batch {64, 256}, 12 groups, HiGHS
limit 3 s (about 4 min on 2 shared cores). Quick: BERT-Large and ResNet-101 on alibaba-fc (3 GB
functions, where memory binds), 8 groups (about 40 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from experiments import common
from planners import Plan, Problem, cost

FULL = {"models": common.MODELS, "platforms": ("aws-lambda", "alibaba-fc"), "groups": 12,
        "time_limit": 3.0, "batches": (64, 256)}
QUICK = {"models": ("bert-large", "resnet101"), "platforms": ("alibaba-fc",), "groups": 8,
         "time_limit": 2.0, "batches": (64,)}
METHODS = ("miqp", "data-parallel")


def stage_savings(p: Plan, problem: Problem) -> list[dict[str, Any]]:
    """For each recomputed stage: peak MB in recompute vs stash mode, backward seconds added."""
    model = cost.StageModel(problem, p.micro_batch)
    out = []
    for s, st in enumerate(p.stages):
        if st.mode != "recompute":
            continue
        rec = model.terms(st.first_layer, st.last_layer, st.memory_mb, st.replicas, "recompute")
        sta = model.terms(st.first_layer, st.last_layer, st.memory_mb, st.replicas, "stash")
        out.append({"stage": s, "memory_mb": st.memory_mb, "replicas": st.replicas,
                    "peak_recompute_mb": rec.peak_mb, "peak_stash_mb": sta.peak_mb,
                    "saved_mb": sta.peak_mb - rec.peak_mb,
                    "extra_backward_seconds": rec.bwd - sta.bwd})
    return out


def run_setting(model: str, platform: str, batch: int, cfg: dict[str, Any],
                cpu_scale: float) -> dict[str, Any]:
    """MIQP and data-parallel with recompute on and off."""
    base = common.make_problem(model, platform, batch, cfg["groups"], cpu_scale)
    out: dict[str, Any] = {"model": model, "platform": platform, "batch": batch,
                           "currency": base.platform.currency,
                           "profile": base.profile.meta.get("source")}
    for method in METHODS:
        for allow in (True, False):
            prob = dataclasses.replace(base, allow_recompute=allow)
            p = common.solve(prob, method, cfg["time_limit"])
            key = f"{method}/{'on' if allow else 'off'}"
            if p is None:
                out[key] = {"infeasible": True}
                continue
            row = common.plan_row(p, prob, sim=False)
            row["recomputed_stages"] = stage_savings(p, prob)
            row["max_peak_mb"] = max(p.peak_memory_mb)
            row["gb"] = sum(st.memory_mb * st.replicas for st in p.stages) / 1024
            out[key] = row
        on, off = out[f"{method}/on"], out[f"{method}/off"]
        if not on.get("infeasible") and not off.get("infeasible"):
            out[f"{method}/gain"] = {
                "objective_ratio_off_over_on": off["objective"] / on["objective"],
                "speedup": off["seconds"] / on["seconds"],
                "cost_saving": 1 - on["dollars"] / off["dollars"],
                "gb_saved": off["gb"] - on["gb"]}
    return out


def figure(settings: list[dict[str, Any]], path: Path) -> None:
    """Time, cost and GB of functions of the MIQP plan, recompute off vs on."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = [f"{s['model']}\n{s['platform'].split('-')[0]} B={s['batch']}" for s in settings]
    for ax, (key, name) in zip(axes, (("seconds", "s / iteration"),
                                      ("dollars", "cost / iteration (platform currency)"),
                                      ("gb", "GB of functions")), strict=True):
        for k, mode in enumerate(("off", "on")):
            vals = [s[f"miqp/{mode}"].get(key, float("nan")) for s in settings]
            ax.bar([i + 0.4 * k for i in range(len(settings))], vals, 0.4,
                   label=f"recompute {mode}")
        ax.set_xticks([i + 0.2 for i in range(len(settings))])
        ax.set_xticklabels(labels, fontsize=6)
        ax.set_ylabel(name)
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("MIQP plan with and without per-stage recomputation (missing bar: "
                 "infeasible)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path | str | None = None, quick: bool = False, cpu_scale: float = 1.0,
        **overrides: Any) -> dict[str, Any]:
    """Run the experiment; writes recompute.json and .png into ``out``; returns the data."""
    cfg = dict(QUICK if quick else FULL) | overrides
    path = common.out_dir("recompute", out, quick)
    t0 = time.perf_counter()
    settings = []
    for model, platform, batch in itertools.product(cfg["models"], cfg["platforms"],
                                                    cfg["batches"]):
        s = run_setting(model, platform, batch, cfg, cpu_scale)
        settings.append(s)
        print(model, platform, batch, {k: v for k, v in s.items() if k.endswith("gain")},
              [s[f"miqp/{m}"].get("modes") for m in ("on", "off")], flush=True)
    data = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
            | {"quick": quick, "cpu_scale": cpu_scale}, "settings": settings,
            "runtime_seconds": round(time.perf_counter() - t0, 1)}
    common.save_json(path / "recompute.json", data)
    figure(settings, path / "recompute.png")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cpu-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    data = run(args.out, args.quick, args.cpu_scale)
    print(f"runtime {data['runtime_seconds']} s")


if __name__ == "__main__":
    main()
