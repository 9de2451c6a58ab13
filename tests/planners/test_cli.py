"""``python -m planners plan`` end to end, without JAX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from planners import Plan, synthetic


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planners", "plan", *args], check=False,
                          capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_plan_prints_a_table_and_writes_original_layer_cuts(tmp_path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(synthetic.random_profile(4, 8).to_json())
    out = tmp_path / "plan.json"
    res = run("--profile", str(prof), "--platform", "aws-lambda", "--batch", "8", "--groups", "4",
              "--method", "balanced", "--deadline", "1000", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "headroom MB" in res.stdout and "min cost s.t. time <= 1000 s" in res.stdout
    plan = Plan.from_json(out.read_text())
    assert plan.num_layers == 8 and json.loads(out.read_text())["cuts"] == list(plan.cuts)


def test_compare_prints_one_row_per_method(tmp_path) -> None:
    prof = tmp_path / "p.json"
    prof.write_text(synthetic.random_profile(4, 5).to_json())
    res = run("--profile", str(prof), "--batch", "4", "--micro-batches", "1,2",
              "--replicas", "1,2", "--max-functions", "6", "--compare")
    assert res.returncode == 0, res.stderr
    for method in ("miqp", "uniform", "balanced", "pipedream", "maxload", "data-parallel"):
        assert any(line.startswith(method) for line in res.stdout.splitlines())


def test_errors_exit_with_status_2(tmp_path) -> None:
    res = run("--profile", str(tmp_path / "missing.json"), "--batch", "4")
    assert res.returncode == 2 and "error" in res.stderr


def test_schedule_any_plans_accumulating_data_parallelism_where_it_is_best(tmp_path) -> None:
    """One layer whose 8 micro-batches of residuals fit no memory together: FuncPipe's order
    must recompute, a one-stage 1F1B plan (accumulation) stashes."""
    prof = tmp_path / "p.json"
    base = synthetic.random_profile(2, 1)
    layer = base.layers[0]
    prof.write_text(base.__class__(base.model, (layer.__class__(
        layer.name, 1 << 20, 1.5e9, layer.boundary_bytes_per_sample, layer.fwd_alpha,
        layer.fwd_beta, layer.bwd_alpha, layer.bwd_beta),), base.input_bytes_per_sample,
        base.reference_cpus).to_json())
    out = tmp_path / "plan.json"
    res = run("--profile", str(prof), "--batch", "8", "--micro-batches", "1",
              "--replicas", "1", "--max-functions", "1", "--schedule", "any", "-o", str(out))
    assert res.returncode == 0, res.stderr
    plan = Plan.from_json(out.read_text())
    assert plan.schedule == "1f1b" and plan.stages[0].mode == "stash"
