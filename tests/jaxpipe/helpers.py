"""Small models and comparisons shared by the jaxpipe tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def max_relative_error(actual, expected) -> float:
    """max |a - e| over every leaf, relative to the largest |e| of the whole tree.

    A per-leaf ratio is meaningless for leaves whose exact gradient is zero (a Dense bias in
    front of BatchNorm), so the scale is the tree's.
    """
    a, e = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    scale = max(float(jnp.max(jnp.abs(x))) for x in e) or 1.0
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, e)) / scale


def reference(model, variables, batch, loss_fn, rngs=None, micro_batches=1, jit=False):
    """Loss, grads and new state of the unsplit model, micro-batch by micro-batch.

    Eager by default: compared with stages run under `jax.disable_jit`, the same primitives
    run on the same values, so the two agree to the last bit. With `jit=True` the whole
    unsplit step is one XLA program, the reference for jitted stages.
    """
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    x, y = batch
    size = jax.tree.leaves(x)[0].shape[0] // micro_batches
    total_loss, total_grads = 0.0, jax.tree.map(jnp.zeros_like, params)
    for m in range(micro_batches):
        xm = jax.tree.map(lambda a, m=m: a[m * size:(m + 1) * size], x)
        ym = jax.tree.map(lambda a, m=m: a[m * size:(m + 1) * size], y)
        keys = None if rngs is None else {
            k: v if micro_batches == 1 else jax.random.fold_in(v, m) for k, v in rngs.items()}

        def loss(p, state=state, xm=xm, ym=ym, keys=keys):
            if state:
                out, new = model.apply({"params": p, **state}, xm, rngs=keys, mutable=list(state))
                return loss_fn(out, ym), new
            return loss_fn(model.apply({"params": p}, xm, rngs=keys), ym), {}

        step = jax.value_and_grad(loss, has_aux=True)
        (value, state), grads = (jax.jit(step) if jit else step)(params)
        total_loss += value / micro_batches
        total_grads = jax.tree.map(lambda t, g: t + g / micro_batches, total_grads, grads)
    return total_loss, total_grads, dict(state)


class Block(nn.Module):
    features: int
    norm: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.features)(x)
        if self.norm:
            x = nn.BatchNorm(use_running_average=False)(x)
        return nn.tanh(x)


class SkipNet(nn.Module):
    """Five layers; block0's output skips to the head, so it crosses every later cut."""

    norm: bool = False
    dropout: float = 0.0

    def setup(self):
        self.block0 = Block(16, self.norm)
        self.block1 = Block(16, self.norm)
        self.drop = nn.Dropout(self.dropout, deterministic=self.dropout == 0.0)
        self.block2 = Block(16)
        self.head = nn.Dense(4)

    def __call__(self, x):
        h0 = self.block0(x)
        h = self.block1(h0 * 0.5)  # glue: joins block0
        h = self.block2(self.drop(h))
        return self.head(h + h0)


def skipnet_case(norm=False, dropout=0.0, batch=8, seed=0):
    model = SkipNet(norm=norm, dropout=dropout)
    kx, ki = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (batch, 6))
    y = jnp.asarray(np.arange(batch) % 4, jnp.int32)
    variables = model.init(ki, x)
    rngs = {"dropout": jax.random.PRNGKey(seed + 7)} if dropout else None
    return model, variables, (x, y), rngs
