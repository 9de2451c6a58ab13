"""scatter_reduce: pipelined vs LambdaML scatter-reduce on emulated 70 MB/s links, measured and
predicted by the planners' cost model, against world size and gradient size, with the request
counts and their dollar cost.

The measurement is `experiments.bench_collectives.run_once` (every rank a thread behind its own
`ThrottledStore`, 70 MB/s each way and 20 ms per request, over one shared `MemoryStore`; one
all-reduce from a common start to the last rank's return), with time dilated by
max(1, n / cores) so that each emulated function has a core's worth of CPU (bench_collectives
explains why). "pipelined" runs one piece per chunk, as the JaxPipe worker does
(`runtime.rank`); "pipelined_pieces" (time only) lets the transport cut chunks into pieces
(`transports.pipeline_pieces`). Predictions: the pipelined algorithm
by `planners.cost.sync_seconds` (the term the planners use for a replicated stage), LambdaML's
sequential scatter-reduce by the digest's (3n-2)(W/(nB) + lat) (bench_collectives.model).
Request counts are read from every run's `StoreStats` and checked against
`transports.allreduce_requests`; the cost model's own request count for a replicated stage
(`cost.StageModel.terms`: n^2 + n - 1 PUTs, 2n(n-1) GETs) is reported next to them. Dollars at
aws-lambda prices: the requests, plus n functions of 2048 MB for the measured seconds.

Usage:
    python -m experiments.scatter_reduce           # 4/16/64 MB x n = 2, 4, 8, 16, 3 repeats: ~7 min
    python -m experiments.scatter_reduce --quick   # 1/4 MB x n = 2, 4, 8: ~15 s
Writes experiments/results/scatter_reduce/scatter_reduce.{json,png}.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import runtime_common as rc
from experiments.bench_collectives import MB, auto_dilation, run_once
from experiments.bench_collectives import model as digest_model
from planners import cost, platforms
from transports import allreduce_requests, pipeline_pieces

MEMORY_MB = 2048
WORKER_PIECES = 1  # what the JaxPipe worker passes (runtime.rank._sync)


def predict(size_bytes: int, world: int, bw: float, lat: float) -> dict[str, float]:
    return {"pipelined": cost.sync_seconds(size_bytes, world, bw, bw, lat),
            "lambdaml": digest_model(size_bytes, world, bw, lat)["lambdaml_model"],
            "bound_2W_over_B": 2 * size_bytes / bw}


def dollars(requests: dict[str, int], world: int, seconds: float, plat: Any) -> dict[str, float]:
    """Dollars of one all-reduce: requests of all ranks plus n functions' GB-s."""
    puts = (requests["PUT"] + requests["LIST"]) * world
    gets = (requests["GET"] + requests.get("misses", 0)) * world
    request = plat.request_dollars(puts, gets)
    compute = plat.compute_dollars(world * MEMORY_MB / 1024, seconds)
    return {"request_dollars": request, "compute_dollars": compute, "dollars": request + compute}


def run(quick: bool = False, out: str | Path | None = None, sizes_mb: list[float] | None = None,
        worlds: list[int] | None = None, repeats: int | None = None) -> dict[str, Any]:
    out = rc.results_dir("scatter_reduce", out)
    plat = platforms.get("aws-lambda")
    bw, lat = 70 * MB, 0.02
    sizes_mb = sizes_mb or ([1, 4] if quick else [4, 16, 64])
    worlds = worlds or ([2, 4, 8] if quick else [2, 4, 8, 16])
    repeats = repeats or (1 if quick else 3)
    base = np.random.default_rng(0).standard_normal(int(max(sizes_mb) * MB) // 4).astype(
        np.float32)
    began = time.time()
    rows = []
    for size in sizes_mb:
        W = int(size * MB)
        for n in worlds:
            pred = predict(W, n, bw, lat)
            row: dict[str, Any] = {"size_mb": size, "world": n, "dilation": auto_dilation(n), **{
                f"{k}_predicted_s": v for k, v in pred.items()}}
            model_terms = cost_model_requests(n)
            row["cost_model_requests_all_ranks"] = model_terms
            auto = [run_once(W, n, "pipelined", bw, lat, base, auto_dilation(n))
                    for _ in range(repeats)]
            row["pipelined_pieces"] = {
                "pieces": pipeline_pieces(W // n, bw, lat),
                "seconds": float(np.median([g["seconds"] for g in auto])),
                "predicted_s": pred["pipelined"]}
            for algorithm in ("pipelined", "lambdaml"):
                got = [run_once(W, n, algorithm, bw, lat, base, auto_dilation(n),
                                pieces=WORKER_PIECES)
                       for _ in range(repeats)]
                seconds = float(np.median([g["seconds"] for g in got]))
                req = got[0]["requests_per_rank"]
                formula = allreduce_requests(n, algorithm, WORKER_PIECES)
                misses = float(np.mean([g["misses_per_rank"] for g in got]))
                row[algorithm] = {
                    "seconds": seconds, "all_seconds": [g["seconds"] for g in got],
                    "predicted_s": pred[algorithm],
                    "measured_over_predicted": seconds / pred[algorithm],
                    "requests_per_rank": req, "formula_per_rank": formula,
                    "misses_per_rank": misses,
                    "requests_match_formula": all(req[k] == formula[k]
                                                  for k in ("PUT", "GET", "HEAD", "LIST"))
                    and formula["DELETE"] <= req["DELETE"]
                    <= formula["DELETE"] + formula["CLEANUP_DELETE"],
                    "leftover_keys": got[0]["leftover_keys"],
                    "load_avg_1m": got[-1]["load_avg_1m"],
                    **dollars({**req, "misses": misses}, n, seconds, plat),
                }
            row["speedup"] = row["lambdaml"]["seconds"] / row["pipelined"]["seconds"]
            row["predicted_speedup"] = pred["lambdaml"] / pred["pipelined"]
            rows.append(row)
            p, q = row["pipelined"], row["lambdaml"]
            print(f"W={size:5.1f} MB n={n:2d}  pipelined {p['seconds']:.3f} s (model "
                  f"{p['predicted_s']:.3f}, x{p['measured_over_predicted']:.2f}; with "
                  f"{row['pipelined_pieces']['pieces']} pieces "
                  f"{row['pipelined_pieces']['seconds']:.3f})  "
                  f"lambdaml {q['seconds']:.3f} s (model "
                  f"{q['predicted_s']:.3f})  speed-up {row['speedup']:.2f} (model "
                  f"{row['predicted_speedup']:.2f})  ${p['dollars']:.2e} / ${q['dollars']:.2e}",
                  flush=True)
    data = {"experiment": "scatter_reduce", "quick": quick, "machine": rc.machine(),
            "seconds": time.time() - began, "bandwidth_bytes_per_s": bw, "latency_s": lat,
            "memory_mb": MEMORY_MB, "prices": {"put": plat.price_put, "get": plat.price_get,
                                               "gb_second": plat.price_gb_second},
            "repeats": repeats, "rows": rows}
    rc.write_json(out / "scatter_reduce.json", data)
    plot(rows, out / "scatter_reduce.png")
    return data


def cost_model_requests(world: int) -> dict[str, int]:
    """PUTs and GETs the cost model charges for one replicated stage's sync (all replicas)."""
    if world <= 1:
        return {"PUT": 0, "GET": 0}
    return {"PUT": world * world + world - 1, "GET": 2 * world * (world - 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size_mb"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, size in enumerate(sizes):
        sub = [r for r in rows if r["size_mb"] == size]
        ns = [r["world"] for r in sub]
        c = f"C{i}"
        axes[0].plot(ns, [r["pipelined"]["seconds"] for r in sub], "o-", color=c,
                     label=f"pipelined {size:g} MB")
        axes[0].plot(ns, [r["pipelined"]["predicted_s"] for r in sub], ":", color=c)
        axes[0].plot(ns, [r["lambdaml"]["seconds"] for r in sub], "x--", color=c,
                     label=f"lambdaml {size:g} MB")
        axes[0].plot(ns, [r["lambdaml"]["predicted_s"] for r in sub], "-.", color=c, lw=0.7)
        axes[1].plot(ns, [r["speedup"] for r in sub], "o-", color=c, label=f"{size:g} MB measured")
        axes[1].plot(ns, [r["predicted_speedup"] for r in sub], ":", color=c, label="model")
        axes[2].plot(ns, [r["pipelined"]["dollars"] * 1e6 for r in sub], "o-", color=c,
                     label=f"pipelined {size:g} MB")
        axes[2].plot(ns, [r["lambdaml"]["dollars"] * 1e6 for r in sub], "x--", color=c,
                     label=f"lambdaml {size:g} MB")
    axes[0].set(xlabel="world size n", ylabel="seconds (dotted: model)", yscale="log",
                title="one all-reduce")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set(xlabel="world size n", ylabel="lambdaml / pipelined", title="speed-up")
    axes[2].set(xlabel="world size n", ylabel="micro-dollars per all-reduce", yscale="log",
                title="requests + GB-s (aws-lambda, 2048 MB)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    rc.cli(run, __doc__, "scatter_reduce")


if __name__ == "__main__":
    main()
