"""The summary of a training run: losses, time and dollars measured against the predictions.

`train` returns a `Summary` and stores `Summary.to_dict()` as `jobs/<id>/results/summary.json`
(the key layout of that file is the one `to_dict` writes). Measured values come from the
workers' own metrics (`RankMetrics`); predictions from the cost model and the simulator for the
same plan and planning problem. A run without a planning problem (a resumed job) has no
predictions: those fields are None and absent from the JSON.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxpipe.runtime.billing import measured_dollars, steady_dollars
from jaxpipe.runtime.driver import Progress
from jaxpipe.runtime.job import JobSpec
from jaxpipe.runtime.metrics import RankMetrics
from planners import Plan, Problem, cost, simulate

__all__ = ["Summary", "iteration_period", "summarize"]

_OPTIONAL = ("predicted_seconds_per_iteration", "predicted_dollars_per_iteration",
             "simulated_seconds_per_iteration", "test_accuracy")


@dataclass(frozen=True)
class Summary:
    """What one run of a job measured, and what was predicted for it.

    Attributes:
      job, model: the job id and the zoo model.
      plan: the plan it ran.
      losses: mean loss of every iteration run, in order.
      measured_seconds_per_iteration: steady time per iteration (`iteration_period`), in
        seconds; None if no iteration ran.
      measured_dollars_per_iteration: one steady iteration at the platform's prices
        (`billing.steady_dollars`); None without the seconds.
      measured_run_dollars_per_iteration: the whole run's bill over its iterations, cold starts
        and compilation included (`billing.measured_dollars`).
      wall_seconds: the driver's wall time of the run.
      restarts, handovers, invocations: the driver's counts.
      cold_start_seconds: every invocation's cold start, in seconds.
      peak_rss_mb: rank -> its peak resident memory, in MB (its last invocation's).
      predicted_seconds_per_iteration, predicted_dollars_per_iteration: the cost model's.
      simulated_seconds_per_iteration: the simulator's replay of the plan's schedule.
      test_accuracy: the final parameters on the held-out set (models with a test set).
      eval_metrics: iteration t -> `metrics_fn` of the evaluation data under the variables
        before iteration t (`jaxpipe.runtime.evaluation`); the last t is the trained model.
    """

    job: str
    model: str
    plan: Plan
    losses: tuple[float, ...]
    measured_seconds_per_iteration: float | None
    measured_dollars_per_iteration: float | None
    measured_run_dollars_per_iteration: float
    wall_seconds: float
    restarts: int
    handovers: int
    invocations: int
    cold_start_seconds: tuple[float, ...]
    peak_rss_mb: dict[int, float] = field(hash=False)
    predicted_seconds_per_iteration: float | None = None
    predicted_dollars_per_iteration: float | None = None
    simulated_seconds_per_iteration: float | None = None
    test_accuracy: float | None = None
    eval_metrics: dict[int, dict[str, float]] = field(default_factory=dict, hash=False)

    @property
    def final_metrics(self) -> dict[str, float]:
        """The trained model's metrics ({} without evaluation data)."""
        return self.eval_metrics[max(self.eval_metrics)] if self.eval_metrics else {}

    @property
    def has_predictions(self) -> bool:
        """Whether the cost model and the simulator were asked (False for a resumed job)."""
        return self.predicted_seconds_per_iteration is not None

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON's keys; predictions and accuracy only when present."""
        data: dict[str, Any] = {
            "job": self.job, "model": self.model, "plan": self.plan.to_dict(),
            "losses": list(self.losses),
            "measured_seconds_per_iteration": self.measured_seconds_per_iteration,
            "measured_dollars_per_iteration": self.measured_dollars_per_iteration,
            "measured_run_dollars_per_iteration": self.measured_run_dollars_per_iteration,
            "wall_seconds": self.wall_seconds, "restarts": self.restarts,
            "handovers": self.handovers, "invocations": self.invocations,
            "cold_start_seconds": list(self.cold_start_seconds),
            "peak_rss_mb": dict(self.peak_rss_mb),
        }
        for name in _OPTIONAL:
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.eval_metrics:
            data["eval_metrics"] = {str(t): dict(m) for t, m in self.eval_metrics.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Inverse of `to_dict` (JSON turns the `peak_rss_mb` ranks into strings)."""
        return cls(
            job=data["job"], model=data["model"], plan=Plan.from_dict(data["plan"]),
            losses=tuple(data["losses"]),
            measured_seconds_per_iteration=data["measured_seconds_per_iteration"],
            measured_dollars_per_iteration=data["measured_dollars_per_iteration"],
            measured_run_dollars_per_iteration=data["measured_run_dollars_per_iteration"],
            wall_seconds=data["wall_seconds"], restarts=data["restarts"],
            handovers=data["handovers"], invocations=data["invocations"],
            cold_start_seconds=tuple(data["cold_start_seconds"]),
            peak_rss_mb={int(r): float(mb) for r, mb in data["peak_rss_mb"].items()},
            eval_metrics={int(t): {k: float(v) for k, v in m.items()}
                          for t, m in data.get("eval_metrics", {}).items()},
            **{name: data.get(name) for name in _OPTIONAL})


def summarize(spec: JobSpec, metrics: Sequence[RankMetrics], progress: Progress, wall: float,
              problem: Problem | None = None, test_accuracy: float | None = None,
              eval_metrics: dict[int, dict[str, float]] | None = None) -> Summary:
    """The `Summary` of a run from every invocation's metrics and the driver's progress.

    Args:
      spec: the job.
      metrics: every invocation of every rank of the job.
      progress: what `driver.run_job` returned.
      wall: the run's wall time, in seconds.
      problem: the planning problem to predict with; None for no predictions.
      test_accuracy: the final parameters' accuracy, if the model has a test set.
      eval_metrics: {t: metrics} of the evaluation data, if there is any.
    """
    plan, platform = spec.plan, spec.platform
    seconds = iteration_period(metrics) or (
        float(np.median(list(progress.times.values()))) if progress.times else None)
    iterations = max(len(progress.losses), 1)
    predictions: dict[str, float] = {}
    if problem is not None:
        predictions = {
            "predicted_seconds_per_iteration": cost.iteration_time(plan, problem),
            "predicted_dollars_per_iteration": cost.iteration_cost(plan, problem),
            "simulated_seconds_per_iteration": simulate.simulate(plan, problem).iteration_seconds}
    return Summary(
        job=spec.job_id, model=spec.model, plan=plan,
        losses=tuple(progress.losses[t] for t in sorted(progress.losses)),
        measured_seconds_per_iteration=seconds,
        measured_dollars_per_iteration=steady_dollars(platform, plan, metrics, seconds,
                                                      iterations) if seconds else None,
        measured_run_dollars_per_iteration=measured_dollars(platform, metrics) / iterations,
        wall_seconds=wall, restarts=progress.restarts, handovers=progress.handovers,
        invocations=progress.invocations,
        cold_start_seconds=tuple(m.cold_start_s for m in metrics),
        peak_rss_mb={m.rank: m.peak_rss_mb for m in metrics},
        test_accuracy=test_accuracy, eval_metrics=dict(eval_metrics or {}), **predictions)


def iteration_period(metrics: Sequence[RankMetrics]) -> float | None:
    """Median time between the ends of successive iterations, from the workers' own clocks.

    An iteration ends when its last rank finishes it, in the latest attempt that ran it (a
    failed attempt's records of t never count). The first gap is left out: it still includes
    warm-up (first calls, first shard reads).
    """
    latest: dict[int, int] = {}
    for m in metrics:
        for it in m.iterations:
            latest[it.iteration] = max(latest.get(it.iteration, m.attempt), m.attempt)
    ends: dict[int, float] = {}
    for m in metrics:
        for it in m.iterations:
            if m.attempt == latest[it.iteration]:
                ends[it.iteration] = max(ends.get(it.iteration, 0.0), it.end)
    ts = sorted(ends)
    gaps = [ends[b] - ends[a] for a, b in itertools.pairwise(ts) if b == a + 1]
    steady = gaps[1:] or gaps
    return float(np.median(steady)) if steady else None
