"""Benchmark: every planner on synthetic ResNet-101 / AmoebaNet-D36 / BERT-Large profiles.

Question: how fast is the MIQP planner, and how much better are its plans than its rivals'
under one cost model? Setup (issue 4): each profile coarsened to 30 groups, AWS Lambda's 8
memory options, replicas {1,2,4,8}, micro-batch {1,2,4,8}, batch 64, at most 32 functions,
objective min cost + 1e-3 $/s * time. Writes experiments/results/bench_planners.json and .png.

  python experiments/bench_planners.py            # full (several minutes on 2 cores)
  python experiments/bench_planners.py --quick    # 8 groups, 2 models, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from planners import METHODS, PlanError, Problem, coarsen, pareto, plan, platforms
from planners.miqp import plan_miqp
from planners.synthetic import SHAPES

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--time-limit", type=float, default=20.0, help="s per MILP")
    parser.add_argument("--frontier-points", type=int, default=4)
    args = parser.parse_args()
    groups, models = (8, ["bert-large", "resnet101"]) if args.quick else (30, list(SHAPES))
    rows, frontiers = [], {}
    for model in models:
        profile = coarsen(SHAPES[model](), groups)
        problem = Problem(profile, platforms.get("aws-lambda"), 64)
        results = {}
        for method in METHODS:
            if method == "exhaustive":
                continue
            opts = {"time_limit": args.time_limit} if method == "miqp" else {}
            t = time.perf_counter()
            try:
                p = plan(problem, method, **opts)
                results[method] = p
                rows.append({"model": model, "method": method, "seconds": p.iteration_seconds,
                             "dollars": p.iteration_dollars, "objective": p.objective_value,
                             "solve_seconds": time.perf_counter() - t, "gap": p.gap,
                             "status": p.status, "stages": len(p.stages),
                             "functions": p.num_functions, "micro_batch": p.micro_batch,
                             "plan": p.to_dict()})
            except PlanError as err:
                rows.append({"model": model, "method": method, "error": str(err)})
            print(model, method, rows[-1].get("objective"), rows[-1].get("solve_seconds"),
                  flush=True)
        # the same MILP solved whole (no bands), as before the band search: for the ratio
        t = time.perf_counter()
        p = plan_miqp(problem, time_limit=args.time_limit, bands=False)
        rows.append({"model": model, "method": "miqp-single", "seconds": p.iteration_seconds,
                     "dollars": p.iteration_dollars, "objective": p.objective_value,
                     "solve_seconds": time.perf_counter() - t, "gap": p.gap, "status": p.status,
                     "stages": len(p.stages), "functions": p.num_functions,
                     "micro_batch": p.micro_batch, "plan": p.to_dict()})
        print(model, "miqp-single", p.objective_value, rows[-1]["solve_seconds"], flush=True)
        best = results["miqp"].objective_value
        for r in rows:
            if r["model"] == model and "objective" in r:
                r["ratio_to_miqp"] = r["objective"] / best
        front = pareto(problem, points=args.frontier_points, time_limit=args.time_limit)
        frontiers[model] = [(p.iteration_seconds, p.iteration_dollars) for p in front]
    miqp_times = [r["solve_seconds"] for r in rows if r["method"] == "miqp"]
    single = [r["solve_seconds"] for r in rows if r["method"] == "miqp-single"]
    summary = {"median_miqp_solve_seconds": statistics.median(miqp_times),
               "median_miqp_single_solve_seconds": statistics.median(single),
               "groups": groups, "time_limit_per_milp": args.time_limit,
               "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_planners.json").write_text(json.dumps(
        {"summary": summary, "rows": rows, "frontiers": frontiers}, indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [m for m in METHODS if m != "exhaustive"] + ["miqp-single"]
    for k, model in enumerate(models):
        ratios = [next((r.get("ratio_to_miqp", float("nan")) for r in rows
                        if r["model"] == model and r["method"] == m), float("nan")) for m in names]
        axes[0].bar([i + 0.25 * k for i in range(len(names))], ratios, 0.25, label=model)
        xs, ys = zip(*frontiers[model], strict=True)
        axes[1].plot(xs, [y * 1000 for y in ys], "o-", label=model)
    axes[0].set_xticks(range(len(names)), names, rotation=30)
    axes[0].set_ylabel("objective / miqp")
    axes[0].axhline(1.0, color="k", lw=0.5)
    axes[0].legend()
    axes[1].set_xlabel("s / iteration")
    axes[1].set_ylabel("m$ / iteration")
    axes[1].set_title("miqp time-cost frontier")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(OUT / "bench_planners.png", dpi=120)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
