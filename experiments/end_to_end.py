"""End to end: the MIQP plan against serverless baselines, per model, batch and platform.

Question: how much faster and cheaper per iteration is FuncPipe's co-optimised plan than
LambdaML-style data parallelism, a hybrid parameter server, GPipe-style uniform partitions on the
largest memory and the max-load IP, under one cost model, and does the simulator agree?

    python -m experiments.end_to_end [--quick] [--out DIR] [--cpu-scale 1.0]

Full: 4 models x batch {64, 128, 256} x {aws-lambda, alibaba-fc}, 20 layer groups, HiGHS limit
6 s per MILP (about 25 min on 2 shared cores). Quick: BERT-Large and ResNet-101, batch 64,
both platforms, 10 groups, 2 s (about 1 min).

The MIQP searches both schedules (``Problem(schedule="any")``: FuncPipe's order and 1F1B), so
every single-stage baseline below but the parameter server is a point of its search space.

LambdaML-style data parallelism, two ways: ``data-parallel`` is planners' method (whole model on
the largest memory, best d and b, FuncPipe's pipelined scatter-reduce; its memory model keeps
all n = B/(b d) micro-batches' activations, as a FuncPipe stage does, so big models must
recompute); ``dp-accumulate`` is the same with gradient accumulation, planners' method under
the 1F1B schedule, one micro-batch's activations in memory, as a LambdaML worker runs.

Hybrid parameter server (modelled here; planners has no such method): d workers each hold the whole
model on the largest memory, accumulating as dp-accumulate, and compute B/d samples in
micro-batches of b; then every worker PUTs its gradient (W/up + lat), ONE aggregator function GETs
all d gradients through its single link (d W/down + lat), sums and updates (update_seconds_per_byte
x W at its CPU share), PUTs the new weights (W/up + lat) and every worker GETs them (W/down + lat).
The aggregator is the smallest memory option holding weights, gradient sum and optimizer slots, and
is billed for the whole iteration (it is a long-running server function, as the reference code's 8
GB "Hybrid" function). Requests: d+1 PUTs, 2d GETs per iteration for the exchange, the data GETs as
data-parallel. (d, b) are chosen for the same objective.
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
from planners import Objective, Plan, Problem, StagePlan, cost

METHODS = ("miqp", "data-parallel", "dp-accumulate", "hybrid-ps", "gpipe-largest", "maxload")
# the paper's "serverless training frameworks"
BASELINES = ("data-parallel", "dp-accumulate", "hybrid-ps")
FULL = {"models": common.MODELS, "batches": (64, 128, 256),
        "platforms": ("aws-lambda", "alibaba-fc"), "groups": 12, "time_limit": 3.0,
        "matched_batches": (64,)}
QUICK = {"models": ("bert-large", "resnet101"), "batches": (64,),
         "platforms": ("aws-lambda", "alibaba-fc"), "groups": 8, "time_limit": 1.5,
         "matched_batches": ()}


def dp_accumulate(problem: Problem) -> Plan | None:
    """LambdaML-style data parallelism that accumulates gradients one micro-batch at a time:
    planners' ``data-parallel`` under the 1F1B schedule, whose one stage alternates forward and
    backward and so holds one micro-batch's activations (``StageModel.terms(..., in_flight=1)``)
    instead of the n a FuncPipe-scheduled stage keeps; times, sync and prices are the same cost
    model's, and the simulator replays the same schedule."""
    found = common.solve(dataclasses.replace(problem, schedule="1f1b"), "data-parallel")
    return None if found is None else dataclasses.replace(found, method="dp-accumulate")


def hybrid_ps(problem: Problem) -> dict[str, Any] | None:
    """Best (d, b) hybrid parameter-server configuration (see the module docstring)."""
    plat, L = problem.platform, problem.profile.num_layers
    m, lat = plat.max_memory_mb, plat.request_latency_s
    up, down = plat.uplink_bytes_per_s, plat.downlink_bytes_per_s
    W = problem.profile.param_bytes
    agg_need = W * (3 + problem.optimizer_slots) / cost.MIB + plat.runtime_base_mb \
        + plat.safety_margin_mb
    agg_mem = next((x for x in plat.memory_options_mb if x >= agg_need), None)
    if agg_mem is None:
        return None
    update = problem.profile.reference_cpus / plat.cpus(agg_mem) * W \
        * problem.update_seconds_per_byte
    best = None
    for b in problem.valid_micro_batches:
        model = cost.StageModel(problem, b)
        for d in problem.replicas_for(b):
            if d + 1 > problem.max_functions:
                continue
            fit = model.fit(0, L - 1, m, d, in_flight=1)  # workers accumulate, as dp-accumulate
            if fit is None:
                continue
            t = fit[1]
            compute = t.fill_fwd + t.fill_bwd + (t.per_replica - 1) * (t.period_fwd + t.period_bwd)
            exchange = (W / up + lat) + (d * W / down + lat) + update + (W / up + lat) \
                + (W / down + lat)
            seconds = compute + exchange
            sync_puts = d * d + (d - 1) if d > 1 else 0
            puts, gets = t.puts - sync_puts + d + 1, t.gets - 2 * d * (d - 1) + 2 * d
            dollars = (plat.compute_dollars((d * m + agg_mem) / 1024, seconds)
                       + plat.handover_invocation_dollars(d + 1, seconds)
                       + plat.request_dollars(puts, gets))
            value = problem.objective.value(seconds, dollars)
            if best is None or value < best["objective"]:
                best = {"method": "hybrid-ps", "seconds": seconds, "dollars": dollars,
                        "objective": value, "micro_batch": b, "functions": d + 1, "stages": 1,
                        "replicas": [d], "memory_mb": [m], "aggregator_mb": agg_mem,
                        "modes": [fit[0]], "compute_seconds": compute,
                        "exchange_seconds": exchange, "mode": fit[0]}
    if best is None:
        return None
    # simulator: the worker phase of the same (d, b) as a one-stage plan, replayed, minus its
    # (zero or scatter-reduce) tail, plus the closed-form exchange above
    d, b = best["replicas"][0], best["micro_batch"]
    p = cost.score(Plan((StagePlan(0, L - 1, m, d, best["mode"]),), b, problem.global_batch),
                   problem)
    br = cost.breakdown(p, problem)
    sim_compute = common.simulated(p, problem)[0] - br.sync_update_seconds
    best["sim_seconds"] = sim_compute + best["exchange_seconds"]
    best["sim_dollars"] = best["dollars"] * best["sim_seconds"] / best["seconds"]
    return best


def matched(problem: Problem, base: dict[str, Any], time_limit: float) -> dict[str, Any]:
    """The MIQP at a baseline's cost (min time s.t. $ <= its $) and at its time (min $ s.t.
    time <= its time): speedup at equal cost, saving at equal time (None: no such plan)."""
    out: dict[str, Any] = {}
    for key, obj in (("speedup_at_equal_cost", Objective.min_time(base["dollars"])),
                     ("saving_at_equal_time", Objective.min_cost(base["seconds"]))):
        p = common.solve(dataclasses.replace(problem, objective=obj), "miqp", time_limit)
        if p is None:
            out[key] = None
            continue
        out[key] = (base["seconds"] / p.iteration_seconds if key.startswith("speedup")
                    else 1 - p.iteration_dollars / base["dollars"])
        out[key.replace("speedup", "plan").replace("saving", "plan")] = {
            "seconds": p.iteration_seconds, "dollars": p.iteration_dollars,
            "status": p.status, "stages": len(p.stages), "functions": p.num_functions,
            "schedule": p.schedule}
    return out


def run_setting(model: str, platform: str, batch: int, groups: int, time_limit: float,
                cpu_scale: float, match: bool = False) -> dict[str, Any]:
    """Every method on one (model, platform, batch)."""
    problem = common.make_problem(model, platform, batch, groups, cpu_scale)
    searched = dataclasses.replace(problem, schedule="any")  # the MIQP chooses the schedule
    rows: dict[str, Any] = {}
    for method in METHODS:
        t0 = time.perf_counter()
        if method == "hybrid-ps":
            row = hybrid_ps(problem)
        else:
            p = (common.gpipe_largest(problem) if method == "gpipe-largest"
                 else dp_accumulate(problem) if method == "dp-accumulate"
                 else common.solve(searched if method == "miqp" else problem, method,
                                   time_limit))
            row = None if p is None else common.plan_row(p, problem) | {"schedule": p.schedule}
        rows[method] = row or {"method": method, "infeasible": True}
        rows[method]["wall_seconds"] = round(time.perf_counter() - t0, 2)
    for method in BASELINES if match else ():
        if not rows[method].get("infeasible"):
            rows[method]["matched"] = matched(searched, rows[method], time_limit)
    return {"model": model, "platform": platform, "batch": batch,
            "currency": problem.platform.currency,
            "profile": problem.profile.meta.get("source"), "methods": rows}


def ratios(setting: dict[str, Any], key: str = "") -> dict[str, dict[str, float]]:
    """Speedup (baseline time / MIQP time) and cost saving (1 - MIQP $ / baseline $) per rival;
    ``key`` '' for the closed form, 'sim_' for the simulator."""
    mine = setting["methods"]["miqp"]
    out = {}
    for method, row in setting["methods"].items():
        if method == "miqp" or row.get("infeasible") or mine.get("infeasible"):
            continue
        out[method] = {"speedup": row[f"{key}seconds"] / mine[f"{key}seconds"],
                       "cost_saving": 1 - mine[f"{key}dollars"] / row[f"{key}dollars"]}
    return out


def headline(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Ranges of speedup and cost saving over all settings, per rival and for the baselines."""
    table: dict[str, Any] = {}
    for key, label in (("", "model"), ("sim_", "simulator")):
        per: dict[str, dict[str, list[float]]] = {}
        for s in settings:
            for method, r in ratios(s, key).items():
                per.setdefault(method, {"speedup": [], "cost_saving": []})
                for k in r:
                    per[method][k].append(r[k])
        base = {k: [v for m in BASELINES for v in per.get(m, {}).get(k, [])]
                for k in ("speedup", "cost_saving")}
        per["serverless baselines"] = base
        if not key:
            for m in BASELINES:
                for k in ("speedup_at_equal_cost", "saving_at_equal_time"):
                    per.setdefault(m, {})[k] = [
                        s["methods"][m]["matched"][k] for s in settings
                        if s["methods"][m].get("matched", {}).get(k) is not None]
        table[label] = {m: {k: [min(v), max(v)] if v else None for k, v in r.items()}
                        for m, r in per.items()}
    return table


def figure(settings: list[dict[str, Any]], path: Path) -> None:
    """Time and cost per iteration, normalised to the MIQP plan, batch 64, per platform."""
    plats = sorted({s["platform"] for s in settings})
    fig, axes = plt.subplots(2, len(plats), figsize=(6 * len(plats), 6.5), squeeze=False)
    for c, plat in enumerate(plats):
        rows = [s for s in settings if s["platform"] == plat and s["batch"] == min(
            x["batch"] for x in settings)]
        for r, (key, name) in enumerate((("seconds", "time"), ("dollars", "cost"))):
            ax = axes[r][c]
            width = 0.8 / len(METHODS)
            for k, method in enumerate(METHODS):
                vals = []
                for s in rows:
                    row, mine = s["methods"][method], s["methods"]["miqp"]
                    ok = not row.get("infeasible") and not mine.get("infeasible")
                    vals.append(row[key] / mine[key] if ok else math.nan)
                ax.bar([i + k * width for i in range(len(rows))], vals, width, label=method)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))])
            ax.set_xticklabels([common.LABELS.get(s["model"], s["model"]) for s in rows],
                               fontsize=7)
            ax.set_ylabel(f"{name} / MIQP's (cost model)")
            ax.set_title(f"{plat}, batch {rows[0]['batch'] if rows else ''}: {name}")
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path | str | None = None, quick: bool = False, cpu_scale: float = 1.0,
        **overrides: Any) -> dict[str, Any]:
    """Run the experiment; writes end_to_end.json and .png into ``out``; returns the data."""
    cfg = dict(QUICK if quick else FULL) | overrides
    path = common.out_dir("end_to_end", out, quick)
    t0 = time.perf_counter()
    settings = []
    for model in cfg["models"]:
        for platform in cfg["platforms"]:
            for batch in cfg["batches"]:
                s = run_setting(model, platform, batch, cfg["groups"], cfg["time_limit"],
                                cpu_scale, batch in cfg["matched_batches"])
                settings.append(s)
                print(model, platform, batch, {m: (round(r.get("seconds", math.nan), 2),
                                                   r.get("dollars"))
                                               for m, r in s["methods"].items()}, flush=True)
    data = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
            | {"quick": quick, "cpu_scale": cpu_scale}, "paper": common.PAPER,
            "headline": headline(settings), "settings": settings,
            "runtime_seconds": round(time.perf_counter() - t0, 1)}
    for s in settings:
        s["ratios"] = ratios(s)
    common.save_json(path / "end_to_end.json", data)
    figure(settings, path / "end_to_end.png")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cpu-scale", type=float, default=1.0,
                        help="Lambda vCPUs per core of this machine (default 1.0)")
    args = parser.parse_args(argv)
    data = run(args.out, args.quick, args.cpu_scale)
    for src, table in data["headline"].items():
        for method, r in table.items():
            print(src, method, r)
    print(f"runtime {data['runtime_seconds']} s")


if __name__ == "__main__":
    main()
