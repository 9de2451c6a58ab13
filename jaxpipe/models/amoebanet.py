"""AmoebaNet-D(N, F) (Real et al., 2019), as GPipe and torchgpipe train it on ImageNet.

Layers (the pipeline cut units), in order, for N = `num_layers` (a multiple of 3)::

    stem1                        ReLU - conv 3x3/2 - BN                  (H/2, c = F/4)
    stem2, stem3                 reduction cells                          (H/4, H/8)
    cell1_normal1 .. N/3         normal cells
    cell2_reduction              reduction cell                           (H/16)
    cell3_normal1 .. N/3         normal cells
    cell4_reduction              reduction cell                           (H/32)
    cell5_normal1 .. N/3         normal cells
    classify                     global average pool - Dense

That is N + 6 layers: 24 for AmoebaNet-D(18, F), 42 for (36, F), as in FuncPipe.

Parameters at 1000 classes: 122,470,120 for (18, 256) and 236,194,024 for (36, 256). GPipe's
Table 1 writes the same models as (L, D) with L = N/3 normal cells per group; its (6, 208) "82M",
(6, 416) "318M" and (6, 544) "542M" come out here as 81.5M, 319.0M and 542.7M.

Every cell reads the previous TWO cell outputs and hands on ``(its output, its first input)``, so
the second-to-last output crosses every cut: the pair ``(prev, prev_prev)`` is the value that
flows between layers (the stem emits ``(x, x)``). Inside a cell, with ``h0 = reduce1(prev)`` and
``h1 = reduce2(prev_prev)`` (1x1 convs that bring both to the cell's width ``c``, or a factorised
stride-2 reduction when ``prev_prev`` is twice as large)::

    h_{k+2} = op_{2k}(h_{i_{2k}}) + op_{2k+1}(h_{i_{2k+1}})      k = 0..4
    output  = concat(h_j for j in CONCAT)                      along channels

with the fixed AmoebaNet-D genotype below (the TensorFlow reference's, as torchgpipe uses it). In
a reduction cell, ops that read ``h0`` or ``h1`` have stride 2. The width ``c`` starts at F/4 and
doubles at every reduction cell (stem2, stem3 included).

Differences from the originals:

- ``max_pool_3x3`` is a real max-pool; torchgpipe's benchmark builds it as an average pool.
- No auxiliary head and no drop-path (neither does torchgpipe); no dropout before the classifier.
- ``none`` with stride 2 is torchgpipe's factorised reduction (two offset stride-2 1x1 convs),
  where the TensorFlow reference uses one stride-2 1x1 conv.
- The genotype has no separable convolutions: AmoebaNet-D uses 1x1, 3x3 (bottlenecked) and
  1x7-then-7x1 convs plus pooling; separable convs belong to AmoebaNet-A.
- NHWC layout; the classifier averages globally (equal to torchgpipe's 7x7 pool at 224 pixels).
  The input side must be a multiple of 32.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpipe.errors import ModelConfigError
from jaxpipe.models._spec import ModelSpec, image_sampler

__all__ = ["AmoebaNetConfig", "AmoebaNetD", "make_spec"]

State = tuple[jax.Array, jax.Array]  # (prev, prev_prev) cell outputs, NHWC

# (input index, op name) pairs; ops 2k and 2k+1 are summed into hidden state k + 2.
NORMAL_OPS = (
    (1, "conv_1x1"), (1, "max_pool_3x3"),
    (1, "none"), (0, "conv_1x7_7x1"),
    (0, "conv_1x1"), (0, "conv_1x7_7x1"),
    (2, "max_pool_3x3"), (2, "none"),
    (1, "avg_pool_3x3"), (5, "conv_1x1"),
)
NORMAL_CONCAT = (0, 3, 4, 6)
REDUCTION_OPS = (
    (0, "max_pool_2x2"), (0, "max_pool_3x3"),
    (2, "none"), (1, "conv_3x3"),
    (2, "conv_1x7_7x1"), (2, "max_pool_3x3"),
    (3, "none"), (1, "max_pool_2x2"),
    (2, "avg_pool_3x3"), (3, "conv_1x1"),
)
REDUCTION_CONCAT = (4, 5, 6)


class _ReluConvBN(nn.Module):
    """ReLU - conv (no bias, PyTorch-style symmetric padding) - BN."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = tuple((k // 2, k // 2) for k in self.kernel)
        x = nn.Conv(self.features, self.kernel, self.stride, padding=pad, use_bias=False)(
            nn.relu(x))
        return nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5)(x)


class FactorizedReduce(nn.Module):
    """Halves H and W: two stride-2 1x1 convs, one shifted by a pixel, concatenated, then BN."""

    features: int
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(x)
        half = self.features // 2
        a = nn.Conv(half, (1, 1), (2, 2), use_bias=False)(x)
        shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
        b = nn.Conv(self.features - half, (1, 1), (2, 2), use_bias=False)(shifted)
        x = jnp.concatenate([a, b], axis=-1)
        return nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5)(x)


class CellOp(nn.Module):
    """One genotype operation at width `features` (input and output) and `stride`."""

    op: str
    features: int
    stride: int = 1
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, s, train = self.features, self.stride, self.train
        if self.op == "none":
            return x if s == 1 else FactorizedReduce(c, train=train)(x)
        # Flax leaves the pools' `padding` unannotated, so pyright takes it for a str (from the
        # default 'VALID'); Flax documents and accepts (low, high) pairs as well.
        if self.op == "avg_pool_3x3":
            return nn.avg_pool(x, (3, 3), (s, s), ((1, 1), (1, 1)),  # pyright: ignore[reportArgumentType]
                               count_include_pad=False)
        if self.op == "max_pool_3x3":
            return nn.max_pool(x, (3, 3), (s, s), ((1, 1), (1, 1)))  # pyright: ignore[reportArgumentType]
        if self.op == "max_pool_2x2":
            return nn.max_pool(x, (2, 2), (s, s))
        if self.op == "conv_1x1":
            return _ReluConvBN(c, (1, 1), (s, s), train=train)(x)
        if self.op == "conv_3x3":  # bottlenecked to c/4
            x = _ReluConvBN(c // 4, train=train)(x)
            x = _ReluConvBN(c // 4, (3, 3), (s, s), train=train)(x)
            return _ReluConvBN(c, train=train)(x)
        if self.op == "conv_1x7_7x1":  # bottlenecked to c/4
            x = _ReluConvBN(c // 4, train=train)(x)
            x = _ReluConvBN(c // 4, (1, 7), (1, s), train=train)(x)
            x = _ReluConvBN(c // 4, (7, 1), (s, 1), train=train)(x)
            return _ReluConvBN(c, train=train)(x)
        raise ModelConfigError(f"unknown AmoebaNet operation {self.op!r}")


class Cell(nn.Module):
    """A normal or reduction cell: ``(prev, prev_prev) -> (output, prev)``.

    Attributes:
      features: the cell's width c; the output has ``len(concat) * c`` channels.
      reduction: a reduction cell (halves H and W) rather than a normal one.
      reduction_prev: `prev_prev` is twice the spatial size of `prev`.
      train: BatchNorm mode.
    """

    features: int
    reduction: bool
    reduction_prev: bool
    train: bool = True

    @nn.compact
    def __call__(self, states: State) -> State:
        prev, prev_prev = states
        c, train = self.features, self.train
        h0 = _ReluConvBN(c, train=train, name="reduce1")(prev)
        if self.reduction_prev:
            h1 = FactorizedReduce(c, train=train, name="reduce2")(prev_prev)
        elif prev_prev.shape[-1] != c:
            h1 = _ReluConvBN(c, train=train, name="reduce2")(prev_prev)
        else:
            h1 = prev_prev
        ops, concat = (REDUCTION_OPS, REDUCTION_CONCAT) if self.reduction else (
            NORMAL_OPS, NORMAL_CONCAT)
        hidden = [h0, h1]
        for k in range(0, len(ops), 2):
            pair = []
            for (i, op) in ops[k:k + 2]:
                stride = 2 if self.reduction and i < 2 else 1
                pair.append(CellOp(op, c, stride, train=train, name=f"op{k + len(pair)}")(
                    hidden[i]))
            hidden.append(pair[0] + pair[1])
        return jnp.concatenate([hidden[j] for j in concat], axis=-1), prev


class Stem(nn.Module):
    """ReLU - conv 3x3 stride 2 - BN; emits the pair ``(x, x)`` the first cell reads."""

    features: int
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> State:
        x = _ReluConvBN(self.features, (3, 3), (2, 2), train=self.train)(x)
        return x, x


class Classify(nn.Module):
    """Global average pool of the last cell output, then Dense to the logits."""

    num_classes: int

    @nn.compact
    def __call__(self, states: State) -> jax.Array:
        return nn.Dense(self.num_classes)(jnp.mean(states[0], axis=(1, 2)))


class AmoebaNetD(nn.Module):
    """AmoebaNet-D(N, F): stems, 3 groups of N/3 normal cells between reductions, classifier.

    Attributes:
      num_layers: N, the number of normal cells; a multiple of 3.
      filters: F; the first cells are F/4 wide, and reductions double the width.
      num_classes: width of the logits.
      train: BatchNorm mode.
    """

    num_layers: int
    filters: int
    num_classes: int
    train: bool = True

    def setup(self) -> None:
        if self.num_layers % 3 or self.num_layers <= 0:
            raise ModelConfigError(f"AmoebaNet-D needs num_layers a positive multiple of 3; "
                             f"got {self.num_layers}.")
        c = self.filters // 4
        self.stem1 = Stem(c, train=self.train, name="stem1")
        # (layer name, is reduction); the width doubles at each reduction cell.
        plan = [("stem2", True), ("stem3", True)]
        for group in range(3):
            if group:
                plan.append((f"cell{2 * group}_reduction", True))
            plan += [(f"cell{2 * group + 1}_normal{i + 1}", False)
                     for i in range(self.num_layers // 3)]
        cells, reduction_prev = [], False
        for name, reduction in plan:
            c *= 2 if reduction else 1
            cells.append(Cell(c, reduction, reduction_prev, train=self.train, name=name))
            reduction_prev = reduction
        self.cells = cells
        self.classify = Classify(self.num_classes, name="classify")

    def __call__(self, x: jax.Array) -> jax.Array:
        states = self.stem1(x)  # 2 x (B, H/2, W/2, F/4)
        for cell in self.cells:
            states = cell(states)  # (output, previous output)
        return self.classify(states)  # (B, num_classes)


@dataclasses.dataclass(frozen=True)
class AmoebaNetConfig:
    """AmoebaNet-D(N, F) hyper-parameters; `image_size` is the side of the square RGB input."""

    num_layers: int = 18
    filters: int = 256
    image_size: int = 224
    num_classes: int = 1000


def make_spec(name: str, config: AmoebaNetConfig) -> ModelSpec:
    """Builds the `ModelSpec` of an AmoebaNet-D with `config`."""
    if config.image_size % 32:
        raise ModelConfigError(f"AmoebaNet-D halves the image 5 times: image_size must be a "
                               f"multiple of 32; got {config.image_size}.")
    input_spec, sampler = image_sampler(config.image_size)
    module = AmoebaNetD(num_layers=config.num_layers, filters=config.filters,
                        num_classes=config.num_classes)
    return ModelSpec(
        name=name,
        module=module,
        input_spec=input_spec,
        num_classes=config.num_classes,
        has_state=True,
        uses_dropout=False,
        sampler=sampler,
        config=config,
    )
