"""What a batch is to the stages: its type, its common leading size, and PRNG keys as raw data.

Tracing, splitting and the bundle all need these facts, so they live here, below all three.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from jaxpipe.errors import BatchError
from jaxpipe.tree import PyTree

__all__ = ["Batch", "Rngs", "batch_size_of", "raw_key"]

Batch = tuple[PyTree, PyTree]
"""`(inputs, targets)`: two pytrees whose leaves share a leading batch axis."""

Rngs = Mapping[str, jax.Array]
"""PRNG keys by Flax rng collection name, e.g. `{"dropout": key}`; typed or raw keys."""


def batch_size_of(batch: Batch) -> int:
    """The common leading size of every leaf of `batch`; a clear error if they disagree."""
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        shape = np.shape(leaf)
        sizes[jax.tree_util.keystr(path)] = shape[0] if shape else None
    if not sizes:
        raise BatchError("the batch has no arrays")
    if len(set(sizes.values())) != 1 or None in sizes.values():
        listing = ", ".join(f"{k or 'leaf'}: {v}" for k, v in sizes.items())
        raise BatchError(
            f"every leaf of the batch needs the same leading batch size; got {listing}"
        )
    return next(iter(sizes.values()))


def raw_key(key: jax.Array) -> jax.Array:
    """A PRNG key as raw uint32 data (typed keys are unwrapped), the form stages pass around."""
    if jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jax.numpy.asarray(key)
