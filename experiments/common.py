"""Shared helpers of the planner-only experiments (end_to_end, planners, sensitivity, recompute).

(The runtime experiments' helpers live in ``experiments/runtime_common.py``.)

Profiles come from ``experiments/profiles/<model>.json`` (measured on this CPU by
``python -m experiments.profile_models``); a model without a stored profile falls back to the
shape-based ``planners.synthetic`` profile and is marked ``synthetic`` in every result.

The CPU scaling parameter ``cpu_scale`` is how many Lambda vCPUs one core of this machine is
worth: a profile measured on ``n`` cores is taken to run at ``n * cpu_scale`` Lambda vCPUs, so a
function with c vCPUs runs each layer's parallel part ``n * cpu_scale / c`` times slower and its
serial part as on one vCPU (``cost.StageModel``'s ``r = reference_cpus / c`` with the layers'
measured Amdahl fractions, ``planners.cpu_share``). Default 1.0 (one core = one vCPU);
``sensitivity`` varies it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

from planners import (
    InfeasibleError,
    ModelProfile,
    Objective,
    Plan,
    PlanError,
    Problem,
    coarsen,
    cost,
    plan,
    platforms,
    simulate,
    synthetic,
)

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent
PROFILES, RESULTS = ROOT / "profiles", ROOT / "results"
MODELS = ("resnet101", "amoebanet18", "amoebanet36", "bert-large")
LABELS = {"resnet101": "ResNet-101", "amoebanet18": "AmoebaNet-D(18,256)",
          "amoebanet36": "AmoebaNet-D(36,256)", "bert-large": "BERT-Large"}
# The paper's published headline numbers (FuncPipe, Liu et al., POMACS 2022, abstract): against
# "state-of-the-art serverless training frameworks" (LambdaML-style data parallelism and a
# hybrid parameter server, presumably).
PAPER = {"speedup": (1.3, 2.2), "cost_saving": (0.07, 0.77),
         "source": "FuncPipe (Liu et al., POMACS 2022), abstract"}
CPU_SCALE = 1.0


def _synthetic(model: str) -> ModelProfile:
    if model == "amoebanet18":  # D36's shape with 6 normal cells per group instead of 12
        full = synthetic.amoebanet_d36_like()
        keep = [x for x in full.layers if not (x.name[0] == "g" and int(x.name[3:]) >= 6)]
        return dataclasses.replace(full, model="amoebanet-d18-like", layers=tuple(keep))
    return synthetic.SHAPES[{"amoebanet36": "amoebanet-d36"}.get(model, model)]()


def load_profile(model: str, cpu_scale: float = CPU_SCALE) -> ModelProfile:
    """The stored measured profile of ``model`` (else the synthetic one), scaled to Lambda vCPUs."""
    path = PROFILES / f"{model}.json"
    if path.exists():
        prof = ModelProfile.from_dict(json.loads(path.read_text()))
        meta = dict(prof.meta) | {"source": "measured"}
    else:
        prof = _synthetic(model)
        meta = dict(prof.meta) | {"source": "synthetic"}
    meta |= {"measured_cores": prof.reference_cpus, "cpu_scale": cpu_scale}
    return dataclasses.replace(prof, reference_cpus=prof.reference_cpus * cpu_scale, meta=meta)


def weight_for(platform: Any) -> float:
    """Objective weight per second: one second is worth 60 GB-s of functions (1e-3 $/s on AWS,
    the planners' default), so both platforms trade time for money alike."""
    return platform.compute_dollars(60.0, 1.0)


def make_problem(model: str, platform: str = "aws-lambda", batch: int = 64, groups: int = 20,
                 cpu_scale: float = CPU_SCALE, **kw: Any) -> Problem:
    """The experiments' standard problem: coarsened profile, weighted objective, <= 32 functions."""
    plat = platforms.get(platform)
    kw.setdefault("objective", Objective.weighted(weight_for(plat)))
    return Problem(coarsen(load_profile(model, cpu_scale), groups), plat, batch, **kw)


def solve(problem: Problem, method: str, time_limit: float = 10.0) -> Plan | None:
    """``plan(problem, method)``; None when infeasible."""
    opts = {"time_limit": time_limit} if method == "miqp" else {}
    try:
        return plan(problem, method, **opts)
    except InfeasibleError:
        return None


def gpipe_largest(problem: Problem) -> Plan | None:
    """GPipe-style: equal layer counts per stage, every stage on the largest memory option, the
    best (S, d, b) for the objective (planners' ``uniform`` restricted to one memory size)."""
    top = problem.platform.max_memory_mb
    restricted = dataclasses.replace(problem, platform=dataclasses.replace(
        problem.platform, memory_options_mb=(top,)))
    found = solve(restricted, "uniform")
    return None if found is None else dataclasses.replace(found, method="gpipe-largest")


def simulated(p: Plan, problem: Problem) -> tuple[float, float]:
    """(seconds, dollars) of ``p`` with the time from the discrete-event simulator."""
    seconds = simulate.simulate(p, problem).iteration_seconds
    return seconds, cost.dollars(cost.plan_terms(p, problem), problem, seconds)


def plan_row(p: Plan, problem: Problem, sim: bool = True) -> dict[str, Any]:
    """One plan as a JSON row: predictions (closed form and simulator), shape, solve data."""
    row = {"method": p.method, "seconds": p.iteration_seconds, "dollars": p.iteration_dollars,
           "objective": p.objective_value, "solve_seconds": round(p.solve_seconds, 3),
           "status": p.status, "gap": p.gap, "stages": len(p.stages),
           "functions": p.num_functions, "micro_batch": p.micro_batch,
           "memory_mb": [st.memory_mb for st in p.stages],
           "replicas": [st.replicas for st in p.stages], "modes": [st.mode for st in p.stages],
           "cuts": list(p.cuts), "peak_mb": list(p.peak_memory_mb)}
    if sim:
        row["sim_seconds"], row["sim_dollars"] = simulated(p, problem)
    return row


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    """(fn(*args, **kw), wall seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def out_dir(name: str, out: Path | str | None, quick: bool = False) -> Path:
    """``out``, else ``experiments/results/<name>`` (``.../<name>/quick`` for quick runs, so
    they never overwrite the full results), created."""
    path = Path(out) if out is not None else RESULTS / name / ("quick" if quick else "")
    path.mkdir(parents=True, exist_ok=True)
    return path


def finite(x: Any) -> Any:
    """JSON-safe: inf/nan -> None, recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def save_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (inf/nan as null)."""
    path.write_text(json.dumps(finite(data), indent=1, default=str))


__all__ = ["MODELS", "PAPER", "PlanError", "gpipe_largest", "load_profile", "make_problem",
           "out_dir", "plan_row", "save_json", "simulated", "solve", "timed", "weight_for"]
