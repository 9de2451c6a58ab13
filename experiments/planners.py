"""Planners: every planner on every model, against the MIQP, and the time-cost frontier.

Question: how close do the rival planners (GPipe uniform, torchgpipe balanced, PipeDream DP,
the max-load IP, data parallelism) come to the MIQP's objective, how long does each take, how
often does each find the optimum, and where do their plans sit relative to the MIQP's
time-cost Pareto frontier (``planners.pareto``)?

    python -m experiments.planners [--quick] [--out DIR] [--cpu-scale 1.0]

Full: 4 models x {aws-lambda, alibaba-fc}, batch 64, 16 layer groups, HiGHS limit 4 s per
MILP; frontier with 5 deadlines per model on aws-lambda (about 15 min on 2 shared cores).
Quick: BERT-Large, aws-lambda, 8 groups, 3-point frontier (about 30 s).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from experiments import common
from planners import METHODS, PlanError, pareto

RIVALS = tuple(m for m in METHODS if m != "exhaustive")
FULL = {"models": common.MODELS, "platforms": ("aws-lambda", "alibaba-fc"), "groups": 12,
        "time_limit": 3.0, "points": 4, "exhaustive": False}
QUICK = {"models": ("bert-large",), "platforms": ("aws-lambda",), "groups": 8,
         "time_limit": 2.0, "points": 3, "exhaustive": False}
TOL = 1e-6


def run_setting(model: str, platform: str, cfg: dict[str, Any],
                cpu_scale: float) -> dict[str, Any]:
    """Every planner (and exhaustive search if asked) on one model and platform."""
    problem = common.make_problem(model, platform, 64, cfg["groups"], cpu_scale)
    rows = {}
    methods = RIVALS + (("exhaustive",) if cfg["exhaustive"] else ())
    for method in methods:
        t0 = time.perf_counter()
        try:
            p = common.solve(problem, method, cfg["time_limit"])
        except PlanError as err:  # exhaustive: search space too large
            rows[method] = {"method": method, "error": str(err)[:200]}
            continue
        rows[method] = (common.plan_row(p, problem, sim=False) if p is not None
                        else {"method": method, "infeasible": True})
        rows[method]["wall_seconds"] = round(time.perf_counter() - t0, 3)
    ref = rows["miqp"].get("objective")
    best = min(r["objective"] for r in rows.values() if r.get("objective") is not None)
    for r in rows.values():
        if r.get("objective") is not None and ref:
            r["ratio"] = r["objective"] / ref
            r["optimal"] = r["objective"] <= best * (1 + TOL)
    return {"model": model, "platform": platform, "currency": problem.platform.currency,
            "profile": problem.profile.meta.get("source"), "miqp_status": rows["miqp"]["status"],
            "methods": rows}


def frontier(model: str, cfg: dict[str, Any], cpu_scale: float) -> dict[str, Any]:
    """MIQP Pareto frontier on aws-lambda, batch 64, plus every rival's point."""
    problem = common.make_problem(model, "aws-lambda", 64, cfg["groups"], cpu_scale)
    front, wall = common.timed(pareto, problem, cfg["points"], "miqp",
                               time_limit=cfg["time_limit"])
    points = [(p.iteration_seconds, p.iteration_dollars) for p in front]
    rivals = {}
    for method in RIVALS:
        p = common.solve(problem, method, cfg["time_limit"])
        if p is not None:
            rivals[method] = (p.iteration_seconds, p.iteration_dollars)
    beaten = sorted(m for m, (t, d) in rivals.items() for ft, fd in points
                    if t < ft * (1 - TOL) and d < fd * (1 - TOL))
    return {"model": model, "frontier": points, "rivals": rivals, "seconds": round(wall, 1),
            "statuses": [p.status for p in front], "rivals_dominating_a_frontier_point": beaten}


def summary(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: ratio range and median, solve time median, optimum hits."""
    out = {}
    for method in {m for s in settings for m in s["methods"]}:
        rows = [s["methods"][method] for s in settings if "ratio" in s["methods"][method]]
        ratios = sorted(r["ratio"] for r in rows)
        solve = sorted(r["wall_seconds"] for r in rows)
        out[method] = {"settings": len(rows), "optimum_hits": sum(r["optimal"] for r in rows),
                       "ratio_min": ratios[0] if ratios else None,
                       "ratio_median": ratios[len(ratios) // 2] if ratios else None,
                       "ratio_max": ratios[-1] if ratios else None,
                       "solve_seconds_median": solve[len(solve) // 2] if solve else None}
    return out


def figure(settings: list[dict[str, Any]], fronts: list[dict[str, Any]], path: Path) -> None:
    """Left: objective / MIQP's per setting and method. Right: frontiers with rival points."""
    fig, axes = plt.subplots(1, 1 + len(fronts), figsize=(5 + 4 * len(fronts), 4.2),
                             squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(RIVALS)
    for k, method in enumerate(RIVALS):
        vals = [s["methods"][method].get("ratio", float("nan")) for s in settings]
        ax.bar([i + k * width for i in range(len(settings))], vals, width, label=method)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 for i in range(len(settings))])
    ax.set_xticklabels([f"{s['model']}\n{s['platform'].split('-')[0]}" for s in settings],
                       fontsize=6)
    ax.set_ylabel("objective / MIQP's")
    ax.set_title("planner quality (lower is better)")
    ax.legend(fontsize=6)
    for f, ax in zip(fronts, axes[0][1:], strict=True):
        xs, ys = zip(*f["frontier"], strict=True)
        ax.plot(xs, ys, "k-o", label="MIQP frontier")
        for method, (x, y) in f["rivals"].items():
            ax.plot(x, y, "x" if method != "miqp" else "*", ms=9, label=method)
        ax.set_xlabel("s / iteration")
        ax.set_ylabel("$ / iteration")
        ax.set_title(f"{common.LABELS.get(f['model'], f['model'])}, aws-lambda, B=64", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path | str | None = None, quick: bool = False, cpu_scale: float = 1.0,
        **overrides: Any) -> dict[str, Any]:
    """Run the experiment; writes planners.json and .png into ``out``; returns the data."""
    cfg = dict(QUICK if quick else FULL) | overrides
    path = common.out_dir("planners", out, quick)
    t0 = time.perf_counter()
    settings = [run_setting(m, p, cfg, cpu_scale) for m in cfg["models"] for p in cfg["platforms"]]
    fronts = [frontier(m, cfg, cpu_scale) for m in cfg["models"]] if cfg["points"] else []
    data = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
            | {"quick": quick, "cpu_scale": cpu_scale}, "summary": summary(settings),
            "settings": settings, "frontiers": fronts,
            "runtime_seconds": round(time.perf_counter() - t0, 1)}
    common.save_json(path / "planners.json", data)
    figure(settings, fronts, path / "planners.png")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cpu-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    data = run(args.out, args.quick, args.cpu_scale)
    for method, r in sorted(data["summary"].items()):
        print(method, r)
    print(f"runtime {data['runtime_seconds']} s")


if __name__ == "__main__":
    main()
