"""A decoder-only transformer language model, nested under one wrapper as Flax's lm1b example is.

The module tree (JaxPipe's cut units are found below `decoder`, `jaxpipe.staging.units`)::

    LM
    └── decoder
        ├── embed                 token + learned position embeddings, dropout
        ├── block_0 .. block_L-1  pre-LN block: causal self-attention, GELU MLP, residuals
        │                         (``scan=True``: one ``nn.scan`` named ``blocks`` over L
        │                         blocks with stacked parameters, as large-model code writes it)
        ├── norm                  final LayerNorm
        └── head                  Dense to the vocabulary logits

The inputs are token ids, int32 (batch, seq_len); the logits are (batch, seq_len, vocab) and the
targets the next token at every position (synthetic data: drawn at random). The full config is
BERT-Base-sized (L=12, H=768, A=12, 30522-token vocabulary, sequence 128): 97.9M parameters in
the blocks and embeddings plus the untied head.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpipe.errors import ModelConfigError
from jaxpipe.models._spec import ModelSpec, ids_sampler

__all__ = ["LM", "LMConfig", "make_spec"]

_init = nn.initializers.normal(0.02)
_Dense = functools.partial(nn.Dense, kernel_init=_init)


class Embed(nn.Module):
    """Token and learned position embeddings, summed, then dropout."""

    vocab_size: int
    hidden: int
    seq_len: int
    dropout: float
    train: bool = True

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        tokens = nn.Embed(self.vocab_size, self.hidden, embedding_init=_init, name="tokens")(ids)
        positions = self.param("positions", _init, (self.seq_len, self.hidden))
        x = tokens + positions[None, : ids.shape[1]]  # (B, S, H)
        return nn.Dropout(self.dropout, deterministic=not self.train)(x)


class Block(nn.Module):
    """Pre-LN transformer block with causal multi-head self-attention."""

    hidden: int
    heads: int
    ffn: int
    dropout: float
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, h = x.shape
        d = h // self.heads
        drop = functools.partial(nn.Dropout, self.dropout, deterministic=not self.train)
        y = nn.LayerNorm(name="norm1")(x)
        qkv = _Dense(3 * h, name="qkv")(y).reshape(b, s, 3, self.heads, d)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, A, S, d)
        scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(d).astype(x.dtype)  # (B, A, S, S)
        causal = jnp.tril(jnp.ones((s, s), bool))
        scores = jnp.where(causal, scores, jnp.asarray(-1e9, x.dtype))
        probs = drop()(nn.softmax(scores))
        y = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
        x = x + drop()(_Dense(h, name="proj")(y))
        y = _Dense(self.ffn, name="fc")(nn.LayerNorm(name="norm2")(x))
        return x + drop()(_Dense(h, name="out")(nn.gelu(y)))


class _ScanBlock(Block):
    """`Block` as an `nn.scan` body: (carry, unused) -> (carry, None)."""

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:  # type: ignore[override]
        return Block(self.hidden, self.heads, self.ffn, self.dropout, self.train,
                     name="block")(x), None


class Decoder(nn.Module):
    """Embedding, L blocks (unrolled or one scan), final norm and the logits head."""

    num_layers: int
    hidden: int
    heads: int
    ffn: int
    vocab_size: int
    seq_len: int
    dropout: float
    scan: bool = False
    train: bool = True

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        x = Embed(self.vocab_size, self.hidden, self.seq_len, self.dropout, self.train,
                  name="embed")(ids)
        args = (self.hidden, self.heads, self.ffn, self.dropout, self.train)
        if self.scan:
            stack = nn.scan(_ScanBlock, variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True},
                            length=self.num_layers)
            x, _ = stack(*args, name="blocks")(x, None)
        else:
            for i in range(self.num_layers):
                x = Block(*args, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="norm")(x)
        return _Dense(self.vocab_size, name="head")(x)  # (B, S, vocab)


class LM(nn.Module):
    """The wrapper: everything lives in its one `decoder` child.

    Attributes:
      num_layers: L, transformer blocks.
      hidden: H, model width; a multiple of `heads`.
      heads: A, attention heads.
      ffn: feed-forward width (4H).
      vocab_size: token vocabulary, also the width of the logits.
      seq_len: the longest sequence (rows of the position table).
      dropout: dropout rate on embeddings, attention probabilities and both residual branches.
      scan: the blocks as one `nn.scan` over stacked parameters instead of L submodules.
      train: dropout active; needs a ``dropout`` rng when active.
    """

    num_layers: int
    hidden: int
    heads: int
    ffn: int
    vocab_size: int
    seq_len: int
    dropout: float = 0.1
    scan: bool = False
    train: bool = True

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        return Decoder(self.num_layers, self.hidden, self.heads, self.ffn, self.vocab_size,
                       self.seq_len, self.dropout, self.scan, self.train, name="decoder")(ids)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """LM hyper-parameters; `ffn` None means 4 * `hidden`."""

    num_layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int | None = None
    vocab_size: int = 30522
    seq_len: int = 128
    dropout: float = 0.1
    scan: bool = False


def make_spec(name: str, config: LMConfig) -> ModelSpec:
    """Builds the `ModelSpec` of an LM with `config`."""
    if config.hidden % config.heads:
        raise ModelConfigError(f"the LM needs hidden divisible by heads; got "
                               f"hidden={config.hidden}, heads={config.heads}.")
    input_spec, sampler = ids_sampler(config.seq_len, config.vocab_size)
    module = LM(num_layers=config.num_layers, hidden=config.hidden, heads=config.heads,
                ffn=config.ffn or 4 * config.hidden, vocab_size=config.vocab_size,
                seq_len=config.seq_len, dropout=config.dropout, scan=config.scan)
    return ModelSpec(
        name=name, module=module, input_spec=input_spec, num_classes=config.vocab_size,
        has_state=False, uses_dropout=config.dropout > 0, sampler=sampler, config=config,
        target_shape=(config.seq_len,),
    )
