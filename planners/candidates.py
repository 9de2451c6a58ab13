"""Stage candidates: every (layer interval, memory, replicas) configuration that fits memory.

A candidate is one binary of the MILP (``planners.miqp``): stage = layers first..last on
``replicas`` functions of ``memory_mb``, in stash mode if that fits, else recompute. Candidates
dominated by another of the same interval and replica count (no more GB, no slower in any time
term) are dropped; this never removes an optimal plan because every objective is monotone in
GB and in each time term.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from planners.cost import MIB, StageModel, StageTerms
from planners.errors import InfeasibleError, PlanError
from planners.problem import Problem

__all__ = ["Candidate", "candidates", "explain_infeasible", "structural_infeasibility"]


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


def min_functions(problem: Problem, micro_batch: int) -> int | None:
    """The fewest functions any plan of ``micro_batch`` needs (shortest path on d_v over the
    candidates, whatever max_functions is); None when no plan fits memory at all."""
    L = problem.profile.num_layers
    relaxed = dataclasses.replace(problem, max_functions=max(problem.replica_options))
    fewest: list[float] = [0.0] + [math.inf] * L  # fewest functions covering layers 0..k-1
    for c in sorted(candidates(relaxed, micro_batch), key=lambda c: c.last):
        fewest[c.last + 1] = min(fewest[c.last + 1], fewest[c.first] + c.replicas)
    return None if math.isinf(fewest[L]) else int(fewest[L])


def structural_infeasibility(problem: Problem) -> InfeasibleError | None:
    """An InfeasibleError when no plan can exist whatever the objective: no replica option
    fits the micro-batches, a layer fits no memory, or every plan needs more than
    max_functions functions; None otherwise."""
    valid = problem.valid_micro_batches
    if not any(problem.replicas_for(b) for b in valid):
        counts = ", ".join(f"M = {problem.global_batch // b} at b = {b}" for b in valid)
        return InfeasibleError(
            f"no replica option in {problem.replica_options} is <= both the number of "
            f"micro-batches ({counts}) and max_functions {problem.max_functions}; fix: add "
            "replica option 1, or a smaller micro-batch size")
    memory = _memory_infeasibility(problem)
    if memory is not None:
        return memory
    needs = [(n, b) for b in valid if (n := min_functions(problem, b)) is not None]
    if needs and min(needs)[0] > problem.max_functions:
        n, b = min(needs)
        return InfeasibleError(
            f"every plan needs at least {n} functions (the fewest, at micro-batch {b}) but "
            f"max_functions is {problem.max_functions}; fix: raise max_functions to at least "
            f"{n}, or add larger memory options")
    return None


def explain_infeasible(problem: Problem) -> InfeasibleError:
    """``structural_infeasibility``, or (when no structural limit binds) the generic message
    that no chain of stages covers the layers within the limits."""
    found = structural_infeasibility(problem)
    if found is not None:
        return found
    plat = problem.platform
    return InfeasibleError(
        f"no chain of stages covers all {problem.profile.num_layers} layers within "
        f"{problem.max_functions} functions and {plat.max_memory_mb} MB per function; "
        "fix: raise max_functions or add replica options / larger memory options")


def _memory_infeasibility(problem: Problem) -> InfeasibleError | None:
    """An InfeasibleError naming the layers no configuration can hold, with the memory each
    needs at its most frugal setting (largest d, smallest b, recompute) and the fix."""
    plat = problem.platform
    worst: list[tuple[int, str, float, int, int, str]] = []  # layer, name, MB, b, d, mode
    for layer_index, layer in enumerate(problem.profile.layers):
        best: tuple[float, int, int, str] | None = None  # MB, b, d, mode
        for b in problem.valid_micro_batches:
            model = StageModel(problem, b)
            for d in problem.replicas_for(b):
                for mode in ("stash", "recompute") if problem.allow_recompute else ("stash",):
                    need = model.terms(layer_index, layer_index, plat.max_memory_mb, d,
                                       mode).peak_mb
                    if best is None or need < best[0]:
                        best = (need, b, d, mode)
        if best is not None and best[0] > plat.max_memory_mb:
            worst.append((layer_index, layer.name, *best))
    if worst:
        lines = [f"layer {i} ({name!r}) needs {need:.0f} MB even alone with micro-batch {b}, "
                 f"{d} replicas, {mode} mode" for i, name, need, b, d, mode in worst]
        return InfeasibleError(
            f"no plan fits: the largest memory option of {plat.name!r} is "
            f"{plat.max_memory_mb} MB but\n" + "\n".join(f"  - {x}" for x in lines) +
            "\nfix: add a larger memory option, smaller micro-batches, more replicas, "
            "allow recompute, or lower runtime_base_mb/safety_margin_mb if measured lower")
    return None
