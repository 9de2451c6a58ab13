"""fidelity: does the cost model predict what the runtime does?

Plans of small models are run for real on the local platform (every rank a fresh process behind
its own emulated 70 MB/s, 20 ms link) and the measured time per iteration (median of the
iterations after the first) is compared with the closed form (`planners.cost`) and the simulator
(`planners.simulate`) for the same plan and a profile taken as a function runs (one XLA thread,
`runtime_common.profile_like_a_function`). The local platform's CPU share per function is what
this machine's cores leave each function given the plan's predicted compute demand
(`runtime_common.cpu_share`).

The per-lane timeline of one iteration (compute, upload, download of every rank) is drawn next
to the simulator's replay, and the schedule is replayed once more with the durations measured
in that iteration: the gap between that replay and the measured iteration is the runtime's own
overhead (`timelines.compare_run`).

Usage:
    python -m experiments.fidelity            # mlp, resnet18-tiny, bert-base-tiny: ~6 min
    python -m experiments.fidelity --quick    # mlp on 2 and 4 functions: ~70 s
Writes experiments/results/fidelity/fidelity.json and one timeline PNG per case.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import runtime_common as rc
from experiments import timelines

MEMORY_MB = 2048


def balanced_plan(profile: Any, stages: int, replicas: tuple[int, ...], micro_batch: int,
                  batch: int, memory_mb: int = MEMORY_MB) -> Any:
    """Contiguous cuts minimising the largest stage's fwd+bwd time per micro-batch divided by its
    replicas (exhaustive over the cut positions: the models here have at most a dozen layers)."""
    from itertools import combinations

    from planners import Plan, StagePlan

    work = [layer.fwd_time(micro_batch) + layer.bwd_time(micro_batch) for layer in profile.layers]
    L = len(work)
    best, best_cuts = np.inf, None
    for cuts in combinations(range(1, L), stages - 1):
        bounds = (0, *cuts, L)
        load = max(sum(work[a:b]) / d for a, b, d in zip(bounds, bounds[1:], replicas))
        if load < best:
            best, best_cuts = load, bounds
    return Plan(stages=tuple(StagePlan(a, b - 1, memory_mb, d)
                             for a, b, d in zip(best_cuts, best_cuts[1:], replicas)),
                micro_batch=micro_batch, global_batch=batch)


def load_profile(workdir: Path, model: str, batch: int, micro_batch: int) -> Any:
    from planners.profile import ModelProfile

    sizes = tuple(sorted({max(micro_batch // 2, 2), micro_batch}))
    path = rc.profile_like_a_function(model, batch, workdir / "profiles", sizes=sizes)
    return ModelProfile.from_dict(json.loads(path.read_text()))


def measure(cases: list[dict[str, Any]], out: Path, workdir: Path, tag: str,
            reuse: bool = False) -> list[dict]:
    """Runs every case {model, batch, micro_batch, replicas (per stage), iterations} and returns
    one `timelines.compare_run` row each; draws `<tag>-<name>.png` into `out`."""
    from planners import simulate

    rows = []
    for case in cases:
        name = case.get("name") or f"{case['model']}-{len(case['replicas'])}s"
        began = time.time()
        prof = load_profile(workdir, case["model"], case["batch"], case["micro_batch"])
        plan = balanced_plan(prof, len(case["replicas"]), tuple(case["replicas"]),
                             case["micro_batch"], case["batch"])
        run = rc.run_plan(workdir, name, case["model"], plan, case["batch"], case["iterations"],
                          optimizer="momentum", learning_rate=0.01, reuse=reuse)
        row = timelines.compare_run(run)
        row.update(name=name, plan=plan.to_dict(),
                   seconds=run.seconds if reuse else time.time() - began,
                   load_avg_1m=rc.machine()["load_avg_1m"])
        sim = simulate.simulate(plan, run.problem)
        it = timelines.iteration_spans(run.metrics, timelines.held_iterations(run.metrics)[-1])
        timelines.draw_timeline(it, out / f"{tag}-{name}.png",
                         f"{name}: {plan.num_functions} functions, M={plan.num_micro_batches}",
                         simulated=sim)
        row["timeline_png"] = f"{tag}-{name}.png"
        rows.append(row)
        print(f"{name:22s} measured {row['measured_s']:.3f} s  closed form "
              f"{row['closed_form_s']:.3f} s (x{row['measured_over_closed_form']:.2f})  simulated "
              f"{row['simulated_s']:.3f} s (x{row['measured_over_simulated']:.2f})  "
              f"replay(measured) {row['replay_with_measured_durations_s']:.3f} s  overhead "
              f"{row['overhead_per_micro_batch_s'] * 1e3:.1f} ms/micro-batch (hand-off gaps "
              f"{row['handoff_gap_per_micro_batch_s'] * 1e3:.1f} ms, waiting for a core "
              f"{row['cpu_wait_per_micro_batch_s'] * 1e3:.1f} ms)  [{row['seconds']:.0f}"
              f" s, load {row['load_avg_1m']:.1f}]", flush=True)
    return rows


QUICK = [
    {"name": "mlp-2f", "model": "mlp", "batch": 64, "micro_batch": 16, "replicas": [1, 1],
     "iterations": 6},
    {"name": "mlp-4f", "model": "mlp", "batch": 64, "micro_batch": 8, "replicas": [1, 2, 1],
     "iterations": 6},
]
FULL = QUICK + [
    {"name": "resnet18-tiny-4f", "model": "resnet18-tiny", "batch": 32, "micro_batch": 4,
     "replicas": [1, 1, 1, 1], "iterations": 6},
    {"name": "bert-tiny-4f", "model": "bert-base-tiny", "batch": 32, "micro_batch": 4,
     "replicas": [1, 2, 1], "iterations": 6},
]


def run(quick: bool = False, out: str | Path | None = None, cases: list[dict] | None = None,
        workdir: str | Path | None = None, reuse: bool = False) -> dict[str, Any]:
    """Entry point (tests call it with a tmp `out`); returns what it writes as JSON. With
    `reuse`, jobs already finished in `workdir` are analysed again instead of rerun."""
    out = rc.results_dir("fidelity", out)
    own = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="rx_fidelity_"))
    began = time.time()
    try:
        rows = measure(cases or (QUICK if quick else FULL), out, work, "timeline", reuse)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    data = {"experiment": "fidelity", "quick": quick, "machine": rc.machine(),
            "seconds": sum(r["seconds"] for r in rows) if reuse else time.time() - began,
            "rows": rows}
    rc.write_json(out / "fidelity.json", data)
    plot_ratios(rows, out / "fidelity.png")
    return data


def plot_ratios(rows: list[dict], path: Path, title: str = "fidelity") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 3.6))
    w = 0.2
    ax.bar(x - 1.5 * w, [r["measured_s"] for r in rows], w, label="measured")
    ax.bar(x - 0.5 * w, [r["closed_form_s"] for r in rows], w, label="closed form")
    ax.bar(x + 0.5 * w, [r["simulated_s"] for r in rows], w, label="simulated")
    ax.bar(x + 1.5 * w, [r["replay_with_measured_durations_s"] for r in rows], w,
           label="replay, measured durations")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("seconds per iteration")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    rc.cli(run, __doc__, "fidelity")


if __name__ == "__main__":
    main()
