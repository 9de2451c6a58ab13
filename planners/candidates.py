"""Stage candidates: every (layer interval, memory, replicas) configuration that fits memory.

A candidate is one binary of the MILP (``planners.miqp``): stage = layers first..last on
``replicas`` functions of ``memory_mb``, in stash mode if that fits, else recompute. Candidates
dominated by another of the same interval and replica count (no more GB, no slower in any time
term) are dropped; this never removes an optimal plan because every objective is monotone in
GB and in each time term. ``planners.stage_grid`` computes the same candidates in numpy, for
the band search; this one-at-a-time version serves the single MILP and is the grid's reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from planners.cost import MIB, StageModel, StageTerms
from planners.errors import PlanError
from planners.problem import Problem

__all__ = ["Candidate", "candidates"]


@dataclass(frozen=True)
class Candidate:
    """One stage configuration: layers first..last (inclusive) and its cost-model terms."""

    first: int
    last: int
    memory_mb: int
    replicas: int
    mode: str
    terms: StageTerms

    def key(self) -> tuple[float, ...]:
        """The quantities the objective depends on (smaller is better in every entry)."""
        t = self.terms
        return (t.gigabytes, t.fill_fwd + t.fill_bwd, (t.per_replica - 1) * t.period_fwd,
                (t.per_replica - 1) * t.period_bwd, t.sync + t.update)


def _dominates(b: tuple[float, ...], a: tuple[float, ...]) -> bool:
    """Whether key b is at least as good as key a in every objective term and differs."""
    return b != a and all(y <= x for x, y in zip(a, b, strict=True))


def candidates(problem: Problem, micro_batch: int) -> list[Candidate]:
    """All non-dominated stage candidates for micro-batch size ``micro_batch``.

    Raises:
      PlanError: the problem asks for the 1F1B schedule (its memory depends on the stage's
        position, which the interval formulation does not know).
    """
    if problem.schedule != "funcpipe":
        raise PlanError(f"the interval candidates model the 'funcpipe' schedule, not "
                        f"{problem.schedule!r}; plan with schedule='funcpipe' and re-score")
    model = StageModel(problem, micro_batch)
    plat = problem.platform
    mems = plat.memory_options_mb
    L, b = model.L, micro_batch
    slots = 2 + problem.optimizer_slots
    out: list[Candidate] = []
    for d in problem.replicas_for(micro_batch):
        for i in range(L):
            for j in range(i, L):
                w = model.param_bytes(i, j)
                stash = b * model.stash_bytes_per_sample(i, j)
                # lower bound on the peak that only grows with j: give up on longer intervals
                floor_mb = (w * slots + (2 * w if d > 1 else 0) + stash) / MIB + model.fixed_mb
                if floor_mb > mems[-1]:
                    break
                group = [Candidate(i, j, m, d, mode, t) for m in mems
                         if (fit := model.fit(i, j, m, d)) is not None for mode, t in [fit]]
                keys = [c.key() for c in group]
                out += [c for c, k in zip(group, keys, strict=True)
                        if not any(_dominates(o, k) for o in keys)]
    return out
