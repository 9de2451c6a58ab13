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
from planners.cost import MIB, StageModel
from planners.errors import PlanError
from planners.plans import StagePlan
from planners.problem import Problem

__all__: list[str] = []  # internal to planners.bands


@dataclass(frozen=True)
class CandidateGrid:
    """The candidates of one micro-batch size: MILP data plus what a ``StagePlan`` needs.

    Attributes:
      arrays: the MILP data (``CandidateArrays``), entry v is candidate v.
      memory_mb: m_v, MB.
      recompute: whether candidate v runs in recompute mode (else stash).
    """

    arrays: CandidateArrays
    memory_mb: IntArray
    recompute: BoolArray

    def __len__(self) -> int:
        return len(self.arrays)

    def stage(self, v: int) -> StagePlan:
        """Candidate v as a stage of a plan."""
        c = self.arrays
        return StagePlan(int(c.first[v]), int(c.last[v]), int(self.memory_mb[v]),
                         int(c.replicas[v]), "recompute" if self.recompute[v] else "stash")


def _sync(w: FloatArray, d: int, up: float, down: float, lat: float) -> FloatArray:
    """``cost.sync_seconds`` over an array of gradient sizes (same operations)."""
    if d <= 1:
        return np.zeros_like(w)
    chunk = w / d
    pu, pd = chunk / up + lat, chunk / down + lat
    return (d - 1) * np.maximum(pu, pd) + np.minimum(pu, pd) + pu + (d - 1) * pd


class StageConfigs(NamedTuple):
    """Every (interval, memory) configuration of one replica count for one micro-batch size,
    before the dominance filter: what ``StageModel.fit`` returns for each, as arrays.

    Attributes:
      first, last: (G,) the intervals i..j, i-major (``row`` finds one).
      fits: (G, K) whether the configuration fits in stash or (allowed) recompute mode.
      recompute: (G, K) whether it runs in recompute mode.
      fill, a_fwd, a_bwd, tail: (G, K) fill_v, aF_v, aB_v, y_v in its mode, seconds.
      gb: (K,) d m / 1024, the GB of the stage's functions.
      puts, gets: (G,) requests per iteration of the stage (all replicas).
    """

    first: IntArray
    last: IntArray
    fits: BoolArray
    recompute: BoolArray
    fill: FloatArray
    a_fwd: FloatArray
    a_bwd: FloatArray
    tail: FloatArray
    gb: FloatArray
    puts: IntArray
    gets: IntArray

    def row(self, i: int, j: int, L: int) -> int:
        """Row of interval i..j (inclusive) on a chain of L layers."""
        return i * L - i * (i - 1) // 2 + (j - i)


def stage_configs(problem: Problem, micro_batch: int, d: int) -> StageConfigs:
    """``StageConfigs`` of ``micro_batch`` on ``d`` replicas, with the operations of
    ``StageModel.terms`` in the same order (so the same floats)."""
    model = StageModel(problem, micro_batch)
    prof, plat = problem.profile, problem.platform
    L, b, M = model.L, micro_batch, model.M
    lat, up, down = plat.request_latency_s, plat.uplink_bytes_per_s, plat.downlink_bytes_per_s
    mems = np.array(plat.memory_options_mb, dtype=np.int64)  # (K,)
    r = np.array([prof.reference_cpus / plat.cpus(m) for m in plat.memory_options_mb])  # (K,)
    fwd_p, bwd_p = np.array(model.prefix_fwd), np.array(model.prefix_bwd)  # (L+1,)
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
    dataset = np.where(first, cached or 0.0, 0.0)
    fwd = r[None, :] * (fwd_p[j + 1] - fwd_p[i])[:, None]  # (G, K)
    bwd_base = r[None, :] * (bwd_p[j + 1] - bwd_p[i])[:, None]
    act_down = np.where(first & (cached is not None), 0.0, x_in / down + lat)[:, None]
    act_up = np.where(last, 0.0, x_out / up + lat)[:, None]
    grad_down = np.where(last, 0.0, x_out / down + lat)[:, None]
    grad_up = np.where(first, 0.0, x_in / up + lat)[:, None]
    slots = 2 + problem.optimizer_slots
    n = -(-M // d)
    fixed = (w * slots + (2 * w if d > 1 else 0.0))[:, None]

    def peak(acts: FloatArray) -> FloatArray:
        return (fixed + acts + dataset[:, None] + (2 * (x_in + x_out))[:, None]) / MIB \
            + model.fixed_mb

    ok_stash = peak(np.broadcast_to((n * stash)[:, None], fwd.shape)) <= mems[None, :]
    peak_rec = peak(np.broadcast_to((n * x_in + stash)[:, None], fwd.shape))
    rec = ~ok_stash & problem.allow_recompute & (peak_rec <= mems[None, :])
    bwd = np.where(rec, bwd_base + fwd, bwd_base + 0.0)
    update = r[None, :] * w[:, None] * problem.update_seconds_per_byte
    sync_puts = d * (d + 2) if d > 1 else 0
    sync_gets = 2 * d * (d - 1)
    not_first, not_last = (~first).astype(np.int64), (~last).astype(np.int64)
    reads = (not_first if cached is not None else np.ones_like(not_first))
    return StageConfigs(
        first=i, last=j, fits=ok_stash | rec, recompute=rec,
        fill=(act_down + fwd + act_up) + (grad_down + bwd + grad_up),
        a_fwd=(n - 1) * np.maximum(np.maximum(fwd, act_up), act_down),
        a_bwd=(n - 1) * np.maximum(np.maximum(bwd, grad_up), grad_down),
        tail=_sync(w, d, up, down, lat)[:, None] + update,
        gb=d * mems / 1024,
        puts=M * (not_last + not_first) + sync_puts + d * last.astype(np.int64),
        gets=M * (reads + not_last) + sync_gets)


def candidate_grid(problem: Problem, micro_batch: int) -> CandidateGrid:
    """All non-dominated stage candidates of ``micro_batch``, as ``candidates`` orders them
    (replicas, then first layer, then last layer, then memory).

    Raises:
      PlanError: the problem asks for the 1F1B schedule (as ``candidates``).
    """
    if problem.schedule != "funcpipe":
        raise PlanError(f"the interval candidates model the 'funcpipe' schedule, not "
                        f"{problem.schedule!r}; plan with schedule='funcpipe' and re-score")
    plat = problem.platform
    mems = np.array(plat.memory_options_mb, dtype=np.int64)  # (K,)
    out: dict[str, list[NDArray[Any]]] = {k: [] for k in (
        "first", "last", "fill", "a_fwd", "a_bwd", "tail", "replicas", "rate", "req", "mem",
        "rec")}
    for d in problem.replicas_for(micro_batch):
        cfg = stage_configs(problem, micro_batch, d)
        i, j, fits, rec = cfg.first, cfg.last, cfg.fits, cfg.recompute
        fill, a_fwd, a_bwd, tail = cfg.fill, cfg.a_fwd, cfg.a_bwd, cfg.tail
        gb = np.broadcast_to(cfg.gb[None, :], fill.shape)
        keys = np.stack([gb, fill, a_fwd, a_bwd, tail], axis=2)  # (G, K, 5)
        # o dominates k in its (i, j, d) group: both fit, o <= k everywhere and o != k
        le = (keys[:, :, None, :] <= keys[:, None, :, :]).all(axis=3)  # [g, o, k]
        ne = (keys[:, :, None, :] != keys[:, None, :, :]).any(axis=3)
        dominated = (le & ne & fits[:, :, None]).any(axis=1)
        keep = fits & ~dominated  # (G, K), row-major = the loops' order
        g_idx, k_idx = np.nonzero(keep)
        rate_k = np.array([plat.compute_dollars(d * m / 1024, 1.0)
                           + plat.handover_invocation_dollars(d, 1.0)
                           for m in plat.memory_options_mb])
        req_g = np.array([plat.request_dollars(p, g) for p, g in
                          zip(cfg.puts.tolist(), cfg.gets.tolist(), strict=True)])
        out["first"].append(i[g_idx])
        out["last"].append(j[g_idx])
        out["fill"].append(fill[g_idx, k_idx])
        out["a_fwd"].append(a_fwd[g_idx, k_idx])
        out["a_bwd"].append(a_bwd[g_idx, k_idx])
        out["tail"].append(tail[g_idx, k_idx])
        out["replicas"].append(np.full(len(g_idx), d, dtype=np.int64))
        out["rate"].append(rate_k[k_idx])
        out["req"].append(req_g[g_idx])
        out["mem"].append(mems[k_idx])
        out["rec"].append(rec[g_idx, k_idx])

    def cat(key: str, dtype: type[np.generic]) -> NDArray[Any]:
        return np.concatenate(out[key]).astype(dtype) if out[key] else np.zeros(0, dtype)

    arrays = CandidateArrays(
        first=cat("first", np.int64), last=cat("last", np.int64), fill=cat("fill", np.float64),
        a_fwd=cat("a_fwd", np.float64), a_bwd=cat("a_bwd", np.float64),
        tail=cat("tail", np.float64), replicas=cat("replicas", np.int64),
        rate=cat("rate", np.float64), req=cat("req", np.float64))
    return CandidateGrid(arrays, cat("mem", np.int64), cat("rec", np.bool_))
