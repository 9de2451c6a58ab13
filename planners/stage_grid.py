"""Every stage candidate of one micro-batch size at once, priced in numpy.

``candidate_grid`` computes what ``planners.candidates.candidates`` computes one configuration
at a time (``cost.StageModel.fit`` over every interval i..j, memory m and replica count d, then
the dominance filter per (i, j, d)) as whole arrays, in the same order and with the same
floating-point operations in the same order, so its ``CandidateArrays`` equal
``candidate_arrays(problem, candidates(problem, b))`` bit for bit (tested). The band search
uses it: building ~10^5 ``Candidate`` objects and reading them back costs seconds at 60 layer
groups; a ``CandidateGrid`` builds a ``StagePlan`` only for the stages of a plan.

Notation: L layers; G = L (L + 1) / 2 intervals (i <= j, i-major); K memory options; arrays of
one replica count are (G, K) before the fit and dominance filters, (V,) after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from planners.bounds import BoolArray, CandidateArrays, FloatArray, IntArray
from planners.cost import MIB, StageModel, checkpoint_dollars, checkpoint_puts
from planners.cpu_share import compute_factors
from planners.plans import StagePlan
from planners.problem import MODES, Problem

__all__: list[str] = []  # internal to planners.bands and planners.grid_1f1b


@dataclass(frozen=True)
class CandidateGrid:
    """The candidates of one micro-batch size: MILP data plus what a ``StagePlan`` needs.

    Attributes:
      arrays: the MILP data (``CandidateArrays``), entry v is candidate v.
      memory_mb: m_v, MB.
      mode: candidate v's mode, an index into ``MODES``.
      schedule: the schedule every plan over these candidates runs.
      nodes: None: ``arrays.first``/``last`` are layers (edges i -> j + 1 of the chain 0..L);
        else they are nodes of an expanded chain 0..nodes (``planners.grid_1f1b``).
      layers: with ``nodes``, each candidate's first and last layer.
    """

    arrays: CandidateArrays
    memory_mb: IntArray
    mode: IntArray
    schedule: str = "funcpipe"
    nodes: int | None = None
    layers: tuple[IntArray, IntArray] | None = None

    def __len__(self) -> int:
        return len(self.arrays)

    def sink(self, L: int) -> int:
        """The last node of the chain the candidates' edges run on: L for the layer chain,
        ``nodes`` for an expanded one (``planners.grid_1f1b``)."""
        return L if self.nodes is None else self.nodes

    def stage(self, v: int) -> StagePlan:
        """Candidate v as a stage of a plan."""
        c = self.arrays
        first, last = (c.first, c.last) if self.layers is None else self.layers
        return StagePlan(int(first[v]), int(last[v]), int(self.memory_mb[v]),
                         int(c.replicas[v]), MODES[int(self.mode[v])])


def _sync(w: FloatArray, d: int, up: float, down: float, lat: float) -> FloatArray:
    """``cost.sync_seconds`` over an array of gradient sizes (same operations)."""
    if d <= 1:
        return np.zeros_like(w)
    chunk = w / d
    u, v = chunk / up, chunk / down
    return (d - 1) * np.maximum(u, v) + np.minimum(u, v) + np.maximum(u, lat) + (d - 1) * v \
        + 2 * lat


class StageConfigs(NamedTuple):
    """Every (interval, memory) configuration of one replica count for one micro-batch size,
    before the dominance filter: what ``StageModel.fit`` returns for each, as arrays.

    Attributes:
      first, last: (G,) the intervals i..j, i-major (``row`` finds one).
      fits: (G, K) whether the configuration fits in some allowed mode.
      mode: (G, K) the mode it runs in (``StageModel.fit``'s), an index into ``MODES``; -1
        where it does not fit.
      fill, a_fwd, a_bwd, tail: (G, K) fill_v, aF_v, aB_v, y_v in its mode, seconds.
      gb: (K,) d m / 1024, the GB of the stage's functions.
      puts, gets: (G,) requests per iteration of the stage (all replicas).
      life, window_factor: (G,) ``StageTerms.life`` and ``window_factor``.
    """

    first: IntArray
    last: IntArray
    fits: BoolArray
    mode: IntArray
    fill: FloatArray
    a_fwd: FloatArray
    a_bwd: FloatArray
    tail: FloatArray
    gb: FloatArray
    puts: FloatArray
    gets: IntArray
    life: FloatArray
    window_factor: FloatArray

    def row(self, i: int, j: int, L: int) -> int:
        """Row of interval i..j (inclusive) on a chain of L layers."""
        return i * L - i * (i - 1) // 2 + (j - i)


def stage_configs(problem: Problem, micro_batch: int, d: int, in_flight: int | None = None,
                  schedule: str = "funcpipe") -> StageConfigs:
    """``StageConfigs`` of ``micro_batch`` on ``d`` replicas, with the operations of
    ``StageModel.terms`` in the same order (so the same floats). ``in_flight``: micro-batches
    whose activations a replica holds (None: all n it owns, as ``StageModel.terms``). Under
    ``1f1b`` the one bottleneck term (n - 1) max(F + G, U^a + U^g, D^a + D^g) is ``a_fwd`` and
    ``a_bwd`` is 0, so the sums and maxima of ``cost.aggregate`` are unchanged."""
    model = StageModel(problem, micro_batch)
    prof, plat = problem.profile, problem.platform
    L, b, M = model.L, micro_batch, model.M
    lat, up, down = plat.request_latency_s, plat.uplink_bytes_per_s, plat.downlink_bytes_per_s
    mems = np.array(plat.memory_options_mb, dtype=np.int64)  # (K,)
    qr = [compute_factors(prof.reference_cpus, plat.cpus(m)) for m in plat.memory_options_mb]
    q, r = np.array([a for a, _ in qr]), np.array([b for _, b in qr])  # (K,) serial, parallel
    fwd_p, bwd_p = np.array(model.prefix_fwd), np.array(model.prefix_bwd)  # (L+1,)
    fwd_s, bwd_s = np.array(model.compute.fwd_serial), np.array(model.compute.bwd_serial)
    par_p, stash_p = np.array(model.prefix_params), np.array(model.prefix_stash)
    bound = np.array([layer.boundary_bytes_per_sample for layer in prof.layers])  # (L,)
    i, j = (a.astype(np.int64) for a in np.triu_indices(L))  # (G,) i-major, as the loops
    first, last = i == 0, j == L - 1
    in_bytes = np.where(first, prof.input_bytes_per_sample, bound[np.maximum(i - 1, 0)])
    x_in = b * in_bytes
    x_out = np.where(last, 0.0, b * bound[j])
    w = par_p[j + 1] - par_p[i]
    stash = b * (stash_p[j + 1] - stash_p[i])
    cached = problem.cached_input_bytes
    state = w * (1 + problem.optimizer_slots)
    life = plat.timeout_s - plat.cold_start_s - ((state / up + lat) + (state / down + lat))
    with np.errstate(divide="ignore"):
        window_factor = np.where(life > 0, plat.timeout_s / life, np.inf)
    dataset = np.where(first, problem.stage0_data_bytes, 0.0)
    fwd = (q[None, :] * (fwd_s[j + 1] - fwd_s[i])[:, None]
           + r[None, :] * (fwd_p[j + 1] - fwd_p[i])[:, None])  # (G, K)
    bwd_base = (q[None, :] * (bwd_s[j + 1] - bwd_s[i])[:, None]
                + r[None, :] * (bwd_p[j + 1] - bwd_p[i])[:, None])
    act_down = np.where(first & (cached is not None), 0.0, x_in / down + lat)[:, None]
    act_up = np.where(last, 0.0, x_out / up + lat)[:, None]
    grad_down = np.where(last, 0.0, x_out / down + lat)[:, None]
    grad_up = np.where(first, 0.0, x_in / up + lat)[:, None]
    slots = 2 + problem.optimizer_slots
    n = -(-M // d)
    held = n if in_flight is None else min(in_flight, n)
    fixed = (w * slots + (2 * w if d > 1 else 0.0))[:, None]

    def peak(acts: FloatArray) -> FloatArray:
        return (fixed + acts + dataset[:, None] + (2 * (x_in + x_out))[:, None]) / MIB \
            + model.fixed_mb

    # StageModel.fit: the allowed mode that fits with the smallest backward, in MODES order
    dots = b * (np.array(model.dots.stash)[j + 1] - np.array(model.dots.stash)[i])
    has_dots = np.array(model.dots.missing)[j + 1] == np.array(model.dots.missing)[i]
    dots_bwd, dots_bwd_s = np.array(model.dots.bwd), np.array(model.dots.bwd_serial)
    by_mode = [  # (G, K) backward and whether it may run and fits, per mode of MODES
        (bwd_base + 0.0, peak(np.broadcast_to((held * stash)[:, None], fwd.shape))
         <= mems[None, :]),
        (q[None, :] * (dots_bwd_s[j + 1] - dots_bwd_s[i])[:, None]
         + r[None, :] * (dots_bwd[j + 1] - dots_bwd[i])[:, None],
         (problem.allow_dots & has_dots)[:, None]
         & (peak(np.broadcast_to((held * dots + np.maximum(stash - dots, 0.0))[:, None],
                                 fwd.shape)) <= mems[None, :])),
        (bwd_base + fwd, problem.allow_recompute
         & (peak(np.broadcast_to((held * x_in + stash)[:, None], fwd.shape)) <= mems[None, :])),
    ]
    mode = np.full(fwd.shape, -1, dtype=np.int64)
    bwd = bwd_base + 0.0  # where nothing fits: the stash backward (unused)
    for k, (bwd_k, ok_k) in enumerate(by_mode):
        better = ok_k & ((mode < 0) | (bwd_k < bwd))
        mode, bwd = np.where(better, k, mode), np.where(better, bwd_k, bwd)
    update = r[None, :] * w[:, None] * problem.update_seconds_per_byte
    sync_puts = d * (d + 2) if d > 1 else 0
    sync_gets = 2 * d * (d - 1)
    not_first, not_last = (~first).astype(np.int64), (~last).astype(np.int64)
    reads = (not_first if cached is not None else np.ones_like(not_first))
    if schedule == "1f1b":
        a_fwd = (n - 1) * np.maximum(np.maximum(fwd + bwd, act_up + grad_up),
                                     act_down + grad_down)
        a_bwd = np.zeros_like(a_fwd)
    else:
        a_fwd = (n - 1) * np.maximum(np.maximum(fwd, act_up), act_down)
        a_bwd = (n - 1) * np.maximum(np.maximum(bwd, grad_up), grad_down)
    return StageConfigs(
        first=i, last=j, fits=mode >= 0, mode=mode,
        fill=(act_down + fwd + act_up) + (grad_down + bwd + grad_up),
        a_fwd=a_fwd, a_bwd=a_bwd,
        tail=_sync(w, d, up, down, lat)[:, None] + update,
        gb=d * mems / 1024,
        puts=M * (not_last + not_first) + sync_puts + d * last.astype(np.int64)
        + checkpoint_puts(problem),
        gets=M * (reads + not_last) + sync_gets, life=life, window_factor=window_factor)


def candidate_grid(problem: Problem, micro_batch: int) -> CandidateGrid:
    """All non-dominated stage candidates of ``micro_batch`` under FuncPipe's schedule, as
    ``candidates`` orders them (replicas, then first layer, then last layer, then memory).
    ``planners.grid_1f1b`` builds the 1F1B ones."""
    return assemble([kept_columns(problem, stage_configs(problem, micro_batch, d), d)
                     for d in problem.replicas_for(micro_batch)])


Columns = dict[str, NDArray[Any]]  # first, last, fill, a_fwd, a_bwd, tail, replicas, rate,
# req, life (the ``CandidateArrays`` fields), mem and mode (the grid's): one per candidate


def kept_columns(problem: Problem, cfg: StageConfigs, d: int) -> Columns:
    """The configurations of ``cfg`` (replica count d) that fit and that no other of the same
    interval dominates (no more GB, no slower in any term), as ``Columns``, in
    row-major (interval, memory) order."""
    plat = problem.platform
    mems = np.array(plat.memory_options_mb, dtype=np.int64)  # (K,)
    i, j, fits, mode = cfg.first, cfg.last, cfg.fits, cfg.mode
    fill, a_fwd, a_bwd, tail = cfg.fill, cfg.a_fwd, cfg.a_bwd, cfg.tail
    gb = np.broadcast_to(cfg.gb[None, :], fill.shape)
    keys = np.stack([gb, fill, a_fwd, a_bwd, tail], axis=2)  # (G, K, 5)
    # o dominates k in its (i, j, d) group: both fit, o <= k everywhere and o != k
    le = (keys[:, :, None, :] <= keys[:, None, :, :]).all(axis=3)  # [g, o, k]
    ne = (keys[:, :, None, :] != keys[:, None, :, :]).any(axis=3)
    dominated = (le & ne & fits[:, :, None]).any(axis=1)
    keep = fits & ~dominated  # (G, K), row-major = the loops' order
    g_idx, k_idx = np.nonzero(keep)
    req_g = np.array([plat.request_dollars(p, g) for p, g in
                      zip(cfg.puts.tolist(), cfg.gets.tolist(), strict=True)])
    return {"first": i[g_idx], "last": j[g_idx], "fill": fill[g_idx, k_idx],
            "a_fwd": a_fwd[g_idx, k_idx], "a_bwd": a_bwd[g_idx, k_idx],
            "tail": tail[g_idx, k_idx], "replicas": np.full(len(g_idx), d, dtype=np.int64),
            "rate": window_rate(problem, cfg, d)[g_idx, k_idx], "req": req_g[g_idx],
            "life": cfg.life[g_idx], "mem": mems[k_idx],
            "mode": mode[g_idx, k_idx]}


def window_rate(problem: Problem, cfg: StageConfigs, d: int) -> FloatArray:
    """(G, K) ``StageTerms.rate`` of every configuration of ``cfg`` (d replicas), with its
    operations: (GB-s + invocations) x window factor + checkpoint requests / life."""
    plat = problem.platform
    rate_k = np.array([plat.compute_dollars(g, 1.0) + plat.handover_invocation_dollars(d, 1.0)
                       for g in cfg.gb.tolist()])  # (K,)
    life = cfg.life[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = rate_k[None, :] * cfg.window_factor[:, None] + checkpoint_dollars(plat, d) / life
    return np.where(life > 0, rate, np.inf)


def assemble(parts: list[Columns], schedule: str = "funcpipe", nodes: int | None = None,
             layers: tuple[IntArray, IntArray] | None = None) -> CandidateGrid:
    """One ``CandidateGrid`` of the candidates ``parts`` hold, in order."""

    def cat(key: str, dtype: type[np.generic]) -> NDArray[Any]:
        cols = [p[key] for p in parts]
        return np.concatenate(cols).astype(dtype) if cols else np.zeros(0, dtype)

    arrays = CandidateArrays(
        first=cat("first", np.int64), last=cat("last", np.int64), fill=cat("fill", np.float64),
        a_fwd=cat("a_fwd", np.float64), a_bwd=cat("a_bwd", np.float64),
        tail=cat("tail", np.float64), replicas=cat("replicas", np.int64),
        rate=cat("rate", np.float64), req=cat("req", np.float64), life=cat("life", np.float64))
    return CandidateGrid(arrays, cat("mem", np.int64), cat("mode", np.int64), schedule, nodes,
                         layers)
