"""JaxPipe's errors: each says what is wrong, with the values seen, and what to do about it."""

from __future__ import annotations

__all__ = ["BatchError", "CutError", "JaxPipeError", "TraceError"]


class JaxPipeError(Exception):
    """Base class of every error JaxPipe raises on bad input."""


class TraceError(JaxPipeError, ValueError):
    """The model cannot be cut into layers.

    A layer is the run of equations under one top-level submodule of the Flax model. Put each
    block of the network in a named submodule (`self.block0 = Block()` in `setup`, or
    `Block(name="block0")` in a compact `__call__`).
    """


class CutError(JaxPipeError, ValueError):
    """The cut points do not describe a split of the model's layers into non-empty stages."""


class BatchError(JaxPipeError, ValueError):
    """The batch cannot be divided as asked (leaves of different sizes, or sizes that do not divide)."""
