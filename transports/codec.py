"""The wire format of arrays in the store: a small JSON header, then the raw little-endian bytes.

No pickle: a bucket is not trusted to run code, and a pickled array costs extra copies. An
object is

    offset 0   b"JXPC"                 magic
           4   u8 version (1), 3 zero bytes
           8   u32 header length h      little-endian
          12   u32 CRC-32 of the header
          16   header: UTF-8 JSON       {"layout", "arrays": [{name, dtype, shape, offset, nbytes}],
                                         "payload_bytes", "payload_crc32"}
      p = 16 + h rounded up to 64       payload: each array's bytes at p + offset, 64-byte aligned

`encode` takes one array, a flat list (or tuple) of arrays, or a flat dict of str -> array, and
`decode` gives back the same layout (a tuple comes back as a list). Decoding copies nothing:
arrays are read-only `np.frombuffer` views of the object's bytes. The CRC-32 of the payload
(zlib's, ~4 GB/s on one core here) catches corruption; the lengths in the header catch
truncation. Either raises `CodecError` naming the key the bytes came from.

Dtypes: bool, (u)int8..64, float16/32/64, complex64/128, and any dtype of `ml_dtypes`
(bfloat16, float8_*) when that package is importable; it ships with jax, but the codec does not
need it for the numpy dtypes.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from typing import TypeGuard

import numpy as np

__all__ = ["CodecError", "decode", "encode"]

_MAGIC = b"JXPC"
_VERSION = 1
_FIXED = struct.Struct("<4sB3xII")  # magic, version, header length, header crc
_ALIGN = 64
_NUMPY_KINDS = "biufc"

Arrays = np.ndarray | list[np.ndarray] | dict[str, np.ndarray]
"""One array, a flat list of arrays or a flat dict of str -> array: what `decode` returns."""


class CodecError(ValueError):
    """Bytes that should hold encoded arrays are not valid: wrong magic, truncated, corrupt.

    The message names the store key the bytes came from; re-fetch the object or find the writer
    that produced it.
    """


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _dtype_from_name(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
        if dtype.kind in _NUMPY_KINDS and dtype.name == name:
            return dtype
    except TypeError:
        pass
    try:
        import ml_dtypes  # optional: bfloat16 and float8 types
    except ImportError:
        raise TypeError(f"dtype {name!r} needs the ml_dtypes package, which is not "
                        "installed") from None
    kind = getattr(ml_dtypes, name, None)
    if kind is None or np.dtype(kind).name != name:
        raise TypeError(f"unsupported dtype {name!r}")
    return np.dtype(kind)


def _is_numpy(value: object) -> TypeGuard[np.ndarray | np.generic]:
    return isinstance(value, np.ndarray | np.generic)


def _entry_name(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"codec dict keys must be str, got {key!r}")
    return key


def _wire_array(name: str | None, value: object) -> np.ndarray:
    if not _is_numpy(value):
        raise TypeError(f"codec entry {name!r} is a {type(value).__name__}, not a numpy array")
    arr = np.asarray(value)
    if arr.dtype.kind not in _NUMPY_KINDS:
        _dtype_from_name(arr.dtype.name)  # raises unless ml_dtypes knows it
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d


def encode(arrays: Arrays | tuple[np.ndarray, ...] | np.generic) -> bytes:
    """Returns `arrays` as one self-describing byte string (header + aligned raw bytes).

    Args:
      arrays: a numpy array (or scalar), a flat list/tuple of arrays, or a flat dict of
        str -> array.

    Raises:
      TypeError: an entry is not a numpy array, or its dtype is not supported.

    Example:
      >>> data = encode({"w": np.ones((2, 3), np.float32), "step": np.int64(7)})
      >>> out = decode(data, key="demo")
      >>> out["w"].sum(), int(out["step"])
      (np.float32(6.0), 7)
    """
    named: Sequence[tuple[str | None, object]]
    if isinstance(arrays, dict):
        layout, named = "dict", [(_entry_name(k), v) for k, v in arrays.items()]
    elif isinstance(arrays, list | tuple):
        layout, named = "list", [(None, v) for v in arrays]
    else:
        layout, named = "array", [(None, arrays)]
    wire = [_wire_array(name, value) for name, value in named]

    entries: list[dict[str, object]] = []
    pieces: list[bytes | memoryview] = []
    crc, offset = 0, 0
    for (name, _), arr in zip(named, wire, strict=True):
        raw = arr.reshape(-1).view(np.uint8).data
        pad = _aligned(offset) - offset
        if pad:
            pieces.append(bytes(pad))
            crc = zlib.crc32(pieces[-1], crc)
            offset += pad
        entries.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape),
                        "offset": offset, "nbytes": raw.nbytes})
        pieces.append(raw)
        crc = zlib.crc32(raw, crc)
        offset += raw.nbytes
    header = json.dumps({"layout": layout, "arrays": entries, "payload_bytes": offset,
                         "payload_crc32": crc}, separators=(",", ":")).encode()
    header += b" " * (_aligned(_FIXED.size + len(header)) - _FIXED.size - len(header))
    fixed = _FIXED.pack(_MAGIC, _VERSION, len(header), zlib.crc32(header))
    return b"".join([fixed, header, *pieces])


def decode(data: bytes | bytearray | memoryview, key: str | None = None) -> Arrays:
    """Returns the arrays `encode` wrote into `data`, as read-only views of `data` (no copy).

    Args:
      data: bytes produced by `encode`.
      key: where the bytes came from, for error messages.

    Raises:
      CodecError: wrong magic or version, truncated or extra bytes, or a checksum mismatch; the
        message names `key`.
    """
    where = f"object {key!r}" if key is not None else "encoded object"
    buf = memoryview(data).cast("B")
    if len(buf) < _FIXED.size:
        raise CodecError(f"{where} is truncated: {len(buf)} bytes, shorter than the "
                         f"{_FIXED.size}-byte preamble")
    magic, version, header_len, header_crc = _FIXED.unpack_from(buf)
    if magic != _MAGIC:
        raise CodecError(f"{where} is not an encoded array (starts with {bytes(magic)!r}, not "
                         f"{_MAGIC!r})")
    if version != _VERSION:
        raise CodecError(f"{where} has codec version {version}; this code reads {_VERSION}")
    start = _FIXED.size + header_len
    if len(buf) < start:
        raise CodecError(f"{where} is truncated: {len(buf)} bytes, but its header alone ends "
                         f"at byte {start}")
    header_bytes = buf[_FIXED.size:start]
    if zlib.crc32(header_bytes) != header_crc:
        raise CodecError(f"{where} is corrupt: header checksum mismatch")
    header = json.loads(bytes(header_bytes))
    size = header["payload_bytes"]
    if len(buf) != start + size:
        state = "truncated" if len(buf) < start + size else "corrupt (trailing bytes)"
        raise CodecError(f"{where} is {state}: {len(buf)} bytes, expected {start + size}")
    crc = zlib.crc32(buf[start:])
    if crc != header["payload_crc32"]:
        raise CodecError(f"{where} is corrupt: payload CRC-32 {crc:#010x} != "
                         f"{header['payload_crc32']:#010x} in its header")
    arrays: list[np.ndarray] = []
    for entry in header["arrays"]:
        dtype = _dtype_from_name(entry["dtype"])
        count = entry["nbytes"] // dtype.itemsize
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=start + entry["offset"])
        arrays.append(arr.reshape(tuple(entry["shape"])))
    if header["layout"] == "array":
        return arrays[0]
    if header["layout"] == "list":
        return arrays
    return {e["name"]: a for e, a in zip(header["arrays"], arrays, strict=True)}
