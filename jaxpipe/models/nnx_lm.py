"""A decoder-only transformer language model written in Flax NNX, blocks in an `nnx.List`.

The module tree (attribute paths, JaxPipe's scope paths)::

    NnxLM
    ├── embed       token + learned position embeddings, dropout
    ├── blocks      nnx.List: blocks/0 .. blocks/L-1, pre-LN causal self-attention + GELU MLP
    ├── norm        final LayerNorm
    └── head        Linear to the vocabulary logits

The same architecture, sizes and data as the linen `lm` family (`jaxpipe.models.lm`); dropout
draws from the module's own `nnx.Rngs`, whose counters and keys are state.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpipe.errors import ModelConfigError
from jaxpipe.models._spec import ModelSpec, ids_sampler
from jaxpipe.models.lm import LMConfig

__all__ = ["NnxLM", "make_spec"]

_init = nnx.initializers.normal(0.02)


class Embed(nnx.Module):
    """Token and learned position embeddings, summed, then dropout."""

    def __init__(self, vocab_size: int, hidden: int, seq_len: int, dropout: float,
                 rngs: nnx.Rngs):
        self.tokens = nnx.Embed(vocab_size, hidden, embedding_init=_init, rngs=rngs)
        self.positions = nnx.Param(_init(rngs.params(), (seq_len, hidden)))
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.tokens(ids) + self.positions[...][None, : ids.shape[1]]  # (B, S, H)
        return self.drop(x)


class Block(nnx.Module):
    """Pre-LN transformer block with causal multi-head self-attention."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, rngs: nnx.Rngs):
        dense = functools.partial(nnx.Linear, kernel_init=_init, rngs=rngs)
        self.heads = heads
        self.norm1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.qkv = dense(hidden, 3 * hidden)
        self.proj = dense(hidden, hidden)
        self.norm2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.fc = dense(hidden, ffn)
        self.out = dense(ffn, hidden)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, h = x.shape
        d = h // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(b, s, 3, self.heads, d)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, A, S, d)
        scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(d).astype(x.dtype)  # (B, A, S, S)
        scores = jnp.where(jnp.tril(jnp.ones((s, s), bool)), scores, jnp.asarray(-1e9, x.dtype))
        probs = self.drop(nnx.softmax(scores))
        y = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.out(nnx.gelu(self.fc(self.norm2(x)))))


class NnxLM(nnx.Module):
    """Embedding, blocks in an `nnx.List`, final norm, head; built in training mode."""

    def __init__(self, config: LMConfig, rngs: nnx.Rngs):
        ffn = config.ffn or 4 * config.hidden
        self.embed = Embed(config.vocab_size, config.hidden, config.seq_len, config.dropout, rngs)
        self.blocks = nnx.List([Block(config.hidden, config.heads, ffn, config.dropout, rngs)
                                for _ in range(config.num_layers)])
        self.norm = nnx.LayerNorm(config.hidden, rngs=rngs)
        self.head = nnx.Linear(config.hidden, config.vocab_size, kernel_init=_init, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, S, vocab)


def _build(config: LMConfig, key: jax.Array) -> NnxLM:
    return NnxLM(config, nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1)))


def make_spec(name: str, config: LMConfig) -> ModelSpec:
    """Builds the `ModelSpec` of an NNX LM with `config` (`build(key)` returns the module)."""
    if config.hidden % config.heads or config.scan:
        raise ModelConfigError(f"the NNX LM needs hidden divisible by heads and scan=False; got "
                               f"hidden={config.hidden}, heads={config.heads}, "
                               f"scan={config.scan}.")
    input_spec, sampler = ids_sampler(config.seq_len, config.vocab_size)
    return ModelSpec(
        name=name, module=functools.partial(_build, config), input_spec=input_spec,
        num_classes=config.vocab_size, has_state=config.dropout > 0,  # the Rngs' counters
        uses_dropout=config.dropout > 0, sampler=sampler, config=config, kind="nnx",
        target_shape=(config.seq_len,),
    )
