"""A CNN written in Flax NNX: convolution blocks with BatchNorm and Dropout in an `nnx.List`.

The module tree (NNX's attribute paths are JaxPipe's scope paths, `jaxpipe.staging.nnx_trace`)::

    CNN
    ├── blocks        nnx.List: blocks/0 .. blocks/N-1, each Conv 3x3 - BatchNorm - ReLU -
    │                 Dropout, then a 2x2 max-pool where the next block widens
    └── head          global average pool, Linear to the logits

BatchNorm's running statistics and the Dropout streams' counters and keys are the model's
state (`nnx.BatchStat`, `nnx.RngCount`, `nnx.RngKey`); JaxPipe threads them through
micro-batches. The full config is a VGG-like 8-block net on 32x32x3 images, 10 classes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from flax import nnx

from jaxpipe.errors import ModelConfigError
from jaxpipe.models._spec import ModelSpec, image_sampler

__all__ = ["CNN", "CNNConfig", "make_spec"]


class ConvBlock(nnx.Module):
    """Conv 3x3 (same padding) - BatchNorm - ReLU - Dropout, optionally a 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, pool: bool, dropout: float, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(cout, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.pool = pool

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.drop(nnx.relu(self.norm(self.conv(x))))  # (B, H, W, cout)
        return nnx.max_pool(y, (2, 2), strides=(2, 2)) if self.pool else y


class Head(nnx.Module):
    """Global average pool, then Linear to the logits."""

    def __init__(self, width: int, num_classes: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(x.mean(axis=(1, 2)))  # (B, num_classes)


class CNN(nnx.Module):
    """Convolution blocks in an `nnx.List`, then the head; built in training mode."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, dropout: float,
                 rngs: nnx.Rngs, channels: int = 3):
        cins = (channels, *widths[:-1])
        pools = [b != a for a, b in zip(widths, (*widths[1:], widths[-1]))]
        self.blocks = nnx.List([ConvBlock(cin, cout, pool, dropout, rngs)
                                for cin, cout, pool in zip(cins, widths, pools)])
        self.head = Head(widths[-1], num_classes, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """CNN hyper-parameters: one block per entry of `widths`."""

    widths: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 512, 512)
    image_size: int = 32
    num_classes: int = 10
    dropout: float = 0.1


def _build(config: CNNConfig, key: jax.Array) -> CNN:
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    return CNN(tuple(config.widths), config.num_classes, config.dropout, rngs)


def make_spec(name: str, config: CNNConfig) -> ModelSpec:
    """Builds the `ModelSpec` of an NNX CNN with `config` (`build(key)` returns the module)."""
    pools = sum(b != a for a, b in zip(config.widths, config.widths[1:]))
    if not config.widths or config.image_size % (2 ** pools):
        raise ModelConfigError(f"the CNN halves the image {pools} times; image_size="
                               f"{config.image_size} must be a multiple of {2 ** pools}.")
    input_spec, sampler = image_sampler(config.image_size)
    return ModelSpec(
        name=name, module=functools.partial(_build, config), input_spec=input_spec,
        num_classes=config.num_classes, has_state=True, uses_dropout=config.dropout > 0,
        sampler=sampler, config=config, kind="nnx",
    )
