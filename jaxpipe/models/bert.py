"""BERT (Devlin et al., 2019) with a 2-class sentence-level head, laid out as pipeline layers.

Layers (the pipeline cut units), in order::

    embeddings           word + position + token-type(0) embeddings - LayerNorm - dropout
    layer1 .. layerL     post-LN transformer encoder layers
    head                 pooler (Dense + tanh on the first token) - dropout - Dense to the logits

BERT-Base (L=12, H=768, A=12) has 14 layers, BERT-Large (24, 1024, 16) 26, as in FuncPipe.

The inputs are ``(token_ids, attention_mask)``, both int32 (batch, seq_len), mask 1 on real
tokens and 0 on padding. The mask travels with the hidden states: every layer maps
``(hidden, mask) -> (hidden, mask)`` and the head reads both, so a cut anywhere ships the mask
along (seq_len int32 per sample, next to seq_len * H floats).

Same encoder as the original: GELU (erf form), LayerNorm eps 1e-12, N(0, 0.02) weights, dropout
on embeddings, attention probabilities and both sub-layer outputs. Parameter counts at vocabulary
30522 and 512 positions: 109,483,778 (Base) and 335,143,938 (Large), i.e. Hugging Face's
``BertModel`` plus the 2-class classifier; the papers round them to 110M and 340M. Differences:
one segment only (token type 0 for every token; the token-type table is still there, so the
count matches), and the head is a sequence classifier (as in fine-tuning) instead of FuncPipe's
log-softmax NSP head on a corpus-built vocabulary; the loss is the zoo's cross entropy.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpipe.errors import ModelConfigError
from jaxpipe.models._spec import ModelSpec, token_sampler

__all__ = ["Bert", "BertConfig", "make_spec"]

Hidden = tuple[jax.Array, jax.Array]  # (hidden (B, S, H) float32, mask (B, S) int32)

_init = nn.initializers.normal(0.02)
_Dense = functools.partial(nn.Dense, kernel_init=_init)
_LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-12)


class Embeddings(nn.Module):
    """Token, position and token-type embeddings, summed, normalised and dropped out."""

    vocab_size: int
    hidden: int
    max_positions: int
    type_vocab_size: int
    dropout: float
    train: bool = True

    @nn.compact
    def __call__(self, inputs: Hidden) -> Hidden:
        ids, mask = inputs  # (B, S), (B, S)
        seq_len = ids.shape[1]
        word = nn.Embed(self.vocab_size, self.hidden, embedding_init=_init, name="word")(ids)
        position = nn.Embed(self.max_positions, self.hidden, embedding_init=_init,
                            name="position")(jnp.arange(seq_len)[None, :])
        token_type = nn.Embed(self.type_vocab_size, self.hidden, embedding_init=_init,
                              name="token_type")(jnp.zeros_like(ids))
        x = _LayerNorm()(word + position + token_type)  # (B, S, H)
        return nn.Dropout(self.dropout, deterministic=not self.train)(x), mask


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention over the unmasked keys."""

    hidden: int
    heads: int
    dropout: float
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, s, _ = x.shape
        d = self.hidden // self.heads

        def split(name: str) -> jax.Array:  # (B, S, H) -> (B, heads, S, d)
            y = _Dense(self.hidden, name=name)(x)
            return y.reshape(b, s, self.heads, d).transpose(0, 2, 1, 3)

        q, k, v = split("query"), split("key"), split("value")
        scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(d).astype(x.dtype)  # (B, heads, S, S)
        # Padding keys get a large negative score; finite, so a fully padded row stays NaN-free.
        scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.asarray(-1e9, x.dtype))
        probs = nn.Dropout(self.dropout, deterministic=not self.train)(nn.softmax(scores))
        y = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, self.hidden)  # (B, S, H)
        return _Dense(self.hidden, name="output")(y)


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: attention, add & norm, GELU feed-forward, add & norm."""

    hidden: int
    heads: int
    ffn: int
    dropout: float
    train: bool = True

    @nn.compact
    def __call__(self, inputs: Hidden) -> Hidden:
        x, mask = inputs
        drop = functools.partial(nn.Dropout, self.dropout, deterministic=not self.train)
        y = SelfAttention(self.hidden, self.heads, self.dropout, self.train, name="attention")(
            x, mask)
        x = _LayerNorm(name="attention_norm")(x + drop()(y))
        y = _Dense(self.ffn, name="intermediate")(x)  # (B, S, ffn)
        y = _Dense(self.hidden, name="output")(nn.gelu(y, approximate=False))
        x = _LayerNorm(name="output_norm")(x + drop()(y))
        return x, mask


class Head(nn.Module):
    """Pooler (Dense + tanh of the first token), dropout, then Dense to the logits."""

    hidden: int
    num_classes: int
    dropout: float
    train: bool = True

    @nn.compact
    def __call__(self, inputs: Hidden) -> jax.Array:
        x, _ = inputs
        pooled = jnp.tanh(_Dense(self.hidden, name="pooler")(x[:, 0]))  # (B, H)
        pooled = nn.Dropout(self.dropout, deterministic=not self.train)(pooled)
        return _Dense(self.num_classes, name="classifier")(pooled)  # (B, num_classes)


class Bert(nn.Module):
    """BERT encoder with a sequence-classification head; one top-level module per layer.

    Attributes:
      num_layers: L, encoder layers.
      hidden: H, model width; a multiple of `heads`.
      heads: A, attention heads.
      ffn: feed-forward width (4H in the paper).
      vocab_size: token vocabulary (30522 in the paper).
      max_positions: rows of the position table (512); at least the sequence length.
      type_vocab_size: rows of the token-type table (2).
      num_classes: width of the logits.
      dropout: dropout rate everywhere (0.1 in the paper).
      train: dropout active (True) or not (False); needs a ``dropout`` rng when active.
    """

    num_layers: int
    hidden: int
    heads: int
    ffn: int
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    num_classes: int = 2
    dropout: float = 0.1
    train: bool = True

    def setup(self) -> None:
        if self.hidden % self.heads:
            raise ModelConfigError(f"BERT needs hidden divisible by heads; got "
                                   f"hidden={self.hidden}, heads={self.heads}.")
        self.embeddings = Embeddings(self.vocab_size, self.hidden, self.max_positions,
                                     self.type_vocab_size, self.dropout, self.train,
                                     name="embeddings")
        self.encoder = [EncoderLayer(self.hidden, self.heads, self.ffn, self.dropout, self.train,
                                     name=f"layer{i + 1}") for i in range(self.num_layers)]
        self.head = Head(self.hidden, self.num_classes, self.dropout, self.train, name="head")

    def __call__(self, x: Hidden) -> jax.Array:
        h = self.embeddings(x)  # ((B, S, H), (B, S))
        for layer in self.encoder:
            h = layer(h)
        return self.head(h)  # (B, num_classes)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyper-parameters; `ffn` None means 4 * `hidden`."""

    num_layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int | None = None
    vocab_size: int = 30522
    max_positions: int = 512
    seq_len: int = 128
    num_classes: int = 2
    dropout: float = 0.1


def make_spec(name: str, config: BertConfig) -> ModelSpec:
    """Builds the `ModelSpec` of a BERT with `config`."""
    if config.seq_len > config.max_positions:
        raise ModelConfigError(f"BERT seq_len={config.seq_len} exceeds max_positions="
                         f"{config.max_positions}; raise max_positions or shorten seq_len.")
    input_spec, sampler = token_sampler(config.seq_len, config.vocab_size)
    module = Bert(num_layers=config.num_layers, hidden=config.hidden, heads=config.heads,
                  ffn=config.ffn or 4 * config.hidden, vocab_size=config.vocab_size,
                  max_positions=config.max_positions, num_classes=config.num_classes,
                  dropout=config.dropout)
    return ModelSpec(
        name=name,
        module=module,
        input_spec=input_spec,
        num_classes=config.num_classes,
        has_state=False,
        uses_dropout=config.dropout > 0,
        sampler=sampler,
        config=config,
    )
