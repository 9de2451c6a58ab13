"""A small CNN for the digits at 32x32 whose work and weights sit at opposite ends: the default
job's model (`jaxpipe.runtime.first_job`).

Layers (the pipeline cut units), in order, with one sample's multiply-adds and weights at the
default config (32x32x3 input, 64 channels throughout, Dense widths 2048 and 4096)::

    conv1   Conv 3x3 3->64 + ReLU, 32x32                  1.8 M MACs      1.8 k weights
    conv2   Conv 3x3 64->64 + ReLU, 32x32, max-pool 2    37.7 M MACs     37 k weights
    conv3   Conv 3x3 64->64 + ReLU, 16x16                 9.4 M MACs     37 k weights
    conv4   Conv 3x3 64->64 + ReLU, 16x16, max-pool 2     9.4 M MACs     37 k weights
    dense1  Dense 4096->2048 + ReLU                       8.4 M MACs    8.4 M weights
    dense2  Dense 2048->4096 + ReLU                       8.4 M MACs    8.4 M weights
    head    Dense 4096->10                                0.04 M MACs    41 k weights

The convolutions do most of the work on 0.2 % of the weights (450 kB); the two Dense layers
hold the rest (67 MB) and, read whole by every micro-batch, take a time per micro-batch that
hardly depends on its size. Replicating the convolutions costs an all-reduce of 450 kB;
replicating a Dense layer one of 34 MB. No BatchNorm or dropout, so evaluation is the training
forward.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jaxpipe.models._spec import ModelSpec, image_sampler

__all__ = ["DigitsCNN", "DigitsCNNConfig", "make_spec"]


class ConvBlock(nn.Module):
    """A 3x3 convolution and ReLU, then a 2x2 max-pool when `pool`."""

    features: int
    pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME")(x))
        return nn.max_pool(x, (2, 2), strides=(2, 2)) if self.pool else x


class DenseBlock(nn.Module):
    """Flatten (a no-op on a flat input), Dense + ReLU: a weight-heavy layer."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))


class DigitsCNN(nn.Module):
    """Four convolutions (pooling after the second and fourth), wide Dense layers, a linear
    classifier; one top-level module per layer.

    Attributes:
      widths: the four convolutions' output channels.
      hidden: the Dense layers' widths, in order (the first flattens the 8x8 feature map).
      num_classes: width of the logits.
      train: unused (no dropout or BatchNorm); kept for the zoo contract.
    """

    widths: tuple[int, int, int, int]
    hidden: tuple[int, ...]
    num_classes: int
    train: bool = True

    def setup(self) -> None:
        self.convs = [ConvBlock(w, pool=i % 2 == 1, name=f"conv{i + 1}")
                      for i, w in enumerate(self.widths)]
        self.dense = [DenseBlock(w, name=f"dense{i + 1}") for i, w in enumerate(self.hidden)]
        self.head = nn.Dense(self.num_classes, name="head")

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = conv(x)  # (B, H, W, widths[i]); H and W halve after conv2 and conv4
        for dense in self.dense:
            x = dense(x)  # (B, hidden[i])
        return self.head(x)  # (B, num_classes)


@dataclasses.dataclass(frozen=True)
class DigitsCNNConfig:
    """DigitsCNN hyper-parameters; `image_size` is the input's side (a multiple of 8)."""

    image_size: int = 32
    widths: tuple[int, int, int, int] = (64, 64, 64, 64)
    hidden: tuple[int, ...] = (2048, 4096)
    num_classes: int = 10


def make_spec(name: str, config: DigitsCNNConfig) -> ModelSpec:
    """Builds the `ModelSpec` of a DigitsCNN with `config`."""
    input_spec, sampler = image_sampler(config.image_size)
    return ModelSpec(
        name=name,
        module=DigitsCNN(widths=tuple(config.widths), hidden=tuple(config.hidden),  # type: ignore[arg-type]
                         num_classes=config.num_classes),
        input_spec=input_spec,
        num_classes=config.num_classes,
        has_state=False,
        uses_dropout=False,
        sampler=sampler,
        config=config,
    )
