"""Helpers shared by the experiments: small model configs, profiling as a local function does,
running a plan on the local platform, and reading, replaying and drawing the workers' timelines.

Runtime experiments (fidelity, bench_runtime, convergence) run real jobs with `jaxpipe.train`;
every function is a fresh process that imports JAX, so a job costs ~5-10 s of start-up on 2 cores.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform as _platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# Experiment-only model configs: registry name -> (base registry name, config overrides).
SMALL_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    # ResNet-18 (2, 2, 2, 2 basic blocks) at 32x32, width 16, 10 classes: 0.7 M parameters.
    "resnet18-small": ("resnet18", {"image_size": 32, "num_classes": 10, "width": 16}),
    # BERT with 4 encoder layers of width 128 on 32-token sequences: 0.9 M parameters.
    "bert-small": ("bert-base", {"num_layers": 4, "hidden": 128, "heads": 4, "seq_len": 32,
                                 "max_positions": 32, "vocab_size": 512, "dropout": 0.0}),
}


def results_dir(name: str, out: str | Path | None = None) -> Path:
    """experiments/results/<name>/ (or `out`), created."""
    path = Path(out) if out else RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpus": len(os.sched_getaffinity(0)), "load_avg_1m": os.getloadavg()[0],
            "python": _platform.python_version(), "machine": _platform.machine()}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON: {type(value)}")


# -- models ------------------------------------------------------------------------------------

def resolve(model: str) -> tuple[str, dict[str, Any]]:
    """(zoo name, config overrides) of a model name, experiment-only SMALL_MODELS included."""
    return SMALL_MODELS.get(model, (model, {}))


def profile_path(cache_dir: str | Path, model: str, batch: int) -> Path:
    """Where `jaxpipe.train` looks for the profile of `model` at global batch `batch`."""
    from jaxpipe.train import profile_cache_path

    base, overrides = resolve(model)
    return profile_cache_path(cache_dir, base, overrides, sizes_for(batch))


def sizes_for(batch: int) -> tuple[int, ...]:
    """The micro-batch sizes `jaxpipe.train` profiles for a global batch."""
    return tuple(b for b in (1, 2, 4, 8, 16) if batch % b == 0)


# -- profiling like a function ---------------------------------------------------------------

def profile_like_a_function(model: str, batch: int, cache_dir: str | Path,
                            repeats: int = 5, sizes: tuple[int, ...] = (2, 4)) -> Path:
    """Profiles `model` in a fresh process with one XLA thread, as a local function runs, and
    stores it where `jaxpipe.train` looks for its profile cache (reference_cpus = 1).

    The driver's own profile would be taken with every core of this machine; the workers run
    single-threaded, so a profile with `reference_cpus` = cores would assume a 2x slow-down
    that small kernels never had. Only `sizes` are timed (each layer is compiled per size, which
    costs minutes on a loaded 2-core machine): pass the plan's micro-batch size and one more for
    the linear fit. Batch size 1 is avoided: BERT's trace changes structure at batch 1.
    """
    path = profile_path(cache_dir, model, batch)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XLA_FLAGS=SINGLE_THREAD_XLA, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "experiments.runtime_common", "profile", model, str(batch),
                    str(path), str(repeats), ",".join(map(str, sizes))], check=True, env=env,
                   cwd=Path(__file__).resolve().parents[1])
    return path


def _profile_main(model: str, batch: int, out: str, repeats: int, sizes: tuple[int, ...],
                  ) -> None:
    import jax

    from jaxpipe import models
    from jaxpipe.profile import profile
    from jaxpipe.trace import trace
    from jaxpipe.train import TrainOptions, first_rows, training_data

    base, overrides = resolve(model)
    spec = models.get(base, **overrides)
    options = TrainOptions(model=base, model_overrides=overrides, batch=batch)
    variables = spec.init(jax.random.PRNGKey(options.seed))
    data, _ = training_data(spec, options)
    traced = trace(spec.module, variables, tuple(first_rows(p, batch) for p in data), spec.loss_fn,
                   rngs=spec.rngs(jax.random.PRNGKey(options.seed)))
    prof = profile(traced, sizes, repeats=repeats, name=spec.name)
    prof = dataclasses.replace(prof, reference_cpus=1.0)
    Path(out).write_text(json.dumps(prof.to_dict()))


def local_platform(path: Path, share: float, **fields: Any) -> Path:
    """Writes a `local` platform file giving each function `share` of a core."""
    path.write_text(json.dumps({"max_cpus": share, **fields}))
    return path


def cpu_share(plan: Any, problem: Any, cores: int | None = None) -> float:
    """The CPU share each function of `plan` gets from `cores` cores (default: this machine's).

    `problem` predicts with a full core per function. Its functions' summed compute per
    iteration (forward and backward of every micro-batch, plus each replica's update) over the
    predicted iteration time is the number of cores they keep busy on average: while that fits
    in `cores`, a function computing finds a core (share 1); beyond, they get the part that
    fits. (Ranks of a pipeline compute in turns: with N functions on fewer cores, assuming all
    compute at once, i.e. cores / N, over-predicted compute 2-4x in bench_runtime.)
    """
    from planners import cost

    cores = cores or len(os.sched_getaffinity(0))
    terms = cost.plan_terms(plan, problem)
    busy = sum(plan.num_micro_batches * (t.fwd + t.bwd) + st.replicas * t.update
               for t, st in zip(terms, plan.stages, strict=True))
    demand = busy / cost.iteration_time(plan, problem)
    return min(1.0, cores / demand) if demand > 0 else 1.0


# -- running a plan ----------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A finished job: its summary, every rank's metrics, the problem it was predicted with."""

    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    problem: Any
    plan: Any
    store: Any
    job: str
    seconds: float


def run_plan(workdir: str | Path, job: str, model: str, plan: Any, batch: int, iterations: int,
             *, functions_share: bool = True, optimizer: str = "momentum",
             learning_rate: float = 0.05, checkpoint_every: int = 1000,
             platform_fields: dict[str, Any] | None = None, wait_timeout_s: float = 180.0,
             profile_repeats: int = 5, reuse: bool = False) -> Run:
    """Runs `plan` (a planners.Plan) for `model` on the local platform and returns the `Run`.

    The profile is taken as a function runs (`profile_like_a_function`); with
    `functions_share`, the platform's CPU share is what this machine's cores give the plan's
    functions (see `cpu_share`).
    """
    from jaxpipe.driver import RunConfig
    from jaxpipe.train import TrainOptions, train

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "profiles"
    sizes = tuple(sorted({max(plan.micro_batch // 2, 2), plan.micro_batch}))
    profile_like_a_function(model, batch, cache, profile_repeats, sizes)
    plan_path = workdir / f"{job}-plan.json"
    plan_path.write_text(json.dumps(plan.to_dict()))
    fields = dict(platform_fields or {})
    plat_path = workdir / f"{job}-platform.json"
    local_platform(plat_path, 1.0, **fields)
    if functions_share:
        local_platform(plat_path, cpu_share(plan, _problem(workdir, job, model, plan, batch,
                                                            optimizer)), **fields)
    else:
        plat_path.write_text(json.dumps(fields))
    base, overrides = resolve(model)
    options = TrainOptions(
        model=base, model_overrides=overrides, platform="local", platform_file=str(plat_path), plan_file=str(plan_path),
        batch=batch, iterations=iterations, optimizer=optimizer, learning_rate=learning_rate,
        store=str(workdir / "store"), job_id=job, checkpoint_every=checkpoint_every,
        profile_cache=str(cache), wait_timeout_s=wait_timeout_s,
        run=RunConfig(log_dir=str(workdir / "logs")))
    timing = workdir / f"{job}-seconds.json"
    if not (reuse and timing.exists()):  # reuse: analyse a finished job again, do not rerun it
        began = time.time()
        train(options, show_progress=False)
        timing.write_text(json.dumps(time.time() - began))
    return load_run(workdir, job, model, plan, batch, optimizer, json.loads(timing.read_text()))


def load_run(workdir: str | Path, job: str, model: str, plan: Any, batch: int,
             optimizer: str = "momentum", seconds: float = 0.0) -> Run:
    """The `Run` of a finished job of `run_plan` in `workdir` (its summary and metrics stay in
    the store), so that its timelines can be analysed again without running it."""
    from jaxpipe.train import open_store

    workdir = Path(workdir)
    store = open_store(str(workdir / "store"))
    summary = json.loads(store.get(f"jobs/{job}/results/summary.json"))
    metrics = [json.loads(store.get(k)) for k in store.list(f"jobs/{job}/metrics/rank")]
    metrics.sort(key=lambda m: m["rank"])
    problem = _problem(workdir, job, model, plan, batch, optimizer)
    return Run(summary, metrics, problem, plan, store, job, seconds)


def _problem(workdir: Path, job: str, model: str, plan: Any, batch: int,
             optimizer: str) -> Any:
    """The planning problem of a `run_plan` job: its cached profile on its platform file."""
    from jaxpipe.train import OPTIMIZER_SLOTS
    from planners import Platform, Problem, platforms
    from planners.profile import ModelProfile

    prof = ModelProfile.from_dict(json.loads(profile_path(workdir / "profiles", model,
                                                          batch).read_text()))
    plat = platforms.get("local", str(workdir / f"{job}-platform.json"))
    return Problem(profile=prof, platform=Platform.from_dict(plat.to_dict()),
                   global_batch=batch, micro_batches=sizes_for(batch),
                   replica_options=(1, 2, 4), max_functions=max(plan.num_functions, 4),
                   optimizer_slots=OPTIMIZER_SLOTS[optimizer])


# -- timelines ---------------------------------------------------------------------------------

def iteration_spans(metrics: list[dict[str, Any]], which: int = -1) -> dict[str, Any]:
    """The spans of one iteration (`which`, counted as a Python index over the iterations
    every rank's timeline still holds) of every rank, with the iteration window.

    A rank's iteration ends with its UPDATE; its spans are those starting between the end of its
    previous UPDATE and the end of this one (uploads may end a little later). The window is the
    iteration's makespan as executed: from when stage 0 (which needs nothing from other ranks)
    started it to when the last rank finished its UPDATE. Iterations overlap (stage 0 starts the
    next one while later stages still sync), so the time per iteration (`iteration_periods`) is
    shorter than this window.
    """
    per_rank, starts, ends = {}, [], []
    for m in metrics:
        spans = sorted(m["timeline"], key=lambda e: e["start"])
        updates = [e for e in spans if e["name"] == "UPDATE"]
        index = range(len(updates))[which]
        this = updates[index]
        prev_end = updates[index - 1]["end"] if index > 0 else spans[0]["start"]
        per_rank[m["rank"]] = {
            "stage": m["stage"], "replica": m["replica"],
            "spans": [e for e in spans if prev_end <= e["start"] < this["end"]]}
        if m["stage"] == 0:
            starts.append(prev_end)
        ends.append(this["end"])
    return {"start": min(starts), "end": max(ends), "ranks": per_rank}


def iteration_periods(metrics: list[dict[str, Any]]) -> list[float]:
    """Time between the ends (last UPDATE of any rank) of successive iterations, for every
    iteration the timelines hold but the job's first WARM_UP (compilation): the measured time
    per iteration, from the workers' own clocks."""
    indices = iteration_indices(metrics)
    ends = [iteration_spans(metrics, k)["end"] for k in range(indices.start - 1, indices.stop)]
    return [b - a for a, b in itertools.pairwise(ends)]


def iteration_indices(metrics: list[dict[str, Any]]) -> range:
    """Indices (for `iteration_spans`) of the iterations every timeline holds, without the
    job's first WARM_UP iterations."""
    held = min(sum(e["name"] == "UPDATE" for e in m["timeline"]) for m in metrics)
    first_kept = held - min(len(m["iterations"]) for m in metrics)
    return range(max(first_kept, WARM_UP), held)


def _iteration_record(metrics: dict[str, Any], k: int) -> dict[str, Any]:
    """A rank's `iterations` entry for timeline iteration k (the timeline may hold more
    iterations than the list, from earlier invocations of the same rank)."""
    held = sum(e["name"] == "UPDATE" for e in metrics["timeline"])
    return metrics["iterations"][k - (held - len(metrics["iterations"]))]


WARM_UP = 2
"""Iterations left out of every measurement: the first compiles each rank's programs, and in the
second ranks still wait for peers that compiled late (before the worker committed its arrays to
the device, it also compiled every program again: 10-37 s against 0.6-0.8 s steady)."""


def _micro_batch(name: str) -> int | None:
    parts = name.split()
    return int(parts[1]) if len(parts) > 1 else None


def effective_downloads(it: dict[str, Any], schedule: Any) -> dict[tuple[int, str], float]:
    """Duration of every download from when its object existed (the producer's upload ended)
    to when it was decoded: the transfer, without the wait for the producer, keyed by
    (rank, span name)."""
    from planners.schedule import Kind

    sends = {(r, e["name"]): e for r, info in it["ranks"].items() for e in info["spans"]
             if e["name"].startswith("SEND_")}
    out = {}
    for r, info in it["ranks"].items():
        tasks = {(str(t.kind), t.micro_batch): t for t in schedule.tasks[r]}
        for e in info["spans"]:
            if not e["name"].startswith("RECV_"):
                continue
            kind, m = e["name"].split()[0], _micro_batch(e["name"])
            task = tasks[(kind, m)]
            ready = e["start"]
            if task.peer is not None:
                send = "SEND_ACT" if kind == Kind.RECV_ACT else "SEND_GRAD"
                producer = sends.get((task.peer, f"{send} {m}"))
                if producer is not None:
                    ready = max(ready, producer["end"])
            out[(r, e["name"])] = max(e["end"] - ready, 0.0)
    return out


_KIND_FIELD = {"FWD": "fwd", "BWD": "bwd", "UPDATE": "update", "SYNC": "sync",
               "SEND_ACT": "act_up", "SEND_GRAD": "grad_up", "RECV_ACT": "act_down",
               "RECV_GRAD": "grad_down"}


def measured_terms(it: dict[str, Any], plan: Any, problem: Any) -> list[Any]:
    """The cost model's stage terms with every duration replaced by the mean measured one
    (downloads: effective, see `effective_downloads`)."""
    from planners import cost
    from planners.schedule import build

    schedule = build(plan)
    downloads = effective_downloads(it, schedule)
    terms = cost.plan_terms(plan, problem)
    out = []
    for s, t in enumerate(terms):
        durations: dict[str, list[float]] = {}
        # A replica's SYNC span includes waiting for its slowest peer to reach the SYNC; the
        # replay starts the all-reduce when all are there, so time it from the last arrival.
        sync_start = max((e["start"] for info in it["ranks"].values() if info["stage"] == s
                          for e in info["spans"] if e["name"] == "SYNC"), default=0.0)
        for r, info in it["ranks"].items():
            if info["stage"] != s:
                continue
            for e in info["spans"]:
                kind = e["name"].split()[0]
                value = downloads.get((r, e["name"]), e["end"] - e["start"])
                if kind == "SYNC":
                    value = e["end"] - max(e["start"], sync_start)
                durations.setdefault(_KIND_FIELD[kind], []).append(value)
        out.append(dataclasses.replace(t, **{k: float(np.mean(v)) for k, v in durations.items()}))
    return out


def lane_totals(it: dict[str, Any], schedule: Any) -> dict[int, dict[str, float]]:
    """Per rank: busy seconds of the compute lane, the upload lane, the effective downloads,
    and the time in the window when none of them was busy ("idle")."""
    downloads = effective_downloads(it, schedule)
    out = {}
    for r, info in it["ranks"].items():
        intervals = {"compute": [], "upload": [], "download": []}
        for e in info["spans"]:
            lane = "upload" if e["lane"] == "storage" else e["lane"]
            start = e["start"]
            if lane == "download":
                start = e["end"] - downloads.get((r, e["name"]), e["end"] - e["start"])
            intervals[lane].append((start, e["end"]))
            if e["lane"] == "storage":
                intervals["download"].append((start, e["end"]))
        row = {lane: _union(v) for lane, v in intervals.items()}
        row["any"] = _union([iv for v in intervals.values() for iv in v])
        out[r] = row
    return out


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -np.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def draw_timeline(it: dict[str, Any], path: Path, title: str, simulated: Any = None) -> None:
    """One row per (rank, lane) for one measured iteration; optionally the simulator's replay
    of the same plan below it, on the same time axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"FWD": "tab:blue", "BWD": "tab:orange", "UPDATE": "tab:green",
              "SYNC": "tab:purple", "SEND_ACT": "tab:cyan", "SEND_GRAD": "tab:olive",
              "RECV_ACT": "tab:gray", "RECV_GRAD": "tab:brown"}
    panels = [("measured", it)] + ([("simulated", simulated)] if simulated is not None else [])
    ranks = sorted(it["ranks"])
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 0.75 * 3 * len(ranks) * len(panels)
                                                       + 1.2), squeeze=False, sharex=True)
    lanes = ("compute", "upload", "download")
    for ax, (label, data) in zip(axes[:, 0], panels):
        rows = []
        for r in ranks:
            for lane in lanes:
                rows.append((r, lane))
        y = {key: len(rows) - 1 - i for i, key in enumerate(rows)}
        if label == "measured":
            t0 = data["start"]
            events = [(r, e["lane"], e["name"], e["start"] - t0, e["end"] - t0)
                      for r in ranks for e in data["ranks"][r]["spans"]]
        else:
            events = [(e.rank, e.lane, e.kind if e.micro_batch is None else
                       f"{e.kind} {e.micro_batch}", e.start, e.end) for e in data.timeline]
        for r, lane, name, a, b in events:
            kind = name.split()[0]
            for ln in (("upload", "download") if lane == "storage" else (lane,)):
                ax.barh(y[(r, ln)], b - a, left=a, height=0.8, color=colors.get(kind, "k"),
                        edgecolor="white", linewidth=0.3)
        ax.set_yticks([y[k] for k in rows], [f"rank {r} {lane}" for r, lane in rows], fontsize=7)
        end = data["end"] - data["start"] if label == "measured" else data.iteration_seconds
        ax.axvline(end, color="red", lw=0.8, ls="--")
        ax.set_title(f"{title}: {label} ({end:.3f} s)", fontsize=9)
    axes[-1, 0].set_xlabel("seconds from the iteration start")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    axes[0, 0].legend(handles, list(colors), fontsize=6, ncol=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_run(run: Run, which: int = -1) -> dict[str, Any]:
    """Measured time per iteration against the closed form and the simulator for the same
    plan, and the runtime's own overhead (see `overhead` in the returned dict).

    overhead_per_micro_batch_s = (the iteration's makespan as executed - replay of the schedule
    with that iteration's measured task durations) / micro-batches, median over the iterations
    after warm-up: the time the runtime adds beyond computing and moving the bytes in the plan's
    order (dispatch, thread hand-offs, the loss upload, anything outside the timed spans).
    """
    from planners import cost, simulate
    from planners.schedule import build

    plan, problem, s = run.plan, run.problem, run.summary
    it = iteration_spans(run.metrics, which)
    schedule = build(plan)
    window = it["end"] - it["start"]
    terms = measured_terms(it, plan, problem)
    replayed = simulate.replay(schedule, terms).iteration_seconds
    predicted = cost.plan_terms(plan, problem)
    totals = lane_totals(it, schedule)
    M = plan.num_micro_batches
    per_kind = {}
    for st, (mt, pt) in enumerate(zip(terms, predicted)):
        per_kind[st] = {k: {"measured_s": getattr(mt, k), "model_s": getattr(pt, k)}
                        for k in ("fwd", "bwd", "act_up", "act_down", "grad_up", "grad_down",
                                  "sync", "update")}
    periods = iteration_periods(run.metrics)
    measured = float(np.median(periods)) if periods else s["measured_seconds_per_iteration"]
    overheads = []  # every held iteration after the first: window - replay(measured durations)
    waits = []  # the same iterations: each rank's threads' run-queue wait, mean over ranks
    for k in iteration_indices(run.metrics):
        one = iteration_spans(run.metrics, k)
        replay_k = simulate.replay(schedule, measured_terms(one, plan, problem)).iteration_seconds
        overheads.append((one["end"] - one["start"] - replay_k) / plan.num_micro_batches)
        waits.append(float(np.mean([_iteration_record(m, k).get("cpu_wait_s", 0.0)
                                    for m in run.metrics])) / plan.num_micro_batches)
    return {
        "job": run.job, "model": s["model"], "functions": plan.num_functions,
        "stages": len(plan.stages), "micro_batches": M, "micro_batch": plan.micro_batch,
        "cpu_share": problem.platform.max_cpus,
        "measured_s": measured, "timeline_window_s": window, "periods_s": periods,
        "driver_measured_s": s["measured_seconds_per_iteration"],
        "closed_form_s": s.get("predicted_seconds_per_iteration"),
        "simulated_s": s.get("simulated_seconds_per_iteration"),
        "measured_over_closed_form": measured / s["predicted_seconds_per_iteration"],
        "driver_over_closed_form": s["measured_seconds_per_iteration"]
        / s["predicted_seconds_per_iteration"],
        "measured_over_simulated": measured / s["simulated_seconds_per_iteration"],
        "replay_with_measured_durations_s": replayed,
        "overhead_per_micro_batch_s": float(np.median(overheads)) if overheads
        else (window - replayed) / M,
        "overheads_per_micro_batch_s": overheads,
        "cpu_wait_per_micro_batch_s": float(np.median(waits)) if waits else 0.0,
        "measured_dollars": s["measured_dollars_per_iteration"],
        "predicted_dollars": s.get("predicted_dollars_per_iteration"),
        "per_stage_durations": per_kind,
        "lane_busy_s": totals,
        "idle_per_micro_batch_s": {r: (window - v["any"]) / M for r, v in totals.items()},
        "iteration_times_s": [x["seconds"] for x in run.metrics[0]["iterations"]],
        "job_wall_s": run.seconds, "cold_start_s": s["cold_start_seconds"],
    }


def main() -> None:
    if len(sys.argv) >= 5 and sys.argv[1] == "profile":
        _profile_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                      tuple(int(b) for b in sys.argv[6].split(",")))
    else:
        raise SystemExit("usage: python -m experiments.runtime_common profile MODEL BATCH OUT REPEATS SIZES")


if __name__ == "__main__":
    main()
