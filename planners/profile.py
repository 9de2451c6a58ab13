"""Model profiles: what the planner knows about each layer of a model.

A profile is produced by ``jaxpipe profile`` (or synthesised by a benchmark) and is the only
description of the model a planner sees. Layer indices are 0-based positions in ``layers``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from planners._json import JsonMixin, int_keyed
from planners.errors import PlanError

__all__ = ["LayerProfile", "ModelProfile"]


@dataclass(frozen=True)
class LayerProfile(JsonMixin):
    """One layer (or merged group of layers) of a model.

    Attributes:
      name: layer name; merged groups are named ``"first..last"``.
      param_bytes: bytes of the layer's parameters (gradients have the same size).
      stash_bytes_per_sample: bytes of residuals kept for backward per sample (stash mode).
      boundary_bytes_per_sample: bytes of every value live across a cut placed right after this
        layer, per sample (activations, skips, targets). Gradients crossing that cut are priced
        with the same size.
      fwd_alpha, fwd_beta, bwd_alpha, bwd_beta: seconds; forward time t(b) = alpha + beta * b for
        a micro-batch of b samples at the profile's reference CPU share (likewise backward).
      fwd_seconds, bwd_seconds: measured medians in seconds keyed by micro-batch size; when a key
        is present it overrides the linear fit. May be empty.
      flops_per_sample: forward FLOPs per sample (informational; used to balance when times are 0).
      dots_stash_bytes_per_sample: bytes of residuals kept for backward per sample in ``dots``
        mode (only matmul and convolution outputs and the layer's inputs; the backward
        recomputes the elementwise ops). None: the mode was not profiled, and a stage may run
        in ``dots`` mode only if every one of its layers has it.
      dots_bwd_alpha, dots_bwd_beta: backward seconds in ``dots`` mode (including the
        recomputed elementwise ops), as ``bwd_alpha``/``bwd_beta``; None exactly when
        ``dots_stash_bytes_per_sample`` is.
      dots_bwd_seconds: measured ``dots`` backward medians by micro-batch size, as
        ``bwd_seconds``.
      parallel_fraction: Amdahl's p of the layer's forward and backward, in [0, 1]: the share of
        its one-CPU time that spreads over more CPUs (``jaxpipe profile`` fits it from the times
        at one core and at all cores). None: not measured; the model-wide
        ``ModelProfile.parallel_fraction`` applies, and 1 (perfect scaling) when that is None too.
    """

    name: str
    param_bytes: int
    stash_bytes_per_sample: float
    boundary_bytes_per_sample: float
    fwd_alpha: float
    fwd_beta: float
    bwd_alpha: float
    bwd_beta: float
    fwd_seconds: dict[int, float] = field(default_factory=dict[int, float], hash=False)
    bwd_seconds: dict[int, float] = field(default_factory=dict[int, float], hash=False)
    flops_per_sample: float = 0.0
    dots_stash_bytes_per_sample: float | None = None
    dots_bwd_alpha: float | None = None
    dots_bwd_beta: float | None = None
    dots_bwd_seconds: dict[int, float] = field(default_factory=dict[int, float], hash=False)
    parallel_fraction: float | None = None

    def __post_init__(self) -> None:
        _check_fraction(f"layer {self.name!r}", self.parallel_fraction)
        bad = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.type in ("int", "float", "float | None")
            and getattr(self, f.name) is not None and getattr(self, f.name) < 0
        ]
        if bad:
            raise PlanError(
                f"layer {self.name!r}: sizes and times must be >= 0, got {', '.join(bad)}; "
                "fix the profile"
            )
        dots = (self.dots_stash_bytes_per_sample, self.dots_bwd_alpha, self.dots_bwd_beta)
        if any(x is None for x in dots) and not all(x is None for x in dots):
            raise PlanError(
                f"layer {self.name!r}: dots_stash_bytes_per_sample, dots_bwd_alpha and "
                f"dots_bwd_beta must be all given or all None (got {dots}); re-profile the "
                "layer or drop the three")

    @property
    def has_dots(self) -> bool:
        """Whether the layer was profiled in ``dots`` mode (so a stage may run it there)."""
        return self.dots_stash_bytes_per_sample is not None

    def fwd_time(self, micro_batch: int) -> float:
        """Forward seconds for ``micro_batch`` samples at the reference CPU share."""
        if micro_batch in self.fwd_seconds:
            return self.fwd_seconds[micro_batch]
        return self.fwd_alpha + self.fwd_beta * micro_batch

    def bwd_time(self, micro_batch: int) -> float:
        """Backward seconds for ``micro_batch`` samples at the reference CPU share."""
        if micro_batch in self.bwd_seconds:
            return self.bwd_seconds[micro_batch]
        return self.bwd_alpha + self.bwd_beta * micro_batch

    def dots_bwd_time(self, micro_batch: int) -> float:
        """Backward seconds in ``dots`` mode for ``micro_batch`` samples at the reference CPU
        share.

        Raises:
          PlanError: the layer has no ``dots`` profile (``has_dots`` is false).
        """
        if micro_batch in self.dots_bwd_seconds:
            return self.dots_bwd_seconds[micro_batch]
        if self.dots_bwd_alpha is None or self.dots_bwd_beta is None:
            raise PlanError(f"layer {self.name!r} has no dots-mode profile; re-profile it "
                            "(jaxpipe profile) or plan without dots mode")
        return self.dots_bwd_alpha + self.dots_bwd_beta * micro_batch

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (dict keys become strings)."""
        data = dataclasses.asdict(self)
        data["fwd_seconds"] = {str(k): v for k, v in self.fwd_seconds.items()}
        data["bwd_seconds"] = {str(k): v for k, v in self.bwd_seconds.items()}
        data["dots_bwd_seconds"] = {str(k): v for k, v in self.dots_bwd_seconds.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerProfile:
        """Inverse of ``to_dict``; unknown keys raise PlanError."""
        _check_keys(cls, data)
        kwargs = dict(data)
        kwargs["fwd_seconds"] = int_keyed(data.get("fwd_seconds"))
        kwargs["bwd_seconds"] = int_keyed(data.get("bwd_seconds"))
        kwargs["dots_bwd_seconds"] = int_keyed(data.get("dots_bwd_seconds"))
        kwargs["param_bytes"] = int(data["param_bytes"])
        return cls(**kwargs)


@dataclass(frozen=True)
class ModelProfile(JsonMixin):
    """A model as a chain of layers.

    Attributes:
      model: model name.
      layers: the layers in execution order.
      input_bytes_per_sample: bytes stage 0 downloads per sample (inputs and targets).
      reference_cpus: CPU share at which the layer times were measured (e.g. 1.0 vCPU).
      dtype_bytes: bytes per parameter element (4 for float32).
      meta: free-form record; ``coarsen`` stores ``{"groups": [[first, last], ...]}`` here,
        inclusive original layer indices per group.
      parallel_fraction: Amdahl's p for every layer whose own ``parallel_fraction`` is None, in
        [0, 1]; None means 1 (compute scales perfectly with the CPU share, the model before
        layers carried p).
    """

    model: str
    layers: tuple[LayerProfile, ...]
    input_bytes_per_sample: float
    reference_cpus: float
    dtype_bytes: int = 4
    meta: dict[str, Any] = field(default_factory=dict[str, Any], hash=False)
    parallel_fraction: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_fraction(f"profile {self.model!r}", self.parallel_fraction)
        if not self.layers:
            raise PlanError(f"profile {self.model!r} has no layers; profile at least one layer")
        if self.reference_cpus <= 0:
            raise PlanError(
                f"profile {self.model!r}: reference_cpus must be > 0, got {self.reference_cpus}"
            )
        if self.input_bytes_per_sample < 0:
            raise PlanError(
                f"profile {self.model!r}: input_bytes_per_sample must be >= 0, "
                f"got {self.input_bytes_per_sample}"
            )

    @property
    def num_layers(self) -> int:
        """Number of layers L."""
        return len(self.layers)

    @property
    def param_bytes(self) -> int:
        """Total parameter bytes of the model."""
        return sum(layer.param_bytes for layer in self.layers)

    def parallel_fractions(self) -> tuple[float, ...]:
        """Amdahl's p of every layer: its own, else the model-wide one, else 1."""
        default = 1.0 if self.parallel_fraction is None else self.parallel_fraction
        return tuple(default if x.parallel_fraction is None else x.parallel_fraction
                     for x in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "model": self.model,
            "layers": [layer.to_dict() for layer in self.layers],
            "input_bytes_per_sample": self.input_bytes_per_sample,
            "reference_cpus": self.reference_cpus,
            "dtype_bytes": self.dtype_bytes,
            "meta": self.meta,
            "parallel_fraction": self.parallel_fraction,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        """Inverse of ``to_dict``; unknown keys raise PlanError."""
        _check_keys(cls, data)
        kwargs = dict(data)
        kwargs["layers"] = tuple(LayerProfile.from_dict(d) for d in data["layers"])
        kwargs["meta"] = dict(data.get("meta", {}))
        return cls(**kwargs)


def _check_fraction(what: str, p: float | None) -> None:
    if p is not None and not 0.0 <= p <= 1.0:
        raise PlanError(f"{what}: parallel_fraction must be in [0, 1] (or None: not measured), "
                        f"got {p!r}; fix the profile")


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlanError(
            f"{cls.__name__}: unknown fields {unknown}; known fields are {sorted(known)}"
        )
