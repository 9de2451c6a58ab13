"""1F1B stage candidates as edges of an expanded chain, so the band search solves 1F1B exactly.

Under 1F1B (PipeDream-flush, ``planners.schedule``) stage s of an S-stage plan holds at most
S - s micro-batches' activations, so whether a stage fits memory depends on r = S - s, the
stages from it to the end, and a one-stage 1F1B plan is data parallelism that accumulates
gradients one micro-batch at a time. The layer chain 0..L does not know r; the *expanded
chain* does. Its nodes are (layer i, stages still to come r), for 1 <= i <= L and
0 <= r <= R, numbered

  node(0, *) = 0 (every plan starts there),  node(i, r) = 1 + (i - 1)(R + 1) + (R - r),

so node(L, 0) = L (R + 1) is the one sink, and a stage candidate of layers i..j priced with r
in flight is the edge node(i, r) -> node(j + 1, r - 1), which always points to a larger node.
The band search's ``CandidateArrays`` take first = its start node and last = its end node - 1,
so every plan is again a path 0 -> sink whose edges tile the nodes 0..sink - 1, and every
argument the search makes on the layer chain (shortest paths, one chosen edge covering every
position, the DP over nodes, the MILP's flow and cover rows) holds on this chain unchanged.

Every stage of a 1F1B plan has the same replica count d, so one expanded chain per d holds
its candidates. (With unequal counts, 6 of 81 small 1F1B schedules deadlock in the simulator,
and the runtime runs the same task lists; with equal ones replica r of every stage serves the
same micro-batches, d independent pipelines, which never deadlock.) A plan has at most
min(max_functions // d, L) stages, and a replica never holds more than the n = ceil(M / d)
micro-batches it owns, so R = min(n, max_functions // d, L); when n is the smaller, the state
r = R stands for "R or more stages to come" and gets the extra edges node(i, R) ->
node(j + 1, R), priced with R in flight, which is exact there. Each edge is kept only when the
layers left can hold the stages to come, and the dominance filter of
``stage_grid.kept_columns`` runs per (interval, r).
"""

from __future__ import annotations

import numpy as np

from planners.bounds import IntArray
from planners.problem import ANY_SCHEDULE, Problem
from planners.stage_grid import (
    CandidateGrid,
    Columns,
    assemble,
    candidate_grid,
    kept_columns,
    stage_configs,
)

__all__: list[str] = []  # internal to planners.bands and planners.diagnosis


def max_stages(problem: Problem) -> int | None:
    """The most stages a 1F1B plan of ``problem`` may have: 1 for ``schedule="any"`` (one-stage
    1F1B, accumulating data parallelism, is the one 1F1B shape whose closed form equals the
    simulator; planners/README.md), else None (no limit)."""
    return 1 if problem.schedule == ANY_SCHEDULE else None


def depth(problem: Problem, micro_batch: int, replicas: int) -> tuple[int, bool]:
    """(R, whether r = R means "R or more"): the largest number of stages to come the
    expanded chain of ``micro_batch`` on ``replicas`` replicas per stage tells apart."""
    L, M = problem.profile.num_layers, problem.global_batch // micro_batch
    n = -(-M // replicas)  # micro-batches a replica owns, the most it ever holds
    most = min(problem.max_functions // replicas, L, max_stages(problem) or L)
    return min(n, most), n < most


def candidate_grid_1f1b(problem: Problem, micro_batch: int, replicas: int) -> CandidateGrid:
    """Every non-dominated 1F1B stage candidate of ``micro_batch`` on ``replicas`` replicas,
    as edges of the expanded chain (``nodes`` = its sink, ``layers`` = each candidate's
    layers): stages to come r, then first layer, last layer and memory."""
    L = problem.profile.num_layers
    R, loops = depth(problem, micro_batch, replicas)

    def node(i: IntArray, r: int) -> IntArray:
        return np.where(i == 0, 0, 1 + (i - 1) * (R + 1) + (R - r))

    parts: list[Columns] = []
    layers: list[tuple[IntArray, IntArray]] = []
    for r in range(1, R + 1):
        cols = kept_columns(problem, stage_configs(problem, micro_batch, replicas, r, "1f1b"),
                            replicas)
        i, j = cols["first"], cols["last"]
        edges: list[tuple[IntArray, IntArray]] = []  # (rows kept, their end nodes)
        if r == 1:
            alone = R == 1 and not loops  # plans of one stage: it starts at layer 0
            rows = np.flatnonzero((j == L - 1) & ((i == 0) | (not alone)))
            edges.append((rows, np.full(len(rows), L * (R + 1))))
        else:  # the r - 1 stages to come need r - 1 layers after j
            rows = np.flatnonzero(j <= L - r)
            edges.append((rows, node(j[rows] + 1, r - 1)))
        if loops and r == R:  # R or more to come: R or more after this stage too
            rows = np.flatnonzero(j <= L - 1 - R)
            edges.append((rows, node(j[rows] + 1, R)))
        for rows, end in edges:
            part = {key: col[rows] for key, col in cols.items()}
            part["first"], part["last"] = node(i[rows], r), end - 1
            parts.append(part)
            layers.append((i[rows], j[rows]))
    firsts = [a for a, _ in layers]
    lasts = [b for _, b in layers]
    cat = (np.concatenate(firsts).astype(np.int64) if firsts else np.zeros(0, np.int64),
           np.concatenate(lasts).astype(np.int64) if lasts else np.zeros(0, np.int64))
    return assemble(parts, "1f1b", L * (R + 1), cat)


def grids(problem: Problem, micro_batch: int) -> list[CandidateGrid]:
    """The candidate grids of ``micro_batch`` for every schedule the problem allows: one for
    FuncPipe's order, one per replica count for 1F1B."""
    out: list[CandidateGrid] = []
    for schedule in problem.schedules:
        if schedule == "funcpipe":
            out.append(candidate_grid(problem, micro_batch))
        else:
            out += [candidate_grid_1f1b(problem, micro_batch, d)
                    for d in problem.replicas_for(micro_batch)]
    return out
