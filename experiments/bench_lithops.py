"""bench_lithops (issue 18): what running ranks as Lithops calls costs against local processes.

The same plan (examples/mlp-3-stages.json: 3 stages, the middle one twice, 4 functions) trains
the MLP on `--platform local` and on `--platform lithops` with Lithops' localhost backend (its
calls local processes too, its storage a directory; the job's store a directory), with the
emulated 70 MB/s link. Per platform: wall time of the job, steady seconds per iteration,
cold starts (launch to first micro-batch), the workers' billed seconds against the seconds
Lithops' call statistics give, and whether the parameters agree bitwise.

Usage:
    python -m experiments.bench_lithops           # two jobs per platform, 8 iterations: ~4 min
    python -m experiments.bench_lithops --quick   # one each, 4 iterations: ~2 min
Writes experiments/results/bench_lithops/bench_lithops.json.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import runtime_common as rc
from jaxpipe.runtime import lithops_job
from jaxpipe.runtime.driver import RunConfig
from jaxpipe.runtime.job import Keys
from jaxpipe.runtime.metrics import RankMetrics
from jaxpipe.runtime.train import TrainOptions, open_store, train
from planners import Plan
from transports import codec

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "examples" / "mlp-3-stages.json"


def _options(work: Path, platform: str, iterations: int) -> TrainOptions:
    config = work / "lithops.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
        "localhost": {"worker_processes": 4, "runtime": sys.executable}}))
    return TrainOptions(model="mlp", plan_file=str(PLAN), iterations=iterations,
                        store=str(work / "store"), job_id=f"bench-{platform}",
                        profile_cache=str(work / "profiles"), platform=platform,
                        lithops_config=str(config),
                        run=RunConfig(log_dir=str(work / "logs")))


def _params(store: Any, job: str, iterations: int, stages: int) -> dict[str, np.ndarray]:
    out = {}
    for k in range(stages):
        key = f"jobs/{job}/ckpt/{iterations:08d}/stage{k}/params"
        out.update(codec.decode(store.get(key), key=key))
    return out


def _one(work: Path, platform: str, iterations: int, stages: int, job: str,
         ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    options = dataclasses.replace(_options(work, platform, iterations), job_id=job)
    began = time.time()
    summary = train(options, show_progress=False)
    wall = time.time() - began
    store = open_store(options.store)
    metrics = [RankMetrics.from_dict(json.loads(store.get(k)))
               for k in store.list(Keys(job).all_metrics())]
    row = {"wall_s": wall, "seconds_per_iteration": summary.measured_seconds_per_iteration,
           "cold_start_s_median": statistics.median(summary.cold_start_seconds),
           "worker_billed_s": sum(m.billed_s for m in metrics),
           "run_dollars_per_iteration": summary.measured_run_dollars_per_iteration}
    if platform == "lithops":
        bill = json.loads(store.get(f"jobs/{job}/{lithops_job.BILL_FILE}"))
        row.update(lithops_call_s=bill["seconds"], lithops_dollars=bill["dollars"],
                   calls=len(bill["calls"]))
    return row, _params(store, job, iterations, stages)


def run(quick: bool = False, out: str | Path | None = None) -> dict[str, Any]:
    """Alternates the platforms (lithops, local, lithops, local; quick: one of each after an
    unmeasured warm-up job that fills the profile cache and the OS's file cache)."""
    folder = rc.results_dir("bench_lithops", out)
    iterations = 4 if quick else 8
    stages = len(Plan.from_dict(json.loads(PLAN.read_text())).stages)
    order = ["lithops", "local"] * (1 if quick else 2)
    rows: dict[str, list[dict[str, Any]]] = {"local": [], "lithops": []}
    params = {}
    with tempfile.TemporaryDirectory(prefix="bench-lithops-") as tmp:
        work = Path(tmp)
        _one(work, "local", 1, stages, "warm-up")
        for i, platform in enumerate(order):
            row, params[platform] = _one(work, platform, iterations, stages, f"{platform}-{i}")
            rows[platform].append(row)
    equal = all(np.array_equal(params["local"][k], params["lithops"][k]) for k in params["local"])

    def median(platform: str, name: str) -> float:
        return float(statistics.median(r[name] or 0.0 for r in rows[platform]))

    result = {"machine": rc.machine(), "plan": str(PLAN.relative_to(REPO)),
              "iterations": iterations, "runs": rows, "bitwise_equal": equal,
              "lithops_over_local": {
                  name: median("lithops", name) / median("local", name)
                  for name in ("wall_s", "seconds_per_iteration", "cold_start_s_median")},
              "lithops_call_s_over_worker_billed_s": median("lithops", "lithops_call_s")
              / median("lithops", "worker_billed_s")}
    rc.write_json(folder / "bench_lithops.json", result)
    return result


if __name__ == "__main__":
    rc.cli(run, __doc__ or "", "bench_lithops")
