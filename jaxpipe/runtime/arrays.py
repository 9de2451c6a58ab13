"""The store's array objects by layout: a message is a list of arrays; a checkpoint part, a
dataset shard and a stage's parameters are named arrays (`transports.codec` writes both)."""

from __future__ import annotations

from typing import Any

from numpy.typing import NDArray

from transports import codec

__all__ = ["decode_list", "decode_named"]


def decode_list(data: bytes, key: str) -> list[NDArray[Any]]:
    """The list of arrays `codec.encode(list)` wrote at `key`.

    Raises:
      CodecError: the object is not an encoded list (or not an encoded object at all).
    """
    arrays = codec.decode(data, key=key)
    if not isinstance(arrays, list):
        raise codec.CodecError(f"object {key!r} holds {_layout(arrays)}, not a list of arrays")
    return arrays


def decode_named(data: bytes, key: str) -> dict[str, NDArray[Any]]:
    """The {name: array} `codec.encode(dict)` wrote at `key`.

    Raises:
      CodecError: the object is not an encoded dict (or not an encoded object at all).

    Example:
      >>> import numpy as np
      >>> decode_named(codec.encode({"w": np.zeros(2)}), "k")["w"].shape
      (2,)
    """
    arrays = codec.decode(data, key=key)
    if not isinstance(arrays, dict):
        raise codec.CodecError(f"object {key!r} holds {_layout(arrays)}, not named arrays")
    return arrays


def _layout(arrays: Any) -> str:
    return "a list of arrays" if isinstance(arrays, list) else "one array"
