"""Stage modes in the cost model: what each keeps for the backward, what its backward costs.

A stage runs in one of ``MODES`` (``jaxpipe.staging.stage`` builds the programs):

  mode       G_s (backward compute)        acts (bytes a replica keeps for the backward)
  stash      sum_l bwd_l(b)                held * b * stash_s        the VJP residuals
  dots       sum_l dots_bwd_l(b)           held * b * dots_s + b * max(stash_s - dots_s, 0)
  recompute  sum_l bwd_l(b) + F_s          held * x_in + b * stash_s

(each layer time at the function's CPU share, ``planners.cpu_share``)

``dots`` keeps only the outputs of matrix products and convolutions (and the stage's inputs)
and recomputes the elementwise ops in the backward, whose measured time ``dots_bwd`` includes
them; like ``recompute`` it materialises one micro-batch's remaining residuals while that
micro-batch's backward runs. A stage may use ``dots`` only if every layer has a dots profile
(``LayerProfile.has_dots``) and the problem allows it (``allow_dots``), ``recompute`` only if
``allow_recompute``.

Why planners keep one mode per (interval, memory, replicas), the fastest that fits: at an
equal interval, memory option and replica count the modes share every cost term except G_s
and the peak memory. The peak only decides whether the configuration fits (the platform bills
the memory option, not the peak), and every objective is monotone in G_s (it enters the fill,
the backward bottleneck and, under 1F1B, the one period; nothing else). So among the modes
that fit, the one with the smallest G_s is at least as good in every term: dropping the others
never loses an optimal plan. Measured profiles give G_stash <= G_dots <= G_recompute, which
makes the rule "stash if it fits, else dots, else recompute"; comparing the times rather than
trusting that order keeps the rule exact when timing noise breaks it (ties keep the earlier
mode of ``MODES``). ``planners.exhaustive`` enumerates every mode, so the tests check this.
"""

from __future__ import annotations

from planners.cpu_share import amdahl_split
from planners.errors import PlanError
from planners.problem import MODES, Problem
from planners.profile import ModelProfile

__all__: list[str] = []  # internal to planners.cost and planners.stage_grid


class DotsPrefix:
    """Prefix sums of the dots-mode profile of one micro-batch size: backward seconds (split
    into Amdahl's serial and parallel parts, as ``cpu_share.compute_prefixes`` splits the
    stash backward) and residual bytes per sample over the layers that have it (0 for the
    others), and a count of the layers that do not, so every interval's sums and availability
    cost O(1)."""

    def __init__(self, profile: ModelProfile, micro_batch: int) -> None:
        self.bwd, self.bwd_serial, self.stash, self.missing = [0.0], [0.0], [0.0], [0]
        ref = profile.reference_cpus
        for layer, p in zip(profile.layers, profile.parallel_fractions(), strict=True):
            has = layer.has_dots
            serial, parallel = amdahl_split(layer.dots_bwd_time(micro_batch) if has else 0.0,
                                            p, ref)
            self.bwd.append(self.bwd[-1] + parallel)
            self.bwd_serial.append(self.bwd_serial[-1] + serial)
            self.stash.append(self.stash[-1] + (layer.dots_stash_bytes_per_sample or 0.0))
            self.missing.append(self.missing[-1] + (not has))

    def has(self, first: int, last: int) -> bool:
        """Whether every layer of first..last has a dots-mode profile."""
        return self.missing[last + 1] == self.missing[first]

    def modes(self, problem: Problem, first: int, last: int) -> tuple[str, ...]:
        """The modes layers first..last may run in under ``problem``, in ``MODES`` order."""
        allowed = {"stash": True, "dots": problem.allow_dots and self.has(first, last),
                   "recompute": problem.allow_recompute}
        return tuple(m for m in MODES if allowed[m])

    def check(self, mode: str, first: int, last: int) -> None:
        """Raises PlanError unless layers first..last can be priced in ``mode``."""
        if mode not in MODES or (mode == "dots" and not self.has(first, last)):
            raise PlanError(
                f"stage of layers {first}..{last}: mode {mode!r} is not available; modes are "
                f"{MODES}, and dots needs a dots-mode profile of every layer (jaxpipe profile)")


def held_bytes(mode: str, held: int, x_in: float, stash: float, dots: float) -> float:
    """``acts`` of the table above: bytes a replica keeps for the backward with ``held``
    micro-batches in flight; ``x_in``, ``stash``, ``dots``: one micro-batch's input, stash and
    dots residual bytes."""
    if mode == "dots":
        return held * dots + max(stash - dots, 0.0)
    return held * stash if mode == "stash" else held * x_in + stash
