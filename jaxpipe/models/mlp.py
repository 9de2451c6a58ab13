"""A multi-layer perceptron, sized by default for the digits dataset (64 features, 10 classes).

Layers (the pipeline cut units), in order::

    hidden1 .. hiddenK   Dense + ReLU each
    head                 Dense to the logits
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jaxpipe.models._spec import ModelSpec, feature_sampler

__all__ = ["MLP", "MLPConfig", "make_spec"]


class DenseBlock(nn.Module):
    """Dense followed by ReLU."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(nn.Dense(self.features)(x))


class MLP(nn.Module):
    """Dense+ReLU blocks, then a linear classifier; one top-level module per block.

    Attributes:
      hidden: width of each hidden block, in order.
      num_classes: width of the logits.
      train: unused (the MLP has no dropout or BatchNorm); kept for the zoo contract.
    """

    hidden: tuple[int, ...]
    num_classes: int
    train: bool = True

    def setup(self) -> None:
        self.blocks = [DenseBlock(w, name=f"hidden{i + 1}") for i, w in enumerate(self.hidden)]
        self.head = nn.Dense(self.num_classes, name="head")

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)  # (B, hidden[i])
        return self.head(x)  # (B, num_classes)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """MLP hyper-parameters; `features` is the input width."""

    features: int = 64
    hidden: tuple[int, ...] = (256, 256, 256)
    num_classes: int = 10


def make_spec(name: str, config: MLPConfig) -> ModelSpec:
    """Builds the `ModelSpec` of an MLP with `config`."""
    input_spec, sampler = feature_sampler(config.features)
    return ModelSpec(
        name=name,
        module=MLP(hidden=tuple(config.hidden), num_classes=config.num_classes),
        input_spec=input_spec,
        num_classes=config.num_classes,
        has_state=False,
        uses_dropout=False,
        sampler=sampler,
        config=config,
    )
