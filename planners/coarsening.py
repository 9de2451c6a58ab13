"""Coarsening: merge adjacent layers into at most G groups of balanced compute.

The planner solves on the coarsened chain (FuncPipe coarsens ResNet-101 to 30 groups before
planning). ``coarsen`` records in ``meta["groups"]`` which original layers each group holds,
and ``expand_plan`` maps a plan back to original layer indices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from planners.cpu_share import amdahl_split
from planners.errors import PlanError
from planners.plans import Plan
from planners.profile import LayerProfile, ModelProfile

__all__ = ["balance_weights", "coarsen", "expand_plan", "groups_of"]


def balance_weights(profile: ModelProfile, micro_batch: int = 4) -> list[float]:
    """Per-layer weight to balance: forward + backward seconds at ``micro_batch``; FLOPs when
    every time is zero; 1 per layer when FLOPs are zero too."""
    w = [layer.fwd_time(micro_batch) + layer.bwd_time(micro_batch) for layer in profile.layers]
    if sum(w) <= 0:
        w = [layer.flops_per_sample for layer in profile.layers]
    if sum(w) <= 0:
        w = [1.0] * profile.num_layers
    return w


def _greedy(weights: list[float], cap: float) -> list[tuple[int, int]]:
    """Pack layers left to right into groups of weight <= cap (a single heavier layer alone)."""
    groups: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, w in enumerate(weights):
        if i > start and acc + w > cap:
            groups.append((start, i - 1))
            start, acc = i, 0.0
        acc += w
    groups.append((start, len(weights) - 1))
    return groups


def partition_min_max(weights: list[float], parts: int) -> list[tuple[int, int]]:
    """Split a chain into exactly min(parts, len) contiguous groups minimising the largest group
    weight (bisection on the capacity, then greedy packing, then splitting the heaviest groups).
    Returns inclusive (first, last) index pairs."""
    n = len(weights)
    parts = max(1, min(parts, n))
    lo, hi = max(weights), sum(weights)
    for _ in range(100):
        if hi - lo <= 1e-12 * max(hi, 1e-30):
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if len(_greedy(weights, mid)) <= parts else (mid, hi)
    groups = _greedy(weights, hi)
    while len(groups) < parts:  # split the heaviest multi-layer group at its balance point
        k = max((g for g in range(len(groups)) if groups[g][1] > groups[g][0]),
                key=lambda g: sum(weights[groups[g][0]:groups[g][1] + 1]))
        a, b = groups[k]
        half, acc, cut = sum(weights[a:b + 1]) / 2, 0.0, a
        for i in range(a, b):
            acc += weights[i]
            cut = i
            if acc >= half:
                break
        groups[k:k + 1] = [(a, cut), (cut + 1, b)]
    return groups


def _common_keys(tables: list[dict[int, float]]) -> list[int]:
    """Micro-batch sizes measured in every table, ascending."""
    keys = set(tables[0])
    for table in tables[1:]:
        keys &= set(table)
    return sorted(keys)


def _merged_fraction(weights: list[float], fractions: list[float] | None,
                     reference_cpus: float) -> float | None:
    """Amdahl's p of a group: its layers' p weighted by their one-CPU time (forward + backward
    at the coarsening micro-batch size, as ``cpu_share.amdahl_split`` splits it), so the
    group's serial and parallel parts are the sums of its layers' at that size (at other
    sizes, where the layers' time shares differ, approximately). None when no layer of the
    profile has its own p (the model-wide default then applies to the group too)."""
    if fractions is None or len(fractions) == 1:
        return None if fractions is None else fractions[0]
    parts = [amdahl_split(w, p, reference_cpus) for w, p in zip(weights, fractions, strict=True)]
    one_cpu = sum(a + b for a, b in parts)
    if one_cpu <= 0:
        return sum(fractions) / len(fractions)
    return min(sum(b for _, b in parts) / one_cpu, 1.0)


def _merge(layers: tuple[LayerProfile, ...], parallel_fraction: float | None) -> LayerProfile:
    first, last = layers[0], layers[-1]
    common = _common_keys([x.fwd_seconds for x in layers])
    common_b = _common_keys([x.bwd_seconds for x in layers])
    return LayerProfile(
        name=first.name if len(layers) == 1 else f"{first.name}..{last.name}",
        param_bytes=sum(x.param_bytes for x in layers),
        stash_bytes_per_sample=sum(x.stash_bytes_per_sample for x in layers),
        boundary_bytes_per_sample=last.boundary_bytes_per_sample,
        fwd_alpha=sum(x.fwd_alpha for x in layers), fwd_beta=sum(x.fwd_beta for x in layers),
        bwd_alpha=sum(x.bwd_alpha for x in layers), bwd_beta=sum(x.bwd_beta for x in layers),
        fwd_seconds={b: sum(x.fwd_seconds[b] for x in layers) for b in common},
        bwd_seconds={b: sum(x.bwd_seconds[b] for x in layers) for b in common_b},
        flops_per_sample=sum(x.flops_per_sample for x in layers),
        **_merged_dots(layers),
        parallel_fraction=parallel_fraction,
    )


def _merged_dots(layers: tuple[LayerProfile, ...]) -> dict[str, Any]:
    """The group's dots-mode fields: sums when every layer has them, else none (a stage can run
    in dots mode only if all its layers can)."""
    if not all(x.has_dots for x in layers):
        return {}
    common = _common_keys([x.dots_bwd_seconds for x in layers])
    return {
        "dots_stash_bytes_per_sample": sum(x.dots_stash_bytes_per_sample or 0.0 for x in layers),
        "dots_bwd_alpha": sum(x.dots_bwd_alpha or 0.0 for x in layers),
        "dots_bwd_beta": sum(x.dots_bwd_beta or 0.0 for x in layers),
        "dots_bwd_seconds": {b: sum(x.dots_bwd_seconds[b] for x in layers) for b in common},
    }


def groups_of(profile: ModelProfile) -> list[tuple[int, int]]:
    """Original (first, last) layer indices of every layer of ``profile`` (identity if it was
    never coarsened)."""
    groups = profile.meta.get("groups")
    if groups is None:
        return [(i, i) for i in range(profile.num_layers)]
    if len(groups) != profile.num_layers:
        raise PlanError(f"profile {profile.model!r}: meta['groups'] has {len(groups)} entries "
                        f"for {profile.num_layers} layers; re-run coarsen on the original")
    return [(int(a), int(b)) for a, b in groups]


def coarsen(profile: ModelProfile, groups: int, micro_batch: int = 4) -> ModelProfile:
    """Merge adjacent layers into min(groups, L) groups balancing forward+backward compute.

    Sizes and times add up; a group's boundary is its last layer's; measured times are kept for
    micro-batch sizes every member measured; Amdahl fractions are averaged weighted by one-CPU time.
    ``meta["groups"]`` lists inclusive original layer indices per group (composed when
    ``profile`` was already coarsened).

    Raises:
      PlanError: groups < 1.

    Example:
      >>> from planners.synthetic import resnet101_like
      >>> coarsen(resnet101_like(), 30).num_layers
      30
    """
    if groups < 1:
        raise PlanError(f"coarsen needs groups >= 1, got {groups}")
    weights = balance_weights(profile, micro_batch)
    parts = partition_min_max(weights, groups)
    before = groups_of(profile)
    measured = any(x.parallel_fraction is not None for x in profile.layers)
    p = list(profile.parallel_fractions()) if measured else None
    layers = tuple(_merge(profile.layers[a:b + 1],
                          _merged_fraction(weights[a:b + 1], None if p is None else p[a:b + 1],
                                           profile.reference_cpus))
                   for a, b in parts)
    meta = dict(profile.meta)
    meta["groups"] = [[before[a][0], before[b][1]] for a, b in parts]
    meta.setdefault("original_layers", profile.num_layers)
    return dataclasses.replace(profile, layers=layers, meta=meta)


def expand_plan(plan: Plan, coarse: ModelProfile) -> Plan:
    """Map a plan made on the coarsened profile ``coarse`` to original layer indices (its
    ``cuts`` then index the original layers). ``meta["coarse_cuts"]`` keeps the old cuts."""
    groups = groups_of(coarse)
    if plan.num_layers != len(groups):
        raise PlanError(f"plan covers {plan.num_layers} layers, the coarsened profile has "
                        f"{len(groups)}; expand with the profile the plan was made on")
    stages = tuple(dataclasses.replace(st, first_layer=groups[st.first_layer][0],
                                       last_layer=groups[st.last_layer][1]) for st in plan.stages)
    meta = dict(plan.meta) | {"coarse_cuts": list(plan.cuts)}
    return dataclasses.replace(plan, stages=stages, meta=meta)
