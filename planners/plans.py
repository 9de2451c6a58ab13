"""Plans: what a planner decides, plus what the cost model predicts for it.

Layer ranges are inclusive: a stage holds layers ``first_layer .. last_layer``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from planners._json import JsonMixin, finite_or_none
from planners.errors import PlanError
from planners.problem import MODES, SCHEDULES

__all__ = ["Plan", "StagePlan"]


@dataclass(frozen=True)
class StagePlan(JsonMixin):
    """One pipeline stage.

    Attributes:
      first_layer, last_layer: inclusive layer indices of the stage.
      memory_mb: memory of each of the stage's functions, MB.
      replicas: data-parallel replicas d_s of the stage (one function each).
      mode: ``stash`` keeps residuals for backward; ``dots`` keeps only matmul and convolution
        outputs (and the stage input) and recomputes the elementwise ops during backward;
        ``recompute`` keeps only the stage input and reruns the forward during backward.
    """

    first_layer: int
    last_layer: int
    memory_mb: int
    replicas: int = 1
    mode: str = "stash"

    @property
    def num_layers(self) -> int:
        """Layers in the stage."""
        return self.last_layer - self.first_layer + 1

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagePlan:
        """Inverse of ``to_dict``."""
        return cls(**data)


@dataclass(frozen=True)
class Plan(JsonMixin):
    """A pipeline plan and its predictions.

    Attributes:
      stages: the stages in pipeline order; they cover layers 0..L-1 contiguously.
      micro_batch: samples per micro-batch b.
      global_batch: samples per iteration B (B / b micro-batches).
      schedule: ``funcpipe`` or ``1f1b``.
      iteration_seconds, iteration_dollars: cost-model predictions per iteration.
      peak_memory_mb: predicted peak memory of one function of each stage, MB.
      objective_value: the problem objective at this plan.
      method: planner that produced it; solve_seconds: its wall time, s.
      gap: relative optimality gap proven by the solver (0 = optimal; None: not an exact method).
      status: ``optimal``, ``feasible`` (time limit hit) or ``heuristic``.
      meta: free-form record (model, platform, coarsening groups, per-b solve log).
    """

    stages: tuple[StagePlan, ...]
    micro_batch: int
    global_batch: int
    schedule: str = "funcpipe"
    iteration_seconds: float | None = None
    iteration_dollars: float | None = None
    peak_memory_mb: tuple[float, ...] = ()
    objective_value: float | None = None
    method: str = ""
    solve_seconds: float = 0.0
    gap: float | None = None
    status: str = "heuristic"
    meta: dict[str, Any] = field(default_factory=dict[str, Any], hash=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "peak_memory_mb", tuple(self.peak_memory_mb))
        problems: list[str] = []
        if not self.stages:
            problems.append("a plan needs at least one stage")
        expected = 0
        for s, st in enumerate(self.stages):
            if st.first_layer != expected or st.last_layer < st.first_layer:
                problems.append(
                    f"stage {s} covers layers {st.first_layer}..{st.last_layer}; it must start "
                    f"at layer {expected} and end at or after it (ranges are inclusive)"
                )
            if st.replicas < 1 or st.memory_mb <= 0 or st.mode not in MODES:
                problems.append(f"stage {s}: replicas >= 1, memory_mb > 0, mode in {MODES}; "
                                f"got {st.replicas}, {st.memory_mb}, {st.mode!r}")
            expected = st.last_layer + 1
        if self.micro_batch < 1 or self.global_batch % self.micro_batch:
            problems.append(f"micro_batch {self.micro_batch} must divide global_batch "
                            f"{self.global_batch}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} unknown; choose one of {SCHEDULES}")
        if problems:
            raise PlanError("invalid plan:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def objective_or_inf(self) -> float:
        """``objective_value``, or +inf when the plan has not been scored (so an unscored plan
        never beats a scored one)."""
        return math.inf if self.objective_value is None else self.objective_value

    @property
    def cuts(self) -> tuple[int, ...]:
        """Layer indices at which stages 1.. start (what JaxPipe's splitter takes)."""
        return tuple(st.first_layer for st in self.stages[1:])

    @property
    def num_layers(self) -> int:
        """Layers covered by the plan."""
        return self.stages[-1].last_layer + 1

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per iteration M = B / b."""
        return self.global_batch // self.micro_batch

    @property
    def num_functions(self) -> int:
        """Functions (ranks) the plan runs: the sum of replicas."""
        return sum(st.replicas for st in self.stages)

    @property
    def stage_replicas(self) -> tuple[int, ...]:
        """Replica count of every stage."""
        return tuple(st.replicas for st in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "stages": [st.to_dict() for st in self.stages], "cuts": list(self.cuts),
            "micro_batch": self.micro_batch, "global_batch": self.global_batch,
            "schedule": self.schedule,
            "iteration_seconds": finite_or_none(self.iteration_seconds),
            "iteration_dollars": finite_or_none(self.iteration_dollars),
            "peak_memory_mb": list(self.peak_memory_mb),
            "objective_value": finite_or_none(self.objective_value),
            "method": self.method, "solve_seconds": self.solve_seconds, "gap": self.gap,
            "status": self.status, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of ``to_dict`` (the derived ``cuts`` key is ignored)."""
        kwargs = {k: v for k, v in data.items() if k != "cuts"}
        kwargs["stages"] = tuple(StagePlan.from_dict(d) for d in data["stages"])
        kwargs["peak_memory_mb"] = tuple(data.get("peak_memory_mb", ()))
        return cls(**kwargs)
