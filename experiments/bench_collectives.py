"""How close does the pipelined scatter-reduce come to the all-reduce bound, and how much faster
is it than LambdaML's sequential scatter-reduce, on Lambda-like links?

Every rank is a thread behind its own ThrottledStore (70 MB/s up, 70 MB/s down, 20 ms per
request) over one shared MemoryStore. For each gradient size W and world size n we time one
all-reduce per algorithm (from a common start to the last rank's return) and report it as a
ratio to the bound 2W/B of a full-duplex all-reduce, next to the closed-form models of the
FuncPipe digest (section 4.3):

    T_lambdaml ~ (n-1)(c/B + lat) + (n-1)(c/B + lat) + (c/B + lat) + (n-1)(c/B + lat),  c = W/n
    T_pipelined ~ 2W/B + a few latencies

Time dilation. On Lambda every function has a core of its own; here n ranks share the
machine's few cores, and from n = 4 on 2 cores their CPU work (codec, sums, Python per request)
queues behind each other's (CPU time about equals wall time at n = 16). So each cell also runs
with time dilated by d = max(1, n / cores), as network emulators do: bandwidth B/d, latency
d x 20 ms and poll sleeps d-fold, times divided by d. The bytes per round trip, which set the
pieces and requests in flight, stay the same, and each emulated function gets one core's worth
of CPU per emulated second. Both the real-time and the dilated figures are reported.

Usage:
    python experiments/bench_collectives.py            # 16/64/256 MB x n = 2, 4, 8, 16
    python experiments/bench_collectives.py --quick    # 4/16 MB x n = 2, 4, 8
    python experiments/bench_collectives.py --dilation 1   # real time only
Writes experiments/results/bench_collectives[_quick].json and .png.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from transports import (
    Backoff,
    MemoryStore,
    StoreStats,
    ThrottledStore,
    allreduce_mean,
    allreduce_requests,
    pipeline_pieces,
)

MB = 1_000_000
RESULTS = Path(__file__).parent / "results"


def run_once(size_bytes: int, world: int, algorithm: str, bw: float, latency: float,
             base: np.ndarray, dilation: float = 1.0, pieces: int | None = None) -> dict:
    """Times one all-reduce of `size_bytes` float32 bytes over `world` throttled threads.

    With `dilation` d the links run at bw/d and latency*d, and the seconds returned are
    emulated ones (wall / d). `pieces`: as `allreduce_mean` (None: its own choice; the JaxPipe
    worker passes 1).
    """
    d = dilation
    bw, latency = bw / d, latency * d
    shared = MemoryStore(poll=Backoff(initial_s=0.005 * d, factor=1.5, max_s=0.05 * d))
    stores = [ThrottledStore(shared.view(), bw, bw, latency) for _ in range(world)]
    vector = base[: size_bytes // 4]
    ends = [0.0] * world
    # Each rank writes into its own buffer, faulted in before the start, as a worker reuses its
    # gradient buffer; the cleanup runs on each rank's own thread, off the return path.
    outs = [np.ones_like(vector) for _ in range(world)]
    sweepers = [cf.ThreadPoolExecutor(1) for _ in range(world)]
    errors: list[BaseException] = []
    start_line = threading.Barrier(world + 1)

    def rank(k: int) -> None:
        start_line.wait()
        try:
            out = allreduce_mean(stores[k], f"bench/{algorithm}/{world}", k, world, vector,
                                 algorithm=algorithm, timeout=600 * d, out=outs[k],
                                 cleanup=sweepers[k], bandwidth_bps=bw, latency_s=latency,
                                 pieces=pieces)
            ends[k] = time.monotonic()
            if not np.allclose(out[:1000], vector[:1000], rtol=1e-6):  # mean of equal vectors
                raise AssertionError(f"rank {k}: wrong result")
        except Exception as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=rank, args=(k,)) for k in range(world)]
    for t in threads:
        t.start()
    start_line.wait()
    t0, cpu0 = time.monotonic(), time.process_time()
    for t in threads:
        t.join()
    for sweeper in sweepers:
        sweeper.shutdown(wait=True)
    swept = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    if errors:
        raise errors[0]
    seconds = (max(ends) - t0) / d
    stats = [s.stats for s in stores]
    total = sum(stats, StoreStats())
    return {"seconds": seconds, "swept_s": swept / d, "cpu_s": cpu,
            "load_avg_1m": os.getloadavg()[0],
            "requests_per_rank": stats[0].by_kind(),
            "misses_per_rank": total.misses / world, "leftover_keys": len(shared.list(""))}


def measure(size_bytes: int, world: int, bw: float, lat: float, base: np.ndarray,
            dilation: float) -> dict:
    """Runs both algorithms on one cell; returns their times, ratios and request counts.

    Cells up to 64 MB take the median of 3 runs (a run lasts a second or so and one slow
    wake-up shows); 256 MB cells run once.
    """
    row: dict = {}
    repeats = 3 if size_bytes <= 64 * MB else 1
    for algorithm in ("pipelined", "lambdaml"):
        runs = sorted((run_once(size_bytes, world, algorithm, bw, lat, base, dilation)
                       for _ in range(repeats)), key=lambda got: got["seconds"])
        got = runs[len(runs) // 2]
        row[f"{algorithm}_runs_s"] = [run["seconds"] for run in runs]
        row[f"{algorithm}_s"] = got["seconds"]
        row[f"{algorithm}_cpu_s"] = got["cpu_s"]
        row[f"{algorithm}_load_avg_1m"] = got["load_avg_1m"]
        row[f"{algorithm}_requests_per_rank"] = got["requests_per_rank"]
        row[f"{algorithm}_formula"] = allreduce_requests(
            world, algorithm, pipeline_pieces(size_bytes // world, bw, lat))
        row[f"{algorithm}_misses_per_rank"] = got["misses_per_rank"]
        row[f"{algorithm}_leftover_keys"] = got["leftover_keys"]
    bound = 2 * size_bytes / bw
    row["pipelined_over_bound"] = row["pipelined_s"] / bound
    row["lambdaml_over_bound"] = row["lambdaml_s"] / bound
    row["speedup"] = row["lambdaml_s"] / row["pipelined_s"]
    return row


def model(size_bytes: int, world: int, bw: float, latency: float) -> dict:
    """The digest's closed forms (section 4.3) for these parameters, in seconds."""
    n, c = world, size_bytes / world
    step = c / bw + latency
    return {"bound_2W_over_B": 2 * size_bytes / bw,
            "lambdaml_model": (3 * n - 2) * step if n > 1 else 0.0,
            "pipelined_model": 2 * size_bytes / bw + 4 * latency if n > 1 else 0.0}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size_mb"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for size in sizes:
        sub = [r for r in rows if r["size_mb"] == size]
        ns = [r["world"] for r in sub]
        axes[0].plot(ns, [r["pipelined_over_bound"] for r in sub], "o-",
                     label=f"pipelined {size} MB")
        axes[0].plot(ns, [r["lambdaml_over_bound"] for r in sub], "x--",
                     label=f"lambdaml {size} MB")
        axes[0].plot(ns, [r["realtime_pipelined_over_bound"] for r in sub], ".:", color="grey",
                     label="pipelined, real time" if size == sizes[0] else None)
        axes[1].plot(ns, [r["speedup"] for r in sub], "o-", label=f"{size} MB")
    axes[0].axhline(1.15, color="grey", lw=0.8, ls=":", label="target 1.15")
    axes[0].set(xlabel="ranks n", ylabel="time / (2W/B)", xscale="log",
                title="time over bound (dilated by n / cores)")
    axes[1].axhline(1.3, color="grey", lw=0.8, ls=":", label="target 1.3")
    axes[1].set(xlabel="ranks n", ylabel="lambdaml / pipelined", xscale="log",
                title="speed-up of pipelined")
    for ax in axes:
        ax.set_xticks(sorted({r["world"] for r in rows}), [str(n) for n in
                                                           sorted({r["world"] for r in rows})])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and worlds")
    parser.add_argument("--sizes-mb", type=int, nargs="+")
    parser.add_argument("--worlds", type=int, nargs="+")
    parser.add_argument("--bandwidth-mbps", type=float, default=70.0, help="MB/s each way")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--dilation", type=float,
                        help="time dilation for every cell (default: max(1, ranks / cores))")
    args = parser.parse_args()
    sizes = args.sizes_mb or ([4, 16] if args.quick else [16, 64, 256])
    worlds = args.worlds or ([2, 4, 8] if args.quick else [2, 4, 8, 16])
    bw, lat = args.bandwidth_mbps * MB, args.latency_ms / 1000
    base = np.random.default_rng(0).standard_normal(max(sizes) * MB // 4).astype(np.float32)

    rows = []
    for size in sizes:
        for world in worlds:
            d = auto_dilation(world) if args.dilation is None else args.dilation
            row = {"size_mb": size, "world": world, "dilation": d,
                   **model(size * MB, world, bw, lat)}
            row.update(measure(size * MB, world, bw, lat, base, d))
            realtime = row if d == 1 else measure(size * MB, world, bw, lat, base, 1.0)
            for key in ("pipelined_s", "lambdaml_s", "pipelined_over_bound", "speedup"):
                row[f"realtime_{key}"] = realtime[key]
            rows.append(row)
            print(f"W={size:4d} MB n={world:2d} d={d:g}  pipelined {row['pipelined_s']:7.3f} s "
                  f"({row['pipelined_over_bound']:.3f}x bound; real time "
                  f"{row['realtime_pipelined_over_bound']:.3f}x)  lambdaml "
                  f"{row['lambdaml_s']:7.3f} s ({row['lambdaml_over_bound']:.3f}x)  speed-up "
                  f"{row['speedup']:.2f}x  cpu {row['pipelined_cpu_s']:.1f}/"
                  f"{row['lambdaml_cpu_s']:.1f} s  load {row['pipelined_load_avg_1m']:.1f}",
                  flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "bench_collectives_quick" if args.quick else "bench_collectives"
    meta = {"bandwidth_bytes_per_s": bw, "latency_s": lat, "python": platform.python_version(),
            "numpy": np.__version__, "machine": platform.machine(), "cpus": _cpus()}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json and .png")


def auto_dilation(world: int) -> float:
    """Time dilation that gives each of `world` ranks one core's worth of CPU: max(1, n / cores)."""
    return max(1.0, world / _cpus())


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
