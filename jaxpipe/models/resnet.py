"""ResNet-18/50/101 (He et al., 2016) with BatchNorm, laid out as pipeline layers.

Layers (the pipeline cut units), in order::

    stem                 conv 7x7/2 - BN - ReLU - max-pool 3x3/2
    layer1_block1 ..     one residual block each (basic for ResNet-18, bottleneck for 50/101);
    layer4_blockN          the first block of layers 2-4 halves the spatial size
    head                 global average pool - Dense to the logits

ResNet-18 has 8 blocks (10 layers), ResNet-50 16 (18 layers), ResNet-101 33 (35 layers).

Same architecture as torchvision's ResNet ("v1.5": the bottleneck strides on its 3x3 conv, the
projection shortcut is a strided 1x1 conv + BN, paddings as in PyTorch), so the parameter counts
match torchvision's: 11,689,512 / 25,557,032 / 44,549,160 at 1000 classes. Differences: the
layout is NHWC; BatchNorm momentum 0.9 is PyTorch's 0.1 in Flax's convention. FuncPipe flattens
each bottleneck into 9 modules (304 layers for ResNet-101); here a block is one layer (35), which
`coarsen` or a planner can only merge, not split.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpipe.models._spec import ModelSpec, image_sampler

__all__ = ["ResNet", "ResNetConfig", "make_spec"]


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # PyTorch-style symmetric padding (k // 2 each side) rather than Flax's 'SAME', which pads a
    # strided conv asymmetrically.
    return ((k // 2, k // 2), (k // 2, k // 2))


class _ConvBN(nn.Module):
    """Conv (no bias) then BatchNorm, optionally ReLU."""

    features: int
    kernel: int
    stride: int = 1
    relu: bool = True
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                    padding=_pad(self.kernel), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5)(x)
        return nn.relu(x) if self.relu else x


class Stem(nn.Module):
    """conv 7x7 stride 2 - BN - ReLU - max-pool 3x3 stride 2: (B, H, W, 3) -> (B, H/4, W/4, C)."""

    features: int
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _ConvBN(self.features, 7, 2, train=self.train)(x)
        # Flax leaves max_pool's `padding` unannotated (pyright infers str from 'VALID'); Flax
        # documents and accepts (low, high) pairs as well.
        return nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3))  # pyright: ignore[reportArgumentType]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with a residual: the block of ResNet-18/34. Output width = `features`."""

    features: int
    stride: int = 1
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(_ConvBN, train=self.train)
        y = conv(self.features, 3, self.stride)(x)
        y = conv(self.features, 3, relu=False)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.stride, relu=False, name="shortcut")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (strided) - 1x1 expand, with a residual. Output width = 4 `features`."""

    features: int
    stride: int = 1
    train: bool = True
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(_ConvBN, train=self.train)
        out = self.features * self.expansion
        y = conv(self.features, 1)(x)
        y = conv(self.features, 3, self.stride)(y)
        y = conv(out, 1, relu=False)(y)
        if self.stride != 1 or x.shape[-1] != out:
            x = conv(out, 1, self.stride, relu=False, name="shortcut")(x)
        return nn.relu(x + y)


class Head(nn.Module):
    """Global average pool then Dense: (B, H, W, C) -> (B, num_classes)."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class ResNet(nn.Module):
    """A ResNet: stem, residual blocks in four stages, head; one top-level module per block.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
      bottleneck: bottleneck blocks (ResNet-50/101) or basic blocks (ResNet-18/34).
      width: channels of the stem and of the first stage's convs (64 in the paper); each later
        stage doubles it.
      num_classes: width of the logits.
      train: BatchNorm uses batch statistics (True) or the running averages (False).
    """

    stage_sizes: tuple[int, ...]
    bottleneck: bool
    width: int
    num_classes: int
    train: bool = True

    def setup(self) -> None:
        block_cls = Bottleneck if self.bottleneck else BasicBlock
        self.stem = Stem(self.width, train=self.train, name="stem")
        blocks = []
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block_cls(self.width * 2**i, stride, train=self.train,
                                        name=f"layer{i + 1}_block{j + 1}"))
        self.blocks = blocks
        self.head = Head(self.num_classes, name="head")

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stem(x)  # (B, H/4, W/4, width)
        for block in self.blocks:
            x = block(x)  # (B, H/4/2^i, W/4/2^i, width*2^i*expansion)
        return self.head(x)  # (B, num_classes)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """ResNet hyper-parameters; `image_size` is the side of the square RGB input."""

    stage_sizes: tuple[int, ...] = (3, 4, 23, 3)
    bottleneck: bool = True
    width: int = 64
    image_size: int = 224
    num_classes: int = 1000


def make_spec(name: str, config: ResNetConfig) -> ModelSpec:
    """Builds the `ModelSpec` of a ResNet with `config`."""
    input_spec, sampler = image_sampler(config.image_size)
    module = ResNet(stage_sizes=tuple(config.stage_sizes), bottleneck=config.bottleneck,
                    width=config.width, num_classes=config.num_classes)
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
