"""Why a problem has no plan: messages that name the binding limit and its fix.

``structural_infeasibility`` finds the limits no objective can get around (no replica option
fits the micro-batches, a layer fits no memory, every plan needs more than max_functions
functions); ``explain_infeasible`` adds the generic message when none of them binds.
``planners.miqp`` raises them; budgets and deadlines are explained there, since quoting the
fastest or cheapest plan needs the solver.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from planners.bounds import shortest_paths
from planners.cost import StageModel
from planners.errors import InfeasibleError
from planners.grid_1f1b import grids
from planners.problem import Problem

__all__ = ["explain_infeasible", "min_functions", "structural_infeasibility"]


def min_functions(problem: Problem, micro_batch: int) -> int | None:
    """The fewest functions any plan of ``micro_batch`` needs (shortest path on d_v over the
    candidates, whatever max_functions is); None when no plan fits memory at all."""
    L = problem.profile.num_layers
    relaxed = dataclasses.replace(problem, max_functions=max(problem.replica_options) * L)
    fewest = math.inf
    for grid in grids(relaxed, micro_batch):  # every schedule the problem allows
        c, sink = grid.arrays, grid.sink(L)
        fewest = min(fewest, float(shortest_paths(sink, c.first, c.last,
                                                  c.replicas.astype(np.float64))[0][sink]))
    return None if math.isinf(fewest) else int(fewest)


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
        held = 1 if "1f1b" in problem.schedules else None  # 1F1B's last stage holds one
        for b in problem.valid_micro_batches:
            model = StageModel(problem, b)
            for d in problem.replicas_for(b):
                for mode in model.dots.modes(problem, layer_index, layer_index):
                    need = model.terms(layer_index, layer_index, plat.max_memory_mb, d,
                                       mode, held).peak_mb
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
            "allow recompute or dots mode, or lower runtime_base_mb/safety_margin_mb if "
            "measured lower")
    return None
