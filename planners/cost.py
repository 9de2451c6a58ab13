"""The one cost model: per-stage terms, iteration time, dollars and peak memory of a plan.

Notation (per stage s, one micro-batch of b samples, at memory option m_s with CPU share c):
  r, q    = reference_cpus / c, max(reference_cpus, r)  slow-downs vs the profile of parallel
                                                    and serial work (``planners.cpu_share``)
  F_s     = q sum_l fs_l(b) + r sum_l fp_l(b)       forward compute, s; fs + fp = fwd_l(b) split
                                                    by the layer's Amdahl fraction p_l
  G_s     = q sum_l bs_l(b) + r sum_l bp_l(b)       backward compute, s (+ F_s if recompute;
                                                    dots mode: its own measured backward, split
                                                    alike; ``planners.modes``)
  D^a_s   = lat + b*in_s/down                       download of the input (stage 0: the data;
                                                    0 when the problem caches the input)
  U^a_s   = lat + b*out_s/up                        upload of the output (0 on the last stage)
  D^g_s   = lat + b*out_s/down                      download of the output gradient (0 on last)
  U^g_s   = lat + b*in_s/up                         upload of the input gradient (0 on stage 0)
  n_s     = ceil(M / d_s)                           micro-batches per replica, M = B / b
Compute, upload and download are three overlapping lanes, so the steady-state periods are
  tauF_s = max(F_s, U^a_s, D^a_s)    tauB_s = max(G_s, U^g_s, D^g_s)
and, for FuncPipe's schedule (all forwards, then all backwards; ``planners.schedule``),
  T = sum_s (D^a+F+U^a)_s + max_s (n_s-1) tauF_s      forward fill + bottleneck
    + sum_s (D^g+G+U^g)_s + max_s (n_s-1) tauB_s      backward fill + bottleneck
    + max_s (sync_s + update_s)                        gradient sync + optimizer step
With every d_s = 1 this is the exact makespan of the 3S-lane flow shop the simulator replays.
For 1F1B one lane serves both phases: period_s = max(F+G, U^a+U^g, D^a+D^g).

Windows: a function runs consecutive iterations in one invocation (a *window*) and hands over
to a fresh one before ``timeout``; each window pays the cold start and the stage's checkpoint
hand-over H_s = (state/up + lat) + (state/down + lat), state = W_s (1 + slots). So an
iteration must fit T <= life_s = timeout - cold_start - H_s (``fits_lifetime``; ``score``
marks a plan that breaks it infeasible), a window holds life_s / T iterations, and a stage's
functions are billed timeout / life_s (``window_factor``) times the time they run:

Dollars per iteration = sum_s f_s * (price_gb_s * d_s m_s / 1024 + price_inv * d_s / timeout) * T
                        + price_put * PUTs + price_get * GETs,     f_s = timeout / life_s,
priced by ``Platform.compute_dollars``, ``Platform.handover_invocation_dollars`` (one
invocation per function per window) and ``Platform.request_dollars``, plus each window's
checkpoint requests (``checkpoint_dollars``) spread over its life_s, plus the PUTs of the
checkpoints inside a window (``checkpoint_puts``, every ``Problem.checkpoint_every``
iterations). Ignored: the time those checkpoints take, polling GETs (bounded at ~2 % of the
dollars, planners/README.md) and the first window's extra compile time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from planners.cpu_share import compute_factors, compute_prefixes
from planners.errors import PlanError
from planners.modes import DotsPrefix, held_bytes
from planners.plans import Plan
from planners.platforms import Platform
from planners.problem import Problem
from planners.storage_terms import (
    CHECKPOINT_PUTS,
    checkpoint_dollars,
    checkpoint_puts,
    sync_seconds,
)

__all__ = [
    "CHECKPOINT_PUTS", "Breakdown", "StageModel", "StageTerms", "aggregate", "breakdown",
    "checkpoint_dollars", "checkpoint_puts",
    "dollars", "fits_lifetime", "iteration_cost", "iteration_time", "peak_memory", "plan_terms",
    "score", "sync_seconds", "violations",
]

MIB = 1 << 20  # memory sizes are MB = MiB, as function platforms bill them


@dataclass(frozen=True)
class StageTerms:
    """Cost-model terms of one stage configuration; times in seconds per micro-batch."""

    fwd: float  # F_s
    bwd: float  # G_s (includes the recomputed forward)
    act_down: float  # D^a_s
    act_up: float  # U^a_s
    grad_down: float  # D^g_s
    grad_up: float  # U^g_s
    sync: float  # scatter-reduce, s per iteration
    update: float  # optimizer step, s per iteration
    per_replica: int  # n_s micro-batches per replica
    replicas: int  # d_s
    memory_mb: int  # m_s
    peak_mb: float  # predicted peak memory of one function, MB
    puts: float  # PUT requests per iteration, all replicas
    gets: float  # GET requests per iteration, all replicas
    handover: float = 0.0  # checkpoint hand-over per window (PUT, then the next GET), s
    life: float = math.inf  # longest iteration a window holds: timeout - cold start - handover
    window_factor: float = 1.0  # billed / running time over a window, timeout / life

    @property
    def fill_fwd(self) -> float:
        """D^a + F + U^a, s."""
        return self.act_down + self.fwd + self.act_up

    @property
    def fill_bwd(self) -> float:
        """D^g + G + U^g, s."""
        return self.grad_down + self.bwd + self.grad_up

    @property
    def period_fwd(self) -> float:
        """tauF = max(F, U^a, D^a), s."""
        return max(self.fwd, self.act_up, self.act_down)

    @property
    def period_bwd(self) -> float:
        """tauB = max(G, U^g, D^g), s."""
        return max(self.bwd, self.grad_up, self.grad_down)

    @property
    def period_1f1b(self) -> float:
        """max(F+G, U^a+U^g, D^a+D^g), s."""
        return max(self.fwd + self.bwd, self.act_up + self.grad_up,
                   self.act_down + self.grad_down)

    @property
    def gigabytes(self) -> float:
        """Memory of all the stage's functions, GB (d_s * m_s / 1024)."""
        return self.replicas * self.memory_mb / 1024

    def rate(self, plat: Platform) -> float:
        """Currency per second of iteration time of the stage's functions: GB-seconds and
        invocations, times ``window_factor`` (a window bills its cold start and hand-over),
        plus the window's checkpoint requests (``checkpoint_requests``) over its life."""
        if not self.life > 0:
            return math.inf
        return ((plat.compute_dollars(self.gigabytes, 1.0)
                 + plat.handover_invocation_dollars(self.replicas, 1.0)) * self.window_factor
                + checkpoint_dollars(plat, self.replicas) / self.life)


class StageModel:
    """Prices stage configurations for one problem and one micro-batch size b.

    Layer sums use prefix arrays, so ``terms`` costs O(1); a planner calls it for every
    (first, last, memory, replicas, mode) candidate.
    """

    def __init__(self, problem: Problem, micro_batch: int) -> None:
        prof, plat = problem.profile, problem.platform
        self.problem, self.b = problem, micro_batch
        self.M = problem.global_batch // micro_batch
        self.L = prof.num_layers
        self.compute = compute_prefixes(prof, micro_batch)  # Amdahl serial/parallel parts
        self._fwd, self._bwd = self.compute.fwd_parallel, self.compute.bwd_parallel
        self._fwd_s, self._bwd_s = self.compute.fwd_serial, self.compute.bwd_serial
        self._par, self._stash = [0.0], [0.0]
        for layer in prof.layers:
            self._par.append(self._par[-1] + layer.param_bytes)
            self._stash.append(self._stash[-1] + layer.stash_bytes_per_sample)
        self._bound = [layer.boundary_bytes_per_sample for layer in prof.layers]
        self._ref, self._plat = prof.reference_cpus, plat
        self._fixed_mb = plat.runtime_base_mb + plat.safety_margin_mb
        self.dots = DotsPrefix(prof, micro_batch)  # dots mode's sums (``planners.modes``)

    def in_bytes(self, first: int) -> float:
        """Bytes per sample entering a stage that starts at ``first``."""
        return self.problem.profile.input_bytes_per_sample if first == 0 else self._bound[first - 1]

    def param_bytes(self, first: int, last: int) -> float:
        """Parameter bytes of layers first..last."""
        return self._par[last + 1] - self._par[first]

    def stash_bytes_per_sample(self, first: int, last: int) -> float:
        """Residual bytes per sample layers first..last keep for backward (stash mode)."""
        return self._stash[last + 1] - self._stash[first]

    @property
    def prefix_fwd(self) -> list[float]:
        """sum_{l < k} fp_l(b), k = 0..L, parallel parts, s (serial ones: ``compute``;
        ``prefix_bwd``: backward; ``prefix_params``:
        parameter bytes; ``prefix_stash``: stash bytes per sample)."""
        return self._fwd

    @property
    def prefix_bwd(self) -> list[float]:
        return self._bwd

    @property
    def prefix_params(self) -> list[float]:
        return self._par

    @property
    def prefix_stash(self) -> list[float]:
        return self._stash

    @property
    def fixed_mb(self) -> float:
        """Memory every function spends before the model: runtime base + safety margin, MB."""
        return self._fixed_mb

    def terms(self, first: int, last: int, memory_mb: int, replicas: int, mode: str = "stash",
              in_flight: int | None = None) -> StageTerms:
        """Terms of layers first..last (inclusive) on ``replicas`` functions of ``memory_mb``.

        ``in_flight`` is the number of micro-batches whose activations a replica holds at once;
        None means n_s (FuncPipe's schedule keeps every owned micro-batch until its backward).
        Raises PlanError for a mode the layers cannot run in (``DotsPrefix.check``).
        """
        self.dots.check(mode, first, last)
        plat, b = self._plat, self.b
        lat, up, down = plat.request_latency_s, plat.uplink_bytes_per_s, plat.downlink_bytes_per_s
        q, r = compute_factors(self._ref, plat.cpus(memory_mb))
        is_first, is_last = first == 0, last == self.L - 1
        fwd = (q * (self._fwd_s[last + 1] - self._fwd_s[first])
               + r * (self._fwd[last + 1] - self._fwd[first]))
        if mode == "dots":
            bwd = (q * (self.dots.bwd_serial[last + 1] - self.dots.bwd_serial[first])
                   + r * (self.dots.bwd[last + 1] - self.dots.bwd[first]))
        else:
            bwd = (q * (self._bwd_s[last + 1] - self._bwd_s[first])
                   + r * (self._bwd[last + 1] - self._bwd[first])) \
                + (fwd if mode == "recompute" else 0.0)
        x_in = b * self.in_bytes(first)
        x_out = 0.0 if is_last else b * self._bound[last]
        w = self.param_bytes(first, last)
        n = -(-self.M // replicas)
        held = n if in_flight is None else min(in_flight, n)
        stash = b * self.stash_bytes_per_sample(first, last)
        acts = held_bytes(mode, held, x_in, stash,
                          b * (self.dots.stash[last + 1] - self.dots.stash[first]))
        model = w * (2 + self.problem.optimizer_slots) + (2 * w if replicas > 1 else 0.0)
        cached = self.problem.cached_input_bytes if is_first else None
        state = w * (1 + self.problem.optimizer_slots)  # parameters and optimizer slots
        handover = (state / up + lat) + (state / down + lat)
        life = plat.timeout_s - plat.cold_start_s - handover
        dataset = self.problem.stage0_data_bytes if is_first else 0.0
        peak = (model + acts + dataset + 2 * (x_in + x_out)) / MIB + self._fixed_mb
        m_total = self.M
        # Per rank of an all-reduce: n+1 PUTs and one LIST, priced as a PUT (transports/README.md).
        sync_puts = replicas * (replicas + 2) if replicas > 1 else 0
        sync_gets = 2 * replicas * (replicas - 1)
        return StageTerms(
            fwd=fwd, bwd=bwd,
            act_down=0.0 if cached is not None else x_in / down + lat,
            act_up=0.0 if is_last else x_out / up + lat,
            grad_down=0.0 if is_last else x_out / down + lat,
            grad_up=0.0 if is_first else x_in / up + lat,
            sync=sync_seconds(w, replicas, up, down, lat),
            update=r * w * self.problem.update_seconds_per_byte,
            per_replica=n, replicas=replicas, memory_mb=memory_mb, peak_mb=peak,
            # + one loss record per last-stage replica and iteration (the driver's progress)
            # + replica 0's checkpoints inside the window (``checkpoint_puts``)
            puts=m_total * ((not is_last) + (not is_first)) + sync_puts + replicas * is_last
            + checkpoint_puts(self.problem),
            gets=m_total * ((cached is None) + (not is_last)) + sync_gets,
            handover=handover, life=life,
            window_factor=plat.timeout_s / life if life > 0 else math.inf,
        )

    def fit(self, first: int, last: int, memory_mb: int, replicas: int,
            in_flight: int | None = None) -> tuple[str, StageTerms] | None:
        """(mode, terms) of the fastest allowed mode that fits ``memory_mb`` (smallest G_s; a
        tie keeps the first of ``MODES``), else None; ``planners.modes`` argues it is exact."""
        best: tuple[str, StageTerms] | None = None
        for mode in self.dots.modes(self.problem, first, last):
            t = self.terms(first, last, memory_mb, replicas, mode, in_flight)
            if t.peak_mb <= memory_mb and (best is None or t.bwd < best[1].bwd):
                best = mode, t
        return best


def aggregate(terms: Sequence[StageTerms], problem: Problem,
              schedule: str = "funcpipe") -> tuple[float, float]:
    """Closed-form (seconds, dollars) per iteration of a pipeline of stage terms."""
    fill = sum(t.fill_fwd + t.fill_bwd for t in terms)
    if schedule == "1f1b":
        bottleneck = max((t.per_replica - 1) * t.period_1f1b for t in terms)
    else:
        bottleneck = (max((t.per_replica - 1) * t.period_fwd for t in terms)
                      + max((t.per_replica - 1) * t.period_bwd for t in terms))
    seconds = fill + bottleneck + max(t.sync + t.update for t in terms)
    return seconds, dollars(terms, problem, seconds)


def dollars(terms: Sequence[StageTerms], problem: Problem, seconds: float) -> float:
    """Dollars (platform currency) per iteration for stages running ``seconds``: each stage's
    ``rate`` times seconds, plus the requests."""
    plat = problem.platform
    rate = sum(t.rate(plat) for t in terms)
    return rate * seconds + plat.request_dollars(sum(t.puts for t in terms),
                                                 sum(t.gets for t in terms))


def fits_lifetime(terms: Sequence[StageTerms], seconds: float) -> bool:
    """Whether an iteration of ``seconds`` fits every stage's window: seconds <= life_s =
    timeout - cold start - checkpoint hand-over (a window must hold at least one iteration)."""
    return all(seconds <= t.life for t in terms)


def plan_terms(plan: Plan, problem: Problem) -> list[StageTerms]:
    """Stage terms of every stage of ``plan`` (in the plan's own modes)."""
    if plan.num_layers != problem.profile.num_layers:
        raise PlanError(f"plan covers {plan.num_layers} layers but the profile has "
                        f"{problem.profile.num_layers}; plan on the same (coarsened) profile")
    model = StageModel(problem, plan.micro_batch)
    S = len(plan.stages)
    return [
        model.terms(st.first_layer, st.last_layer, st.memory_mb, st.replicas, st.mode,
                    in_flight=(S - s) if plan.schedule == "1f1b" else None)
        for s, st in enumerate(plan.stages)
    ]


@dataclass(frozen=True)
class Breakdown:
    """Where the time and money of one iteration go (seconds; currency)."""

    seconds: float
    fill_seconds: float
    bottleneck_seconds: float
    sync_update_seconds: float
    dollars: float
    compute_dollars: float
    request_dollars: float
    invocation_dollars: float
    puts: float
    gets: float
    stages: tuple[StageTerms, ...]


def breakdown(plan: Plan, problem: Problem) -> Breakdown:
    """Itemised closed-form prediction for ``plan``."""
    terms = plan_terms(plan, problem)
    seconds, total = aggregate(terms, problem, plan.schedule)
    plat = problem.platform
    fill = sum(t.fill_fwd + t.fill_bwd for t in terms)
    tail = max(t.sync + t.update for t in terms)
    puts, gets = sum(t.puts for t in terms), sum(t.gets for t in terms)
    return Breakdown(
        seconds=seconds, fill_seconds=fill, bottleneck_seconds=seconds - fill - tail,
        sync_update_seconds=tail, dollars=total,
        compute_dollars=sum(plat.compute_dollars(t.gigabytes, seconds) * t.window_factor
                            for t in terms),
        request_dollars=plat.request_dollars(puts, gets),
        invocation_dollars=sum(plat.handover_invocation_dollars(t.replicas, seconds)
                               * t.window_factor for t in terms),
        puts=puts, gets=gets, stages=tuple(terms),
    )


def iteration_time(plan: Plan, problem: Problem) -> float:
    """Predicted seconds per iteration (closed form)."""
    return aggregate(plan_terms(plan, problem), problem, plan.schedule)[0]


def iteration_cost(plan: Plan, problem: Problem) -> float:
    """Predicted dollars (platform currency) per iteration."""
    return aggregate(plan_terms(plan, problem), problem, plan.schedule)[1]


def peak_memory(plan: Plan, problem: Problem) -> tuple[float, ...]:
    """Predicted peak memory of one function of each stage, MB: weights, gradients, optimizer
    slots, sync buffers (2W when replicated), activations of the micro-batches in flight,
    double-buffered boundary tensors, the cached training set (stage 0, if the problem caches
    it), runtime base and safety margin."""
    return tuple(t.peak_mb for t in plan_terms(plan, problem))


def violations(plan: Plan, problem: Problem) -> list[str]:
    """Every rule of the problem the plan breaks (empty when the plan is valid)."""
    out: list[str] = []
    options = problem.platform.memory_options_mb
    for s, (st, t) in enumerate(zip(plan.stages, plan_terms(plan, problem), strict=True)):
        if t.peak_mb > st.memory_mb:
            out.append(f"stage {s} needs {t.peak_mb:.0f} MB but has {st.memory_mb} MB")
        if st.memory_mb not in options:
            out.append(f"stage {s} memory {st.memory_mb} MB is not an option of {options}")
    seconds = aggregate(plan_terms(plan, problem), problem, plan.schedule)[0]
    for s, t in enumerate(plan_terms(plan, problem)):
        if seconds > t.life:
            out.append(f"stage {s}: an iteration of {seconds:.6g} s does not fit a window of "
                       f"{problem.platform.timeout_s:g} s after the cold start and its "
                       f"checkpoint hand-over ({t.life:.6g} s left)")
    if plan.num_functions > problem.max_functions:
        out.append(f"plan uses {plan.num_functions} functions > max_functions "
                   f"{problem.max_functions}")
    return out


def score(plan: Plan, problem: Problem, **fields: object) -> Plan:
    """Return ``plan`` with its predictions (time, dollars, peak memory, objective) filled in,
    plus any extra ``fields`` (method, solve_seconds, gap, status, meta)."""
    terms = plan_terms(plan, problem)
    seconds, cost = aggregate(terms, problem, plan.schedule)
    value = problem.objective.value(seconds, cost)
    if not problem.objective.feasible(seconds, cost) or not fits_lifetime(terms, seconds):
        value = math.inf
    return replace(plan, iteration_seconds=seconds, iteration_dollars=cost,
                   peak_memory_mb=tuple(round(t.peak_mb, 3) for t in terms),
                   objective_value=value, **fields)
