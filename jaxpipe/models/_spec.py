"""`ModelSpec`: a zoo model together with its inputs, synthetic data and loss.

Every model in the zoo obeys one contract, which the tracer and splitter rely on:

- it is a `flax.linen.Module` whose `__call__(self, x)` takes only the inputs pytree and returns
  the logits, with training behaviour in a dataclass field `train: bool = True`;
- all computation happens inside named top-level submodules, in execution order, so that each
  jaxpr equation's `source_info.name_stack` reads `<Model>/<layer>/...`: a pipeline "layer" is
  the run of equations under one top-level name;
- BatchNorm statistics live in the `batch_stats` collection, dropout draws from the `dropout`
  rng stream.

Since JaxPipe finds cut units at any depth and in NNX models too (`jaxpipe.staging.units`), the
newer families relax the first two points: the `lm` family nests everything under one `decoder`
submodule (and `lm-scan` scans its blocks), and an NNX family (`kind="nnx"`) is built by
`build(key)` as an `nnx.Module` holding its own variables and `nnx.Rngs` (trace it with
`jaxpipe.trace(spec.build(key), None, batch, spec.loss_fn)`). Language models score every
position: their targets have `target_shape` (the sequence) per sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpipe import _jax_compat as jc
from jaxpipe.errors import ModelConfigError
from jaxpipe.tree import PyTree

__all__: list[str] = []

Inputs = jax.Array | tuple[jax.Array, ...]  # an array, or a tuple (BERT: token ids and mask)
InputSpec = jax.ShapeDtypeStruct | tuple[jax.ShapeDtypeStruct, ...]  # one sample of `Inputs`
Sampler = Callable[[jax.Array, int], Inputs]

_RUN_ONCE = {"xla_backend_optimization_level": 0}  # XLA options for programs that run once


def cross_entropy_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean softmax cross entropy of `logits` (batch, classes) against integer `targets`.

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(cross_entropy_loss(jnp.zeros((2, 4)), jnp.array([0, 3]))), 4)  # log 4
      1.3863
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A zoo model, what it eats and how it is scored; built by `jaxpipe.models.get`.

    Attributes:
      name: the registry name, e.g. ``"resnet50-tiny"``.
      module: the Flax module (``train=True``); ``module.apply(variables, inputs)`` gives the
        logits, shape (batch, num_classes).
      input_spec: a pytree of `jax.ShapeDtypeStruct` describing ONE sample (no batch axis), the
        same structure as the module's inputs.
      num_classes: width of the logits; targets are int32 in ``[0, num_classes)``.
      has_state: whether the model keeps a ``batch_stats`` collection (BatchNorm).
      uses_dropout: whether training mode needs a ``dropout`` rng.
      loss_fn: ``loss_fn(logits, targets) -> scalar``, the mean over the batch.
      sampler: ``sampler(key, batch_size) -> inputs``, synthetic inputs; use `make_batch`.
      config: the family's frozen config the model was built from (for reports).
      kind: ``"linen"``, or ``"nnx"``: then `module` is a builder, and `build` returns the
        `nnx.Module` (in training mode) in place of `init`'s variables.
      target_shape: the shape of one sample's targets; ``()`` for a class, ``(seq_len,)`` for
        a language model's next tokens.
    """

    name: str
    module: nn.Module | Callable[[jax.Array], nnx.Module]
    input_spec: InputSpec
    num_classes: int
    has_state: bool
    uses_dropout: bool
    sampler: Sampler = dataclasses.field(repr=False)
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy_loss
    config: object = None
    kind: str = "linen"
    target_shape: tuple[int, ...] = ()

    def make_batch(self, key: jax.Array, batch_size: int) -> tuple[Inputs, jax.Array]:
        """Returns synthetic ``(inputs, targets)`` with a leading batch axis on every leaf."""
        k_inputs, k_targets = jax.random.split(key)
        inputs = self.sampler(k_inputs, batch_size)
        targets = jax.random.randint(k_targets, (batch_size, *self.target_shape), 0,
                                     self.num_classes, jnp.int32)
        return inputs, targets

    def build(self, key: jax.Array) -> nnx.Module:
        """Returns an NNX family's module, its variables and `nnx.Rngs` drawn from `key`."""
        if self.kind != "nnx" or isinstance(self.module, nn.Module):
            raise ModelConfigError(f"{self.name} is a linen model; use init(key) for its "
                                   "variables")
        return self.module(key)

    def init(self, key: jax.Array, batch_size: int = 1) -> dict[str, PyTree]:
        """Returns the variables (``params``, and ``batch_stats`` if `has_state`).

        Traceable: ``jax.eval_shape(spec.init, key)`` sizes a full model without allocating it.
        """
        if self.kind == "nnx":
            raise ModelConfigError(
                f"{self.name} is an NNX model, which holds its own variables: build it with "
                "spec.build(key) and trace it with jaxpipe.trace(model, None, batch, loss_fn)")
        # Inference mode: same variables, but no dropout rng or batch statistics needed. One
        # jitted program (op-by-op initialisation compiles every op separately), compiled
        # without XLA's backend optimisations: they triple the compile time of a program that
        # runs once.
        assert isinstance(self.module, nn.Module)
        module = self.module.clone(train=False)

        def init(key: jax.Array) -> dict[str, PyTree]:
            k_data, k_params = jax.random.split(key)
            inputs, _ = self.make_batch(k_data, batch_size)
            return dict(module.init(k_params, inputs))

        if isinstance(key, jc.Tracer):  # under eval_shape or another transformation
            return init(key)
        return jax.jit(init, compiler_options=_RUN_ONCE)(key)

    def rngs(self, key: jax.Array) -> dict[str, jax.Array] | None:
        """Returns the rng dict ``apply`` needs in training mode, or None if there is none."""
        return {"dropout": key} if self.uses_dropout and self.kind == "linen" else None


def image_sampler(size: int, channels: int = 3) -> tuple[jax.ShapeDtypeStruct, Sampler]:
    """Input spec and sampler of NHWC float32 images drawn from a standard normal."""

    def sample(key: jax.Array, batch_size: int) -> jax.Array:
        return jax.random.normal(key, (batch_size, size, size, channels), jnp.float32)

    return jax.ShapeDtypeStruct((size, size, channels), jnp.float32), sample


def feature_sampler(features: int) -> tuple[jax.ShapeDtypeStruct, Sampler]:
    """Input spec and sampler of float32 feature vectors drawn from a standard normal."""

    def sample(key: jax.Array, batch_size: int) -> jax.Array:
        return jax.random.normal(key, (batch_size, features), jnp.float32)

    return jax.ShapeDtypeStruct((features,), jnp.float32), sample


def token_sampler(
    seq_len: int, vocab_size: int
) -> tuple[tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct], Sampler]:
    """Input spec and sampler of ``(token_ids, attention_mask)``, both int32 (batch, seq_len).

    Each sequence has a random length in ``[1, seq_len]``: the mask is 1 on the first `length`
    positions and 0 after, and padded positions hold token id 0.
    """

    def sample(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        k_ids, k_len = jax.random.split(key)
        ids = jax.random.randint(k_ids, (batch_size, seq_len), 1, vocab_size, jnp.int32)
        lengths = jax.random.randint(k_len, (batch_size, 1), 1, seq_len + 1, jnp.int32)
        mask = (jnp.arange(seq_len, dtype=jnp.int32)[None, :] < lengths).astype(jnp.int32)
        return ids * mask, mask

    spec = jax.ShapeDtypeStruct((seq_len,), jnp.int32)
    return (spec, spec), sample


def ids_sampler(seq_len: int, vocab_size: int) -> tuple[jax.ShapeDtypeStruct, Sampler]:
    """Input spec and sampler of int32 token ids (batch, seq_len), uniform over the vocabulary."""

    def sample(key: jax.Array, batch_size: int) -> jax.Array:
        return jax.random.randint(key, (batch_size, seq_len), 0, vocab_size, jnp.int32)

    return jax.ShapeDtypeStruct((seq_len,), jnp.int32), sample
