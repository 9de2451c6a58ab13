"""Profiling each layer of a traced model into the `planners.ModelProfile` a planner solves on.

Every layer is compiled on its own as a one-layer stage (the same `build_stage` programs the
pipeline runs) at each micro-batch size b, then:

- forward and backward are timed jitted, after warm-up, as the median of `repeats` runs;
  `t(b) = alpha + beta * b` is fitted by least squares;
- bytes stashed for backward come from the compiled forward's memory analysis (its output
  buffers minus the values it hands on), and their per-sample part is the slope over b;
- FLOPs come from XLA's cost analysis of the forward;
- with `dots`, the layer is built a second time in `dots` mode (only matmul and convolution
  outputs kept), and its residual bytes and backward time are measured the same way (its
  forward computes the same values, so the stash forward's time stands for both).
- with `scaling` (the default) and more than one core, forward + backward at the largest b
  are run pinned to one core and on all N (`jaxpipe.staging.scaling`), and Amdahl's parallel
  fraction p = N/(N-1) (1 - t_N / t_1), clipped to [0, 1], is the layer's
  `parallel_fraction` (`planners.cpu_share`).
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.stages import Compiled

from jaxpipe.errors import ProfileError
from jaxpipe.staging.scaling import Scaling, measure_scaling
from jaxpipe.staging.stage import StageSpec, TensorSpec, build_stage
from jaxpipe.staging.tracing import Traced
from planners.profile import LayerProfile, ModelProfile

__all__ = ["profile"]


def profile(
    traced: Traced,
    micro_batch_sizes: Sequence[int] = (1, 2, 4, 8),
    repeats: int = 5,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    dots: bool = True,
    scaling: bool = True,
    realtime: bool = False,
) -> ModelProfile:
    """Measures every layer of `traced` at every micro-batch size.

    Args:
      traced: the model, from `jaxpipe.trace`.
      micro_batch_sizes: the sizes b to time, in samples; at least one.
      repeats: timed runs per measurement (after one warm-up run); the median is kept.
      name: the model's name in the profile (defaults to the Flax module's class name).
      progress: called with a short message after each layer (e.g. a progress bar's update).
      dots: also profile `dots` mode (one more compile per layer and size), so planners may
        choose it; False leaves the layers' dots fields None.
      scaling: measure each layer's parallel fraction (one core vs all, at the largest size);
        about 2 * `repeats` more runs of each layer. Without it, or on one core, p is None.
      realtime: time those runs under SCHED_FIFO, for a busy machine
        (`jaxpipe.staging.scaling`; needs root or CAP_SYS_NICE).

    Returns:
      ModelProfile: per layer, parameter bytes, stashed and boundary bytes per sample, forward
      and backward seconds per micro-batch size with their linear fits, FLOPs per sample, the
      parallel fraction (with `dots`: the same residual bytes and backward times in dots mode);
      `reference_cpus` is the number of cores this process could use.
    """
    try:  # operator.index: 1.5 or "2" is an error, not silently 1 or 2
        sizes = sorted({operator.index(b) for b in micro_batch_sizes})
    except TypeError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise ProfileError(f"micro_batch_sizes must be positive integers; got {micro_batch_sizes}")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else [0]
    scaled = scaling and len(cores) > 1
    keys = ("fwd", "bwd", "saved", "flops") + (("dots_bwd", "dots_saved") if dots else ())
    per_layer: list[dict[str, dict[int, float]]] = [{k: {} for k in keys} for _ in traced.layers]
    scalings: list[Scaling | None] = [None] * len(traced.layers)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for i, layer in enumerate(traced.layers):
        for b in sizes:
            m = _measure(traced, i, b, repeats, "stash",
                         cores=cores if scaled and b == sizes[-1] else None, realtime=realtime)
            if dots:
                dots_m = _measure(traced, i, b, repeats, "dots", forward=False)
                m |= {"dots_bwd": dots_m["bwd"], "dots_saved": dots_m["saved"]}
            for key in per_layer[i]:
                per_layer[i][key][b] = m[key]
            scalings[i] = m.get("scaling", scalings[i])
        if progress:
            sc = scalings[i]
            progress(f"{layer.name}: fwd {per_layer[i]['fwd'][sizes[-1]] * 1e3:.2f} ms at "
                     f"b={sizes[-1]}" + (f", p {sc.parallel_fraction:.2f} ({sc.method})"
                                         if sc else ""))

    layers = []
    for layer, m, sc in zip(traced.layers, per_layer, scalings, strict=True):
        fwd_alpha, fwd_beta = _fit(m["fwd"])
        bwd_alpha, bwd_beta = _fit(m["bwd"])
        layers.append(LayerProfile(
            name=layer.name,
            param_bytes=layer.param_bytes,
            stash_bytes_per_sample=max(_fit(m["saved"])[1], 0.0),
            boundary_bytes_per_sample=layer.boundary_bytes_per_sample,
            fwd_alpha=fwd_alpha, fwd_beta=fwd_beta, bwd_alpha=bwd_alpha, bwd_beta=bwd_beta,
            fwd_seconds=dict(m["fwd"]), bwd_seconds=dict(m["bwd"]),
            flops_per_sample=max(_fit(m["flops"])[1], 0.0),
            parallel_fraction=None if sc is None else sc.parallel_fraction,
            **(_dots_fields(m) if dots else {}),
        ))
    data = traced.data_specs(1)[: len(traced.inputs.leaves) + len(traced.targets.leaves)]
    return ModelProfile(
        model=name or type(traced.model).__name__,
        layers=tuple(layers),
        input_bytes_per_sample=float(sum(s.size * s.dtype.itemsize for s in data)),
        reference_cpus=float(len(os.sched_getaffinity(0))),
        meta={"micro_batch_sizes": sizes, "repeats": repeats, "jax": jax.__version__,
              "layer_names": [layer.name for layer in traced.layers],
              "scaling": {"cores": len(cores), "micro_batch": sizes[-1], "load_average": load,
                          "realtime": realtime,
                          "layers": [sc.to_dict() if sc else None for sc in scalings]}
              if scaled else None},
    )


def _dots_fields(m: dict[str, dict[int, float]]) -> dict[str, Any]:
    """The dots-mode `LayerProfile` fields of one layer's measurements."""
    alpha, beta = _fit(m["dots_bwd"])
    return {"dots_stash_bytes_per_sample": max(_fit(m["dots_saved"])[1], 0.0),
            "dots_bwd_alpha": alpha, "dots_bwd_beta": beta,
            "dots_bwd_seconds": dict(m["dots_bwd"])}


def _measure(traced: Traced, index: int, b: int, repeats: int, mode: str,
             forward: bool = True, cores: Sequence[int] | None = None,
             realtime: bool = False) -> dict[str, Any]:
    """Times and sizes layer `index` alone, as a one-layer stage in `mode`, at micro-batch size
    `b` (the forward is timed only if `forward`); with `cores`, also its forward + backward on
    one of them and on all (`"scaling"`)."""
    program = traced.program(b)
    stage = build_stage(program, traced.params.paths, traced.state.paths, 0, index, index + 1,
                        mode)
    spec = stage.spec
    params = [_leaf(traced, p) for p in spec.param_paths]
    state = [_leaf(traced, p) for p in spec.state_paths]
    acts = [_sample(t) for t in spec.inputs]
    compiled = stage.forward.lower(params, state, acts).compile()
    _, _, saved = compiled(params, state, acts)
    cts = [np.ones(t.shape, t.dtype) for t in spec.outputs if t.differentiable]
    backward = stage.backward.lower(params, saved, cts).compile()
    out: dict[str, Any] = {
        "fwd": _median_seconds(lambda: compiled(params, state, acts), repeats) if forward
        else 0.0,
        "bwd": _median_seconds(lambda: backward(params, saved, cts), repeats),
        "saved": _saved_bytes(compiled, spec),
        "flops": _flops(compiled),
    }
    if cores:
        def both() -> object:
            return compiled(params, state, acts), backward(params, saved, cts)

        out["scaling"] = measure_scaling(both, cores, repeats, realtime)
    return out


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(run())  # warm-up
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _saved_bytes(compiled: Compiled, spec: StageSpec) -> float:
    """Bytes the forward keeps for backward: its output buffers minus what it passes on."""
    handed_on = sum(t.nbytes for t in spec.outputs)
    analysis = compiled.memory_analysis()
    if analysis is None:  # a backend without memory analysis: fall back to the shapes
        return float(sum(t.nbytes for t in spec.saved))
    return float(max(analysis.output_size_in_bytes - handed_on, 0))


def _flops(compiled: Compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def _fit(values: dict[int, float]) -> tuple[float, float]:
    """Least-squares (alpha, beta) of value = alpha + beta * b, both kept >= 0.

    Timings of tiny layers are noisy enough to give a negative slope (then: the mean, flat) or
    a negative intercept (then: the best line through the origin).
    """
    b = np.array(sorted(values), dtype=float)
    y = np.array([values[int(k)] for k in b])
    if len(b) == 1:
        return 0.0, float(y[0] / b[0])
    beta, alpha = np.polyfit(b, y, 1)
    if beta < 0:
        return float(np.mean(y)), 0.0
    if alpha < 0:
        return 0.0, float(np.dot(b, y) / np.dot(b, b))
    return float(alpha), float(beta)


def _leaf(traced: Traced, path: str) -> np.ndarray:
    flat = traced.params if path.startswith("params/") else traced.state
    leaf = flat.leaves[flat.paths.index(path)]
    return np.asarray(leaf)


def _sample(t: TensorSpec) -> np.ndarray:
    rng = np.random.default_rng(0)
    dtype = np.dtype(t.dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(t.shape).astype(dtype)
    return np.zeros(t.shape, dtype)
