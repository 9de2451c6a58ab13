"""receive_buffers: how much memory a rank's received micro-batches hold, and whether bounding
them costs time.

A two-stage MLP with wide boundaries (hidden 8192 then 64: 32 KB per sample crosses the cut)
trains on the local platform (every rank a process behind its own 70 MB/s, 20 ms link) with
many micro-batches (batch 1024, micro-batch 32: M = 32, 1 MB per boundary message), once under
each schedule (`funcpipe`, `1f1b`). Reported per rank: its peak RSS (`RankMetrics.peak_rss_mb`,
the process's ru_maxrss) and the job's measured seconds per iteration. Run it before and after
a runtime change and compare (`--label` names the run in the JSON).

Usage:
    python -m experiments.receive_buffers [--label after]   # ~1-2 min
Writes experiments/results/receive_buffers/<label>.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments import runtime_common as rc

HIDDEN = (8192, 64, 64)
BATCH, MICRO_BATCH, ITERATIONS = 1024, 32, 5


def run_schedule(workdir: Path, schedule: str) -> dict[str, Any]:
    """One job of the wide MLP under `schedule`; its ranks' peak RSS and its time per
    iteration."""
    from jaxpipe.runtime.driver import RunConfig
    from jaxpipe.runtime.job import Keys
    from jaxpipe.runtime.metrics import RankMetrics
    from jaxpipe.runtime.train import TrainOptions, open_store, train
    from planners import Plan, StagePlan

    plan = Plan(stages=(StagePlan(0, 0, 2048), StagePlan(1, 3, 2048)),
                micro_batch=MICRO_BATCH, global_batch=BATCH, schedule=schedule)
    job = f"rb-{schedule}"
    options = TrainOptions(
        model="mlp", model_overrides={"hidden": HIDDEN}, plan=plan, batch=BATCH,
        iterations=ITERATIONS, optimizer="momentum", learning_rate=0.01,
        store=str(workdir / "store"), job_id=job, checkpoint_every=1000,
        profile_cache=str(workdir / "profiles"), wait_timeout_s=180,
        run=RunConfig(log_dir=str(workdir / "logs")))
    began = time.time()
    summary = train(options, show_progress=False)
    store = open_store(str(workdir / "store"))
    metrics = [RankMetrics.from_dict(json.loads(store.get(k)))
               for k in store.list(Keys(job).all_metrics())]
    metrics.sort(key=lambda m: m.rank)
    return {"schedule": schedule, "micro_batches": plan.num_micro_batches,
            "boundary_mb_per_message": MICRO_BATCH * HIDDEN[0] * 4 / 2**20,
            "seconds_per_iteration": summary.measured_seconds_per_iteration,
            "peak_rss_mb": {m.rank: m.peak_rss_mb for m in metrics},
            "wall_s": time.time() - began}


def run(label: str, out: str | None = None) -> dict[str, Any]:
    folder = rc.results_dir("receive_buffers", out)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_schedule(Path(tmp), s) for s in ("funcpipe", "1f1b")]
    data = {"experiment": "receive_buffers", "label": label, "machine": rc.machine(),
            "rows": rows}
    rc.write_json(folder / f"{label}.json", data)
    for r in rows:
        print(f"{label} {r['schedule']:8s} M={r['micro_batches']} "
              f"{r['seconds_per_iteration']:.3f} s/iter  peak RSS MB "
              + " ".join(f"rank{k} {v:.0f}" for k, v in r["peak_rss_mb"].items()), flush=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--out")
    args = parser.parse_args()
    run(args.label, args.out)


if __name__ == "__main__":
    main()
