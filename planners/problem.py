"""The planning request: a profile, a platform, a batch, the search space and an objective."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from planners._json import JsonMixin, finite_or_none
from planners.errors import PlanError
from planners.platforms import Platform
from planners.profile import ModelProfile

__all__ = ["ANY_SCHEDULE", "MODES", "REL_TOL", "SCHEDULES", "Objective", "Problem"]

SCHEDULES = ("funcpipe", "1f1b")
# Problem.schedule value that lets the planner choose the schedule of each plan (a plan's own
# schedule is always one of SCHEDULES).
ANY_SCHEDULE = "any"
MODES = ("stash", "dots", "recompute")  # fastest first (``planners.modes``)
_KINDS = ("weighted", "budget", "deadline")
# The one tolerance rule of the library: a plan meets a budget (deadline) X when its predicted
# dollars (seconds) are <= X * (1 + REL_TOL). ``Objective.feasible`` applies it to scored plans;
# every bound and solver row uses ``Objective.budget_limit`` / ``deadline_limit``, the same X *
# (1 + REL_TOL), so a deadline 5e-10 below a plan's time still admits it everywhere and a
# deadline 2e-9 below excludes it everywhere.
REL_TOL = 1e-9


@dataclass(frozen=True)
class Objective(JsonMixin):
    """What a planner minimises.

    kinds:
      ``weighted``: minimise dollars + weight * seconds per iteration (weight in currency/s;
        weight 0 is pure cost).
      ``budget``: minimise seconds per iteration subject to dollars <= budget (budget None:
        minimise time, unconstrained).
      ``deadline``: minimise dollars per iteration subject to seconds <= deadline.

    The default weight, 1e-3 $/s, values one second like 60 GB of Lambda functions running for
    it; pass ``Objective(weight=...)`` to choose your own trade-off.
    """

    kind: str = "weighted"
    weight: float = 1e-3
    budget: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise PlanError(f"objective kind {self.kind!r} unknown; choose one of {_KINDS}")
        if self.kind == "weighted" and not self.weight >= 0:
            raise PlanError(f"weight must be >= 0 currency/s, got {self.weight}")
        if self.kind == "deadline" and not (self.deadline and self.deadline > 0):
            raise PlanError(f"a deadline objective needs deadline > 0 s, got {self.deadline}")
        if self.kind == "budget" and self.budget is not None and not self.budget > 0:
            raise PlanError(f"budget must be > 0 currency per iteration, got {self.budget}")

    @staticmethod
    def weighted(weight: float) -> Objective:
        """min dollars + weight * seconds."""
        return Objective("weighted", weight=weight)

    @staticmethod
    def min_time(budget: float | None = None) -> Objective:
        """min seconds s.t. dollars <= budget (None: no budget)."""
        return Objective("budget", weight=0.0, budget=budget)

    @staticmethod
    def min_cost(deadline: float) -> Objective:
        """min dollars s.t. seconds <= deadline."""
        return Objective("deadline", weight=0.0, deadline=deadline)

    def value(self, seconds: float, dollars: float) -> float:
        """The minimised quantity for a plan taking ``seconds`` and costing ``dollars``."""
        if self.kind == "weighted":
            return dollars + self.weight * seconds
        return seconds if self.kind == "budget" else dollars

    @property
    def budget_limit(self) -> float:
        """The most dollars a plan may cost under the tolerance rule, budget * (1 + REL_TOL)
        (inf without a budget, and for other kinds)."""
        if self.kind == "budget" and self.budget is not None:
            return self.budget * (1 + REL_TOL)
        return math.inf

    @property
    def deadline_limit(self) -> float:
        """The most seconds a plan may take under the tolerance rule, deadline * (1 + REL_TOL)
        (inf for other kinds)."""
        if self.kind == "deadline":
            return inf_if_none(self.deadline) * (1 + REL_TOL)
        return math.inf

    def feasible(self, seconds: float, dollars: float) -> bool:
        """Whether the budget or deadline holds under the tolerance rule (``REL_TOL``): dollars
        <= ``budget_limit`` and seconds <= ``deadline_limit``; always True for ``weighted``.

        Example:
          >>> Objective.min_cost(10.0).feasible(10.0 * (1 + 5e-10), 1.0)
          True
          >>> Objective.min_cost(10.0).feasible(10.0 * (1 + 2e-9), 1.0)
          False
        """
        return dollars <= self.budget_limit and seconds <= self.deadline_limit

    def describe(self) -> str:
        """One-line human description."""
        if self.kind == "weighted":
            return f"min cost + {self.weight:g} * time"
        if self.kind == "budget":
            return "min time" + ("" if self.budget is None else f" s.t. cost <= {self.budget:g}")
        return f"min cost s.t. time <= {self.deadline:g} s"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"kind": self.kind, "weight": self.weight, "budget": finite_or_none(self.budget),
                "deadline": finite_or_none(self.deadline)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Objective:
        """Inverse of ``to_dict``."""
        return cls(**data)


@dataclass(frozen=True)
class Problem(JsonMixin):
    """Everything a planner needs.

    Attributes:
      profile: the (usually coarsened) model profile.
      platform: memory options, CPU share, links and prices.
      global_batch: samples per iteration B.
      micro_batches: candidate micro-batch sizes b; those not dividing B are skipped.
      replica_options: candidate replica counts per stage d.
      max_functions: most functions (sum of replicas over stages) a plan may use; at most the
        platform's ``max_concurrency``, since every function of a plan runs at once.
      objective: what to minimise.
      optimizer_slots: optimizer state per parameter, in parameter-sized slots (Adam 2, SGD 0,
        momentum 1).
      schedule: micro-batch order, ``funcpipe`` (all forwards, then all backwards: every stage
        holds all its micro-batches' activations), ``1f1b`` (PipeDream-flush: stage s of S
        holds at most S - s; a one-stage 1F1B plan is data parallelism that accumulates
        gradients one micro-batch at a time), or ``any``: ``miqp``, ``exhaustive`` and
        ``data-parallel`` choose per plan among FuncPipe-ordered plans and one-stage 1F1B plans
        (``schedules``; multi-stage 1F1B plans stay out of ``any`` because the closed form
        misprices them by up to 40 % against the simulator, planners/README.md); the
        fixed-rule rivals (uniform, balanced, pipedream, maxload) keep ``funcpipe``.
      allow_recompute: whether a stage may keep only its inputs and recompute in backward.
      allow_dots: whether a stage may keep only its matmul and convolution outputs and
        recompute the elementwise ops in backward (``dots`` mode; only stages whose layers all
        have a dots profile).
      update_seconds_per_byte: optimizer update time per parameter byte at the reference CPU
        share, seconds/byte (1e-9: 1 GB/s); 0 makes updates free.
      cached_input_bytes: None: stage 0 reads every micro-batch's input from storage (FuncPipe,
        one GET per micro-batch). A number: stage 0 keeps the training set, this many bytes, in
        memory once read (JaxPipe's workers do), so its input costs no request or latency per
        micro-batch, and each of its replicas holds those bytes.
      checkpoint_every: None: a function checkpoints only when its window ends (the hand-over
        every plan pays). A number k: replica 0 of every stage also saves a checkpoint every k
        iterations inside its window (JaxPipe's workers do, ``jaxpipe train
        --checkpoint-every``, default 10), 4 PUTs each, so each stage pays 4 / k PUTs per
        iteration.
      input_cache_bytes: bytes of the training set a stage-0 function keeps while it streams
        (``cached_input_bytes`` None; JaxPipe's shard cache, ``jaxpipe train --data-cache-mb``):
        held in stage 0's memory; its reads are still counted per micro-batch.
    """

    profile: ModelProfile
    platform: Platform
    global_batch: int
    micro_batches: tuple[int, ...] = (1, 2, 4, 8)
    replica_options: tuple[int, ...] = (1, 2, 4, 8)
    max_functions: int = 32
    objective: Objective = field(default_factory=Objective)
    optimizer_slots: int = 2
    schedule: str = "funcpipe"
    allow_recompute: bool = True
    allow_dots: bool = True
    update_seconds_per_byte: float = 1e-9
    cached_input_bytes: float | None = None
    checkpoint_every: int | None = None
    input_cache_bytes: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "micro_batches", tuple(sorted(set(self.micro_batches))))
        object.__setattr__(self, "replica_options", tuple(sorted(set(self.replica_options))))
        problems: list[str] = []
        if self.global_batch < 1:
            problems.append(f"global_batch must be >= 1, got {self.global_batch}")
        if not self.micro_batches or min(self.micro_batches) < 1:
            problems.append(f"micro_batches must be >= 1, got {self.micro_batches}")
        elif not self.valid_micro_batches:
            problems.append(
                f"no micro-batch size in {self.micro_batches} divides global_batch "
                f"{self.global_batch}; add a divisor such as 1"
            )
        if not self.replica_options or min(self.replica_options) < 1:
            problems.append(f"replica_options must be >= 1, got {self.replica_options}")
        if self.max_functions < 1:
            problems.append(f"max_functions must be >= 1, got {self.max_functions}")
        elif self.max_functions > self.platform.max_concurrency:
            problems.append(
                f"max_functions {self.max_functions} exceeds {self.platform.name!r}'s "
                f"max_concurrency {self.platform.max_concurrency} (every function of a plan "
                "runs at once); lower max_functions or raise the platform's max_concurrency "
                "(your account's quota, in a platform override file)")
        if self.schedule not in (*SCHEDULES, ANY_SCHEDULE):
            problems.append(f"schedule {self.schedule!r} unknown; choose one of "
                            f"{(*SCHEDULES, ANY_SCHEDULE)}")
        if self.optimizer_slots < 0 or not self.update_seconds_per_byte >= 0:
            problems.append("optimizer_slots and update_seconds_per_byte must be >= 0")
        if self.cached_input_bytes is not None and not self.cached_input_bytes >= 0:
            problems.append(f"cached_input_bytes must be None or >= 0, got "
                            f"{self.cached_input_bytes}")
        if self.checkpoint_every is not None and not self.checkpoint_every >= 1:
            problems.append(f"checkpoint_every must be None or >= 1 iterations, got "
                            f"{self.checkpoint_every}")
        if not self.input_cache_bytes >= 0:
            problems.append(f"input_cache_bytes must be >= 0, got {self.input_cache_bytes}")
        if problems:
            raise PlanError("invalid problem:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def valid_micro_batches(self) -> tuple[int, ...]:
        """Candidate micro-batch sizes that divide the global batch."""
        return tuple(b for b in self.micro_batches if self.global_batch % b == 0)

    @property
    def stage0_data_bytes(self) -> float:
        """Bytes of training data each stage-0 function holds: the whole set when cached,
        else its streaming cache."""
        return self.input_cache_bytes if self.cached_input_bytes is None else \
            self.cached_input_bytes

    @property
    def schedules(self) -> tuple[str, ...]:
        """The schedules a plan may use: ``SCHEDULES`` for ``any``, else the one asked for."""
        return SCHEDULES if self.schedule == ANY_SCHEDULE else (self.schedule,)

    @property
    def rival_schedule(self) -> str:
        """The schedule of the fixed-rule rivals: the one asked for, ``funcpipe`` for ``any``."""
        return "funcpipe" if self.schedule == ANY_SCHEDULE else self.schedule

    def replicas_for(self, micro_batch: int) -> tuple[int, ...]:
        """Replica options usable with ``micro_batch``: d <= M and d <= max_functions."""
        m = self.global_batch // micro_batch
        return tuple(d for d in self.replica_options if d <= m and d <= self.max_functions)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "profile": self.profile.to_dict(), "platform": self.platform.to_dict(),
            "global_batch": self.global_batch, "micro_batches": list(self.micro_batches),
            "replica_options": list(self.replica_options), "max_functions": self.max_functions,
            "objective": self.objective.to_dict(), "optimizer_slots": self.optimizer_slots,
            "schedule": self.schedule, "allow_recompute": self.allow_recompute,
            "allow_dots": self.allow_dots,
            "update_seconds_per_byte": self.update_seconds_per_byte,
            "cached_input_bytes": self.cached_input_bytes,
            "checkpoint_every": self.checkpoint_every,
            "input_cache_bytes": self.input_cache_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        """Inverse of ``to_dict``."""
        kwargs = dict(data)
        kwargs["profile"] = ModelProfile.from_dict(data["profile"])
        kwargs["platform"] = Platform.from_dict(data["platform"])
        kwargs["objective"] = Objective.from_dict(data["objective"])
        kwargs["micro_batches"] = tuple(data["micro_batches"])
        kwargs["replica_options"] = tuple(data["replica_options"])
        return cls(**kwargs)


def inf_if_none(value: float | None) -> float:
    """None -> +inf (an absent budget or deadline)."""
    return math.inf if value is None else value
