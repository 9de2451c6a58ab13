"""Benchmark: every planner on synthetic ResNet-101 / AmoebaNet-D36 / BERT-Large profiles, and
how the MIQP's solve time scales with the number of layer groups, for every objective.

Questions: how fast is the MIQP planner, and how much better are its plans than its rivals'
under one cost model? Setup: AWS Lambda's 8 memory options, replicas {1,2,4,8}, micro-batch
{1,2,4,8}, batch 64, at most 32 functions.

1. Rivals (issue 4): each profile coarsened to 30 groups, objective min cost + 1e-3 $/s * time;
   every method, the single MILP (``bands=False``) and the miqp time-cost frontier.
2. Scaling (issue 16): ResNet-101 and AmoebaNet-D36 at 30 and 60 groups, five objectives
   (weighted 1e-3, min cost, min time, min time under 1.25x the weighted plan's cost, min cost
   under 0.8x its time), ``--repeats`` solves each: median wall and CPU seconds, status, gap.
   ``--before REV`` also times the planners of git revision REV (exported to a temporary
   folder, run in a subprocess) on the weighted objective in the same run, for before/after.

Writes experiments/results/bench_planners.json and .png (``--quick``: bench_planners_quick.*,
8 and 12 groups, 2 models, so a quick run never overwrites the full results).

  python -m experiments.bench_planners --before a159620   # full (about 10 min on 2 cores)
  python -m experiments.bench_planners --quick             # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from planners import METHODS, Objective, PlanError, Problem, coarsen, pareto, plan, platforms
from planners.miqp import plan_miqp
from planners.synthetic import SHAPES

OUT = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SCALING_MODELS = ("resnet101", "amoebanet-d36")
OBJECTIVES = ("weighted", "min-cost", "min-time", "budget", "deadline")

# One timed miqp solve, run in a subprocess on the planners of another revision (argv: groups,
# model, time limit); prints wall, CPU, status, gap and objective as JSON.
_TIMED = """
import json, sys, time
from planners import Problem, coarsen, platforms, plan
from planners.synthetic import SHAPES
groups, model, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
prob = Problem(coarsen(SHAPES[model](), groups), platforms.get("aws-lambda"), 64)
wall, cpu = time.perf_counter(), time.process_time()
p = plan(prob, "miqp", time_limit=limit)
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "status": p.status, "gap": p.gap, "objective": p.objective_value}))
"""


def objective_for(name: str, weighted: tuple[float, float]) -> Objective:
    """The scaling section's objective ``name``; budget and deadline from the (seconds,
    dollars) of the weighted plan."""
    seconds, dollars = weighted
    return {"weighted": Objective.weighted(1e-3), "min-cost": Objective.weighted(0.0),
            "min-time": Objective.min_time(), "budget": Objective.min_time(1.25 * dollars),
            "deadline": Objective.min_cost(0.8 * seconds)}[name]


def timed_miqp(problem: Problem, time_limit: float) -> dict[str, object]:
    """One miqp solve: wall and CPU seconds, status, gap, objective, s/iter, $/iter."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        p = plan(problem, "miqp", time_limit=time_limit)
    except PlanError as err:  # an infeasible limit or an expired time limit, timed too
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                "status": type(err).__name__, "gap": None, "objective": None}
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "status": p.status, "gap": p.gap, "objective": p.objective_value,
            "seconds": p.iteration_seconds, "dollars": p.iteration_dollars,
            "stats": p.meta["milps"][-1]}


def scaling(groups_list: tuple[int, ...], repeats: int, time_limit: float,
            before: str | None, schedule: str = "funcpipe") -> list[dict[str, object]]:
    """Section 2: median solve times per (model, groups, objective) under ``schedule``
    (``Problem.schedule``), and the revision ``before`` on the weighted objective."""
    rows: list[dict[str, object]] = []
    old = _export(before) if before else None
    for model in SCALING_MODELS:
        for groups in groups_list:
            base = Problem(coarsen(SHAPES[model](), groups), platforms.get("aws-lambda"), 64,
                           schedule=schedule)
            ref = plan(base, "miqp", time_limit=time_limit)
            assert ref.iteration_seconds is not None and ref.iteration_dollars is not None
            for name in OBJECTIVES:
                prob = dataclasses.replace(base, objective=objective_for(
                    name, (ref.iteration_seconds, ref.iteration_dollars)))
                runs = [timed_miqp(prob, time_limit) for _ in range(repeats)]
                rows.append(_summary(model, groups, name, "after", runs))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}),
                      flush=True)
            if old is not None:
                runs = [_timed_subprocess(old, groups, model, time_limit)]
                rows.append(_summary(model, groups, "weighted", f"before ({before})", runs))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}),
                      flush=True)
    return rows


def _summary(model: str, groups: int, objective: str, code: str,
             runs: list[dict[str, object]]) -> dict[str, object]:
    walls = [float(str(r["wall"])) for r in runs]
    cpus = [float(str(r["cpu"])) for r in runs]
    return {"model": model, "groups": groups, "objective": objective, "code": code,
            "median_wall_seconds": statistics.median(walls),
            "median_cpu_seconds": statistics.median(cpus), "repeats": len(runs),
            "statuses": sorted({str(r["status"]) for r in runs}),
            "max_gap": max(float(str(r["gap"] or 0.0)) for r in runs),
            "objective_value": runs[0]["objective"], "load_average": os.getloadavg(),
            "runs": runs}


def _export(rev: str) -> Path:
    """``planners/`` at git revision ``rev``, unpacked into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="bench_planners_"))
    archive = subprocess.run(["git", "archive", rev, "planners"], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def _timed_subprocess(folder: Path, groups: int, model: str,
                      time_limit: float) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _TIMED, str(groups), model, str(time_limit)],
                         cwd=folder, env=os.environ | {"PYTHONPATH": str(folder)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--time-limit", type=float, default=20.0, help="s per MILP")
    parser.add_argument("--frontier-points", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="solves per scaling cell")
    parser.add_argument("--before", default=None, help="git revision to time as 'before'")
    parser.add_argument("--schedule", default="funcpipe", choices=("funcpipe", "1f1b", "any"),
                        help="Problem.schedule of the scaling section")
    args = parser.parse_args()
    groups, models = (8, ["bert-large", "resnet101"]) if args.quick else (30, list(SHAPES))
    load_start = os.getloadavg()
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
    load_rivals = os.getloadavg()
    scale = scaling((8, 12) if args.quick else (30, 60), args.repeats, args.time_limit,
                    args.before, args.schedule)
    summary = {"median_miqp_solve_seconds": statistics.median(miqp_times),
               "median_miqp_single_solve_seconds": statistics.median(single),
               "groups": groups, "time_limit_per_milp": args.time_limit, "schedule": args.schedule,
               "load_average_start": load_start, "load_average_after_rivals": load_rivals,
               "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    stem = "bench_planners_quick" if args.quick else "bench_planners"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(
        {"summary": summary, "rows": rows, "frontiers": frontiers, "scaling": scale},
        indent=1))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
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
    for model in SCALING_MODELS:
        for name in OBJECTIVES:
            cells = [r for r in scale if r["model"] == model and r["objective"] == name
                     and r["code"] == "after"]
            axes[2].plot([r["groups"] for r in cells], [r["median_wall_seconds"] for r in cells],
                         "o-", label=f"{model} {name}")
        old = [r for r in scale if r["model"] == model and r["code"] != "after"]
        if old:
            axes[2].plot([r["groups"] for r in old], [r["median_wall_seconds"] for r in old],
                         "kx--", label=f"{model} before")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("layer groups")
    axes[2].set_ylabel("miqp solve, s (median wall)")
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(OUT / f"{stem}.png", dpi=120)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
