"""Synthetic model profiles shaped like the paper's models, for benchmarks and tests.

These are not measurements: sizes follow each architecture's layer shapes (float32, one sample)
and times assume ``GFLOPS`` of sustained throughput at one reference CPU, with backward twice the
forward. Real profiles come from ``jaxpipe profile``. The one measured part is each layer's
Amdahl parallel fraction (``parallel_fraction``), taken from the zoo model's layer of the same
kind in ``experiments/profiles/<model>.json`` (``experiments/measure_scaling.py``: forward +
backward at micro-batch 8 (AmoebaNet 4), one core against two, under SCHED_FIFO, fastest of 5
alternating runs each); ``random_profile`` leaves it unset (perfect scaling).
"""

from __future__ import annotations

import dataclasses
import random

from planners.profile import LayerProfile, ModelProfile

__all__ = ["SHAPES", "amoebanet_d36_like", "bert_large_like", "random_profile", "resnet101_like"]

GFLOPS = 20e9  # [ASSUMED] sustained fp32 FLOP/s of one vCPU running XLA-compiled convolutions
_ALPHA = 2e-3  # [ASSUMED] fixed per-call overhead of a layer's jitted forward, s


# Measured parallel fractions (see the module docstring). ResNet-101 at 224x224, b = 8: the stem
# and head, then per stage (first block, with its projection shortcut; other blocks).
RESNET101_P = {"stem": 0.614, "head": 0.715}
RESNET101_BLOCK_P = ((0.816, 0.489), (0.998, 0.811), (0.790, 0.726), (0.915, 0.883))
# BERT-Large (sequence 128), b = 8: embeddings, encoder layers 1-23, layer 24 (its output also
# feeds the head's pooling), MLM head.
BERT_LARGE_P = {"embed": 0.539, "encoder": 0.998, "last": 0.942, "head": 0.879}
# AmoebaNet-D(18, 256), b = 4: the three stem convolutions as one (0.572, 0.670, 0.920 weighted
# by one-core time), the classifier, the reduction cells before groups 1 and 2, and per group
# its normal cells 1, 2 and 3 (the later ones have cell 3's shape).
AMOEBANET_P = {"stem": 0.78, "head": 0.870}
AMOEBANET_REDUCE_P = (0.949, 0.920)
AMOEBANET_NORMAL_P = ((0.855, 0.797, 0.920), (0.899, 0.798, 0.970), (0.908, 0.796, 0.889))


def _layer(name: str, params: float, stash: float, boundary: float, flops: float,
           p: float | None = None) -> LayerProfile:
    fwd = flops / GFLOPS
    return LayerProfile(name=name, param_bytes=int(params), stash_bytes_per_sample=stash,
                        boundary_bytes_per_sample=boundary, fwd_alpha=_ALPHA, fwd_beta=fwd,
                        bwd_alpha=2 * _ALPHA, bwd_beta=2 * fwd, flops_per_sample=flops,
                        parallel_fraction=p)


def resnet101_like() -> ModelProfile:
    """ResNet-101 at 224x224: stem, 33 bottleneck blocks as 3 convolutions each, head (101
    layers; 44.5M parameters, 7.8 GFLOPs per sample)."""
    layers = [_layer("stem", 9.4e3 * 4, 4 * 112 * 112 * 64 * 3, 4 * 56 * 56 * 64, 0.24e9,
                     RESNET101_P["stem"])]
    width, side = 64, 56
    for stage, blocks in enumerate((3, 4, 23, 3)):
        if stage:
            width, side = width * 2, side // 2
        out = 4 * width
        for blk in range(blocks):
            cin = out if blk else (64 if stage == 0 else 2 * width)
            act_in = 4.0 * side * side * cin  # bytes per sample entering the block
            for k, (ci, co, ks) in enumerate(((cin, width, 1), (width, width, 3),
                                              (width, out, 1))):
                params = 4.0 * ci * co * ks * ks
                act = 4.0 * side * side * co
                flops = 2.0 * side * side * ci * co * ks * ks
                # a cut inside a block also carries the block input (the residual branch)
                boundary = act + (act_in if k < 2 else 0.0)
                layers.append(_layer(f"s{stage}b{blk}c{k}", params, 3 * act, boundary, flops,
                                     RESNET101_BLOCK_P[stage][blk > 0]))
    layers.append(_layer("head", 4.0 * 2048 * 1000, 4 * 2048, 4 * 1000, 4.1e6,
                         RESNET101_P["head"]))
    return ModelProfile("resnet101-like", tuple(layers), input_bytes_per_sample=4 * 3 * 224 * 224,
                        reference_cpus=1.0)


def amoebanet_d36_like() -> ModelProfile:
    """AmoebaNet-D(36, 256): stem, 36 normal cells in three groups with two reduction cells,
    head (42 layers). Calibrated to the paper's 45 GB of activations at batch 64 [ABS1]."""
    layers = [_layer("stem", 4 * 3 * 256 * 9, 4 * 112 * 112 * 128 * 2, 4 * 56 * 56 * 256, 1e9,
                     AMOEBANET_P["stem"])]
    filters, side = 256, 56
    for group in range(3):
        if group:
            filters, side = filters * 2, side // 2
            layers.append(_layer(f"reduce{group}", 4 * 10 * filters * filters,
                                 4 * side * side * filters * 12, 8 * side * side * filters,
                                 2 * 10 * side * side * filters * filters,
                                 AMOEBANET_REDUCE_P[group - 1]))
        for cell in range(12):
            # a cell reads the two previous cells' outputs: both cross a cut
            layers.append(_layer(f"g{group}c{cell}", 4 * 6 * filters * filters,
                                 4 * side * side * filters * 10, 8 * side * side * filters,
                                 2 * 6 * side * side * filters * filters,
                                 AMOEBANET_NORMAL_P[group][min(cell, 2)]))
    layers.append(_layer("head", 4 * 2048 * 1000, 4 * 2048, 4 * 1000, 4e6, AMOEBANET_P["head"]))
    return ModelProfile("amoebanet-d36-like", tuple(layers),
                        input_bytes_per_sample=4 * 3 * 224 * 224, reference_cpus=1.0)


def bert_large_like(seq: int = 64) -> ModelProfile:
    """BERT-Large at sequence length ``seq``: embeddings, 24 encoder layers, MLM head (26
    layers; 335M parameters)."""
    hidden, vocab = 1024, 30522
    tok = 4.0 * seq * hidden
    layers = [_layer("embed", 4 * (vocab + 512 + 2) * hidden, 2 * tok, tok + 8 * seq, 4 * tok,
                     BERT_LARGE_P["embed"])]
    for i in range(24):
        params = 4 * 12.6e6
        stash = 14 * tok + 4.0 * 16 * seq * seq * 3
        layers.append(_layer(f"enc{i}", params, stash, tok + 8 * seq, 2 * 12.6e6 * seq,
                             BERT_LARGE_P["last" if i == 23 else "encoder"]))
    layers.append(_layer("mlm_head", 4 * (hidden * hidden + vocab), 4 * seq * vocab,
                         4 * seq * vocab, 2 * seq * hidden * vocab, BERT_LARGE_P["head"]))
    return ModelProfile("bert-large-like", tuple(layers), input_bytes_per_sample=16 * seq,
                        reference_cpus=1.0)


SHAPES = {"resnet101": resnet101_like, "amoebanet-d36": amoebanet_d36_like,
          "bert-large": bert_large_like}


def random_profile(seed: int, num_layers: int, dots: bool = False) -> ModelProfile:
    """A small random chain for property tests: MB-scale tensors, 10-300 ms layers.

    ``dots``: most layers (about 4 in 5) also get a dots-mode profile, 10-90 % of the stash
    bytes and 0.9-1.4 times the stash backward (below 1: timing noise, which the planners must
    price as measured), drawn from a second generator so the other fields stay as without.
    """
    rng, dots_rng = random.Random(seed), random.Random(f"{seed}-dots")
    MB = 1 << 20
    layers = tuple(
        LayerProfile(name=f"l{i}", param_bytes=int(rng.uniform(1, 300) * MB),
                     stash_bytes_per_sample=rng.uniform(0.5, 40) * MB,
                     boundary_bytes_per_sample=rng.uniform(0.1, 8) * MB,
                     fwd_alpha=rng.uniform(0, 0.01), fwd_beta=rng.uniform(0.01, 0.3),
                     bwd_alpha=rng.uniform(0, 0.02), bwd_beta=rng.uniform(0.02, 0.6))
        for i in range(num_layers))
    if dots:
        layers = tuple(dataclasses.replace(
            x, dots_stash_bytes_per_sample=x.stash_bytes_per_sample * dots_rng.uniform(0.1, 0.9),
            dots_bwd_alpha=x.bwd_alpha * dots_rng.uniform(0.9, 1.4),
            dots_bwd_beta=x.bwd_beta * dots_rng.uniform(0.9, 1.4))
            if dots_rng.random() < 0.8 else x for x in layers)
    return ModelProfile(f"random{seed}", layers, input_bytes_per_sample=rng.uniform(0.1, 2) * MB,
                        reference_cpus=1.0)
