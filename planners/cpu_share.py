"""How a layer's compute time scales with a function's CPU share (Amdahl's law per layer).

XLA:CPU spreads a large convolution or matmul over its intra-op threads, but not the small ops
and the glue between them, so a layer does not run c times faster on c CPUs. Each layer carries
a parallel fraction p (``LayerProfile.parallel_fraction``, measured by ``jaxpipe profile``); on
c CPUs a layer whose one-CPU time is t1 takes

  t(c) = t1 * ((1 - p) / min(c, 1) + p / c)

(below one CPU the platform time-slices the function, so all of it slows down; above one CPU
only the parallel part speeds up). Splitting each measured time into a serial and a parallel
part (``amdahl_split``) keeps a stage's time linear in prefix sums over its layers:
F = q * sum serial + r * sum parallel, with (q, r) = ``compute_factors``.
"""

from __future__ import annotations

from typing import NamedTuple

from planners.profile import ModelProfile

__all__ = ["ComputePrefixes", "amdahl_split", "compute_factors", "compute_prefixes",
           "fit_parallel_fraction"]


def compute_factors(reference_cpus: float, cpus: float) -> tuple[float, float]:
    """(q, r): slow-downs on ``cpus`` CPUs of the serial and parallel parts ``amdahl_split``
    gives: r = reference / cpus and q = max(reference, r) = reference / min(cpus, 1)."""
    r = reference_cpus / cpus
    return max(reference_cpus, r), r


def amdahl_split(seconds: float, p: float, reference_cpus: float) -> tuple[float, float]:
    """(serial, parallel) parts of a layer time measured at ``reference_cpus`` CPUs.

    On c CPUs the layer then takes q * serial + r * parallel, (q, r) = ``compute_factors``:
    dividing t(c) by t(reference) gives seconds * ((1 - p) q + p r) / k with
    k = (1 - p) max(reference, 1) + p. With p = 1, k = 1 exactly, the serial part is 0 and
    the parallel part is ``seconds`` (so F = r * sum fwd, the model before p, bit for bit).

    Args:
      seconds: the layer's time at ``reference_cpus``, in s; >= 0.
      p: its parallel fraction, in [0, 1].
      reference_cpus: the CPU share the time was measured at, in CPUs; > 0.

    Example:
      >>> amdahl_split(3.0, 0.5, 2.0)  # t1 = 4 s: 2 s serial, 2 s parallel (1 s on 2 CPUs)
      (1.0, 1.0)
    """
    k = (1.0 - p) * max(reference_cpus, 1.0) + p
    return seconds * (1.0 - p) / k, seconds * p / k


def fit_parallel_fraction(one: float, many: float, cpus: int) -> float:
    """Amdahl's p from a time on one CPU and on ``cpus`` CPUs: t_N = t_1 (1 - p + p / N) gives
    p = N / (N - 1) * (1 - t_N / t_1), clipped to [0, 1] (timing noise, or a layer slower on
    more threads).

    Example:
      >>> fit_parallel_fraction(10.0, 6.0, 2)
      0.8
    """
    if cpus < 2 or not one > 0:
        raise ValueError(f"fit_parallel_fraction needs cpus >= 2 and a positive one-CPU time; "
                         f"got cpus={cpus}, one={one}")
    return min(max(cpus / (cpus - 1) * (1.0 - many / one), 0.0), 1.0)


class ComputePrefixes(NamedTuple):
    """Prefix sums over layers 0..k-1 (k = 0..L) of the ``amdahl_split`` parts of each layer's
    forward and backward time at one micro-batch size, s."""

    fwd_serial: list[float]
    fwd_parallel: list[float]
    bwd_serial: list[float]
    bwd_parallel: list[float]


def compute_prefixes(profile: ModelProfile, micro_batch: int) -> ComputePrefixes:
    """``ComputePrefixes`` of ``profile`` at ``micro_batch`` samples."""
    out = ComputePrefixes([0.0], [0.0], [0.0], [0.0])
    ref = profile.reference_cpus
    for layer, p in zip(profile.layers, profile.parallel_fractions(), strict=True):
        fs, fp = amdahl_split(layer.fwd_time(micro_batch), p, ref)
        bs, bp = amdahl_split(layer.bwd_time(micro_batch), p, ref)
        for prefix, x in zip(out, (fs, fp, bs, bp), strict=True):
            prefix.append(prefix[-1] + x)
    return out
