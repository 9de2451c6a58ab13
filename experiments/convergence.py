"""convergence: the default job (the MLP on scikit-learn's digits) trained to a target test
accuracy through the local platform with 1, 2 and 4 stages and with replicas: the loss curves
are the same (same data order, SGD with momentum, gradients summed over micro-batches and
replicas), and pipelining changes only the time and the cost of reaching the target.

Plans are written by hand as `planners.Plan`s over the MLP's 4 layers, global batch 64 in
micro-batches of 16, 2048 MB functions. Test accuracy is measured every 5 iterations from the
checkpoints the job leaves, through the unsplit model.

Usage:
    python -m experiments.convergence            # 5 plans x 60 iterations: ~4.5 min
    python -m experiments.convergence --quick    # 1, 2 and 4 stages x 30 iterations: ~70 s
Writes experiments/results/convergence/convergence.{json,png}.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import runtime_common as rc

BATCH, MICRO, MEMORY_MB = 64, 16, 2048
TARGET = 0.90
LEARNING_RATE = 0.05
EVERY = 5


def plans() -> dict[str, Any]:
    from planners import Plan, StagePlan

    def plan(*stages: tuple[int, int, int]) -> Plan:
        return Plan(stages=tuple(StagePlan(a, b, MEMORY_MB, d) for a, b, d in stages),
                    micro_batch=MICRO, global_batch=BATCH)

    return {
        "1 stage": plan((0, 3, 1)),
        "2 stages": plan((0, 1, 1), (2, 3, 1)),
        "4 stages": plan((0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)),
        "2 stages x 2 replicas": plan((0, 1, 2), (2, 3, 2)),
        "1 stage x 4 replicas": plan((0, 3, 4)),
    }


QUICK_PLANS = ("1 stage", "2 stages", "4 stages")


def accuracies(run: Any, iterations: int) -> dict[int, float]:
    """Test accuracy of the checkpoint of every EVERY-th iteration, through the unsplit model."""
    from jaxpipe import models
    from jaxpipe.runtime.job import Keys
    from jaxpipe.tree import nest
    from transports import codec

    x_test, y_test = models.digits()[2:]
    module = dataclasses.replace(models.get("mlp").module, train=False)
    out = {}
    for t in range(EVERY, iterations + 1, EVERY):
        params: dict[str, Any] = {}
        for k in range(len(run.plan.stages)):
            key = Keys(run.job).checkpoint(t, k, "params")
            params.update(codec.decode(run.store.get(key, timeout=10), key=key))
        logits = module.apply({"params": nest(params, strip="params")}, x_test)
        out[t] = float(np.mean(np.argmax(np.asarray(logits), -1) == y_test))
    return out


def run(quick: bool = False, out: str | Path | None = None, iterations: int | None = None,
        names: tuple[str, ...] | None = None, workdir: str | Path | None = None
        ) -> dict[str, Any]:
    out = rc.results_dir("convergence", out)
    iterations = iterations or (30 if quick else 60)
    names = names or (QUICK_PLANS if quick else tuple(plans()))
    own = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="rx_convergence_"))
    began = time.time()
    rows = []
    try:
        for i, name in enumerate(names):
            plan = plans()[name]
            run_ = rc.run_plan(work, f"conv{i}", "mlp", plan, BATCH, iterations,
                               optimizer="momentum", learning_rate=LEARNING_RATE,
                               checkpoint_every=EVERY)
            acc = accuracies(run_, iterations)
            reached = next((t for t, a in sorted(acc.items()) if a >= TARGET), None)
            s = run_.summary
            per_it = s.measured_seconds_per_iteration
            per_dollar = s.measured_run_dollars_per_iteration  # start-up included
            row = {
                "plan": name, "functions": plan.num_functions, "stages": len(plan.stages),
                "losses": list(s.losses), "test_accuracy": acc,
                "final_test_accuracy": s.test_accuracy,
                "iterations_to_target": reached,
                "seconds_per_iteration": per_it,
                "dollars_per_iteration": per_dollar,
                "predicted_seconds_per_iteration": s.predicted_seconds_per_iteration,
                "predicted_dollars_per_iteration": s.predicted_dollars_per_iteration,
                "seconds_to_target": None if reached is None else reached * per_it,
                "dollars_to_target": None if reached is None else reached * per_dollar,
                "job_wall_s": run_.seconds,
            }
            rows.append(row)
            print(f"{name:24s} {plan.num_functions} functions: loss {s.losses[0]:.4f} -> "
                  f"{s.losses[-1]:.4f}, accuracy {acc}, {per_it:.3f} s/it, "
                  f"${per_dollar:.2e}/it, target at {reached}", flush=True)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    reference = np.asarray(rows[0]["losses"])
    for row in rows:
        diff = np.abs(np.asarray(row["losses"]) - reference) / np.abs(reference)
        row["max_relative_loss_difference"] = float(diff.max())
    data = {"experiment": "convergence", "quick": quick, "machine": rc.machine(),
            "seconds": time.time() - began, "target_accuracy": TARGET, "batch": BATCH,
            "micro_batch": MICRO, "optimizer": "momentum 0.9", "learning_rate": LEARNING_RATE,
            "iterations": iterations, "rows": rows}
    rc.write_json(out / "convergence.json", data)
    plot(rows, out / "convergence.png")
    return data


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    styles = ["-", "--", ":", "-.", (0, (1, 3))]
    for i, r in enumerate(rows):
        axes[0].plot(range(1, len(r["losses"]) + 1), r["losses"], linestyle=styles[i % 5],
                     lw=1.5, label=f"{r['plan']} (max rel. diff "
                                   f"{r['max_relative_loss_difference']:.1e})")
        ts = sorted(r["test_accuracy"], key=int)
        axes[1].plot([int(t) for t in ts], [r["test_accuracy"][t] for t in ts], "o",
                     linestyle=styles[i % 5], label=r["plan"])
    axes[1].axhline(TARGET, color="grey", lw=0.8)
    axes[0].set(xlabel="iteration", ylabel="training loss", yscale="log", title="loss curves")
    axes[1].set(xlabel="iteration", ylabel="test accuracy", title=f"target {TARGET:.0%}")
    names = [r["plan"] for r in rows]
    x = np.arange(len(rows))
    secs = [r["seconds_to_target"] or 0 for r in rows]
    cents = [(r["dollars_to_target"] or 0) * 100 for r in rows]
    axes[2].bar(x - 0.2, secs, 0.4, label="seconds to target")
    ax2 = axes[2].twinx()
    ax2.bar(x + 0.2, cents, 0.4, color="tab:orange", label="cents to target")
    axes[2].set_xticks(x, names, rotation=20, fontsize=7)
    axes[2].set_ylabel("seconds (measured)")
    ax2.set_ylabel("US cents (Lambda prices)")
    axes[2].set_title("time and cost to the target")
    for ax in axes[:2]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    rc.cli(run, __doc__, "convergence")


if __name__ == "__main__":
    main()
