"""What a batch is to the stages: its common leading size, and PRNG keys as raw data.

Tracing, splitting and the bundle all need these two facts, so they live here, below all three.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxpipe.errors import BatchError

__all__ = ["batch_size_of", "raw_key"]


def batch_size_of(batch: Any) -> int:
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


def raw_key(key: Any) -> jax.Array:
    """A PRNG key as raw uint32 data (typed keys are unwrapped), the form stages pass around."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jax.numpy.asarray(key)
