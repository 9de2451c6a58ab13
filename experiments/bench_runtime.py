"""bench_runtime (issue 5): measured time per iteration of a small ResNet and a small BERT on 4
and 8 local functions at 70 MB/s links, against the closed-form and simulated predictions for
the same plan (target: within 15%), and the runtime's own overhead per micro-batch (target:
under 5 ms). Same machinery as `experiments.fidelity` (profile as a function runs, CPU share
from the plan's compute demand, timeline replay); see `timelines.compare_run` for the definitions.

Usage:
    python -m experiments.bench_runtime            # 2 models x 4 and 8 functions: ~5 min
    python -m experiments.bench_runtime --quick    # 2 models x 4 functions: ~3.5 min
Writes experiments/results/bench_runtime/bench_runtime.json, bench_runtime.png and timelines.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments import fidelity
from experiments import runtime_common as rc

QUICK = [
    {"name": "resnet18-small-4f", "model": "resnet18-small", "batch": 32, "micro_batch": 4,
     "replicas": [1, 1, 1, 1], "iterations": 6},
    {"name": "bert-small-4f", "model": "bert-small", "batch": 32, "micro_batch": 4,
     "replicas": [1, 1, 1, 1], "iterations": 6},
]
FULL = QUICK + [
    {"name": "resnet18-small-8f", "model": "resnet18-small", "batch": 32, "micro_batch": 4,
     "replicas": [2, 2, 2, 2], "iterations": 6},
    {"name": "bert-small-8f", "model": "bert-small", "batch": 32, "micro_batch": 4,
     "replicas": [2, 2, 2, 2], "iterations": 6},
]


def run(quick: bool = False, out: str | Path | None = None, cases: list[dict] | None = None,
        workdir: str | Path | None = None, reuse: bool = False) -> dict[str, Any]:
    out = rc.results_dir("bench_runtime", out)
    own = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="rx_bench_runtime_"))
    began = time.time()
    try:
        rows = fidelity.measure(cases or (QUICK if quick else FULL), out, work, "timeline",
                                reuse)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    data = {"experiment": "bench_runtime", "quick": quick, "machine": rc.machine(),
            "seconds": sum(r["seconds"] for r in rows) if reuse else time.time() - began,
            "targets": {"ratio_within": 0.15, "overhead_per_micro_batch_s": 0.005},
            "rows": rows}
    rc.write_json(out / "bench_runtime.json", data)
    fidelity.plot_ratios(rows, out / "bench_runtime.png", "bench_runtime")
    return data


def main() -> None:
    rc.cli(run, __doc__, "bench_runtime")


if __name__ == "__main__":
    main()
