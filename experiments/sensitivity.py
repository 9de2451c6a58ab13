"""Sensitivity: how the best (MIQP) plan and its time and cost move with the platform.

Question: which plan does the MIQP pick, and what does it cost, as storage bandwidth
(10-200 MB/s), storage request latency, the micro-batch size, the memory grid, the GB-s price
and the CPU scaling parameter (Lambda vCPUs per core of this machine) change, one at a time
around the aws-lambda catalog?

    python -m experiments.sensitivity [--quick] [--out DIR]

Every point solves the weighted objective (the "best plan"), warm-started with the previous
point's plan when that plan is valid at the new point (an incumbent only: the MIQP stays exact;
with a time limit it keeps a sweep from losing a plan it had); the bandwidth and latency sweeps
also solve min-time (the fastest plan), whose time can only fall as links get faster. The
weight stays 1e-3 $/s when the price changes, so the price sweep moves the time-cost trade-off.
Full: ResNet-101 and BERT-Large, batch 64, 12 layer groups, HiGHS limit 3 s per MILP (about
12 min on 2 shared cores). Quick: BERT-Large, 8 groups, short sweeps (about 1 min).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from experiments import common
from planners import InfeasibleError, Objective, Plan, PlanError, Problem, cost, plan, platforms
from planners.platforms import MB

AWS = platforms.get("aws-lambda")
GRIDS = {"8level": AWS.memory_options_mb, "small (1-3 GB)": (1024, 2048, 3072),
         "coarse (1,3,10 GB)": (1024, 3072, 10240),
         "1 GB steps": tuple(range(1024, 10241, 1024))}
SWEEPS = {
    "bandwidth_MBps": (10, 25, 50, 70, 100, 200),
    "latency_s": (0.005, 0.01, 0.03, 0.05, 0.1, 0.2),
    "micro_batch": (1, 2, 4, 8),
    "memory_grid": tuple(GRIDS),
    "price_factor": (0.25, 0.5, 1.0, 2.0, 4.0),
    "cpu_scale": (0.5, 1.0, 2.0, 3.0),
}
FULL = {"models": ("resnet101", "bert-large"), "groups": 8, "time_limit": 2.0,
        "sweeps": SWEEPS}
QUICK = {"models": ("bert-large",), "groups": 8, "time_limit": 2.0,
         "sweeps": {"bandwidth_MBps": (10, 70, 200), "latency_s": (0.01, 0.1),
                    "micro_batch": (2, 8), "memory_grid": ("8level", "small (1-3 GB)"),
                    "price_factor": (0.5, 2.0), "cpu_scale": (0.5, 2.0)}}
FASTEST = ("bandwidth_MBps", "latency_s")  # sweeps that also solve min-time


def problem_at(base: Problem, axis: str, value: Any, model: str, groups: int) -> Problem:
    """``base`` with one parameter changed."""
    plat = base.platform
    if axis == "bandwidth_MBps":
        plat = dataclasses.replace(plat, uplink_bytes_per_s=value * MB,
                                   downlink_bytes_per_s=value * MB)
    elif axis == "latency_s":
        plat = dataclasses.replace(plat, request_latency_s=value)
    elif axis == "memory_grid":
        plat = dataclasses.replace(plat, memory_options_mb=GRIDS[value])
    elif axis == "price_factor":
        plat = dataclasses.replace(plat, price_gb_second=plat.price_gb_second * value)
    elif axis == "micro_batch":
        return dataclasses.replace(base, micro_batches=(value,))
    elif axis == "cpu_scale":
        return common.make_problem(model, "aws-lambda", base.global_batch, groups, value)
    return dataclasses.replace(base, platform=plat)


def warm(prev: Plan | None, problem: Problem) -> Plan | None:
    """The previous point's plan re-scored under ``problem``, if it is valid there."""
    if prev is None or prev.micro_batch not in problem.valid_micro_batches:
        return None
    try:
        if cost.violations(prev, problem):
            return None
        p = cost.score(prev, problem)
    except PlanError:
        return None
    return p if math.isfinite(p.objective_value) else None


def point(problem: Problem, time_limit: float, fastest: bool,
          prev: Plan | None = None) -> tuple[dict[str, Any], Plan | None]:
    """Best plan (weighted objective; warm-started from ``prev`` when it is valid here) and,
    if asked, the fastest plan."""
    inc = warm(prev, problem)
    try:
        p = plan(problem, "miqp", time_limit=time_limit,
                 **({"incumbent": inc} if inc is not None else {}))
    except InfeasibleError:
        p = None
    row = ({"infeasible": True} if p is None else common.plan_row(p, problem, sim=False))
    row["warm_started"] = inc is not None
    if fastest and p is not None:
        f = common.solve(dataclasses.replace(problem, objective=Objective.min_time()), "miqp",
                         time_limit)
        row["fastest"] = None if f is None else common.plan_row(f, problem, sim=False)
    return row, p


def run(out: Path | str | None = None, quick: bool = False, cpu_scale: float = 1.0,
        **overrides: Any) -> dict[str, Any]:
    """Run the sweeps; writes sensitivity.json and .png into ``out``; returns the data."""
    cfg = dict(QUICK if quick else FULL) | overrides
    path = common.out_dir("sensitivity", out, quick)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for model in cfg["models"]:
        base = common.make_problem(model, "aws-lambda", 64, cfg["groups"], cpu_scale,
                                   objective=Objective.weighted(common.weight_for(AWS)))
        results[model] = {}
        for axis, values in cfg["sweeps"].items():
            rows, prev = [], None
            for v in values:
                prob = problem_at(base, axis, v, model, cfg["groups"])
                row, prev = point(prob, cfg["time_limit"], axis in FASTEST, prev)
                rows.append({"value": v} | row)
            results[model][axis] = rows
            print(model, axis, [(r["value"], round(r.get("seconds") or 0, 2), r.get("stages"),
                                 r.get("functions")) for r in rows], flush=True)
    data = {"config": {"models": list(cfg["models"]), "groups": cfg["groups"],
                       "time_limit": cfg["time_limit"], "quick": quick, "cpu_scale": cpu_scale,
                       "sweeps": {k: list(v) for k, v in cfg["sweeps"].items()}},
            "results": results, "runtime_seconds": round(time.perf_counter() - t0, 1)}
    common.save_json(path / "sensitivity.json", data)
    figure(results, path / "sensitivity.png")
    return data


def figure(results: dict[str, Any], path: Path) -> None:
    """One panel per sweep: time (solid) and cost (dashed, right axis) of the best plan."""
    axes_names = list(next(iter(results.values())))
    fig, axes = plt.subplots(2, (len(axes_names) + 1) // 2, figsize=(14, 7), squeeze=False)
    for ax, axis in zip(axes.flat, axes_names, strict=False):
        twin = ax.twinx()
        for k, (model, sweeps) in enumerate(results.items()):
            rows = [r for r in sweeps[axis] if not r.get("infeasible")]
            xs = list(range(len(rows))) if axis == "memory_grid" else [r["value"] for r in rows]
            c = f"C{k}"
            ax.plot(xs, [r["seconds"] for r in rows], "-o", color=c, label=f"{model} time")
            twin.plot(xs, [r["dollars"] for r in rows], "--s", color=c, label=f"{model} $")
            for x, r in zip(xs, rows, strict=True):
                ax.annotate(f"{r['stages']}x/{r['functions']}f", (x, r["seconds"]), fontsize=6)
        if axis == "memory_grid":
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([r["value"] for r in rows], fontsize=6)
        elif axis in ("bandwidth_MBps", "latency_s"):
            ax.set_xscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("s / iteration")
        twin.set_ylabel("$ / iteration")
        ax.set_title(f"best plan vs {axis}", fontsize=9)
    axes.flat[0].legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[len(axes_names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cpu-scale", type=float, default=1.0,
                        help="base Lambda vCPUs per core of this machine")
    args = parser.parse_args(argv)
    data = run(args.out, args.quick, args.cpu_scale)
    print(f"runtime {data['runtime_seconds']} s")


if __name__ == "__main__":
    main()
