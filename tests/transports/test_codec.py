"""The wire format: round trips, zero-copy decoding, and errors that name the key."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transports import CodecError, decode, encode

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 4), (2, 3, 4)])
def test_every_numpy_dtype_and_shape_round_trips_exactly(dtype: str, shape: tuple) -> None:
    arr = (np.arange(int(np.prod(shape))) % 7).reshape(shape).astype(dtype)
    out = decode(encode(arr), key="k")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_bfloat16_round_trips_by_dtype_name() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arr = np.array([1.5, -2.25, 3e38, 0.0], dtype=ml_dtypes.bfloat16)
    out = decode(encode({"g": arr}))["g"]
    assert out.dtype.name == "bfloat16"
    assert out.tobytes() == arr.tobytes()


def test_lists_tuples_and_dicts_keep_their_layout_and_order() -> None:
    a, b = np.ones(3, np.float32), np.arange(4, dtype=np.int64).reshape(2, 2)
    assert [x.tolist() for x in decode(encode([a, b]))] == [a.tolist(), b.tolist()]
    assert isinstance(decode(encode((a,))), list)
    assert decode(encode([])) == []
    out = decode(encode({"z": b, "a": a}))
    assert list(out) == ["z", "a"] and out["z"].tolist() == [[0, 1], [2, 3]]


def test_decode_is_a_zero_copy_read_only_view_of_the_bytes() -> None:
    data = encode(np.arange(1000, dtype=np.float32))
    out = decode(data)
    assert not out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))
    assert out.ctypes.data % 16 == 0  # payloads are 64-byte aligned within the object


def test_non_contiguous_and_big_endian_inputs_encode_by_value() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    np.testing.assert_array_equal(decode(encode(base[:, ::2])), base[:, ::2])
    big = np.arange(5, dtype=">i4")
    out = decode(encode(big))
    assert out.dtype == np.dtype("<i4") and out.tolist() == [0, 1, 2, 3, 4]


def test_a_flipped_payload_byte_is_reported_as_corrupt_with_the_key() -> None:
    data = bytearray(encode(np.arange(100, dtype=np.float32)))
    data[-5] ^= 0x10
    with pytest.raises(CodecError, match=r"object 'jobs/1/g' is corrupt: payload CRC-32"):
        decode(bytes(data), key="jobs/1/g")


def test_a_flipped_header_byte_is_reported_as_corrupt_with_the_key() -> None:
    data = bytearray(encode(np.arange(100, dtype=np.float32)))
    data[20] ^= 0x01
    with pytest.raises(CodecError, match=r"'h/k' is corrupt: header checksum"):
        decode(bytes(data), key="h/k")


@pytest.mark.parametrize("cut", [0, 3, 15, 40, 100, -1])
def test_truncated_objects_are_reported_with_the_key(cut: int) -> None:
    data = encode({"a": np.arange(50, dtype=np.int64)})
    with pytest.raises(CodecError, match=r"object 'x/y' is truncated"):
        decode(data[:cut], key="x/y")


def test_trailing_bytes_and_foreign_objects_are_rejected() -> None:
    data = encode(np.zeros(3))
    with pytest.raises(CodecError, match="trailing bytes"):
        decode(data + b"\0", key="t")
    with pytest.raises(CodecError, match=r"'p' is not an encoded array"):
        decode(b"\x80\x04\x95" + bytes(40), key="p")  # e.g. a pickle


def test_unsupported_entries_raise_type_error_naming_them() -> None:
    with pytest.raises(TypeError, match="'w'.*not a numpy array"):
        encode({"w": [1.0, 2.0]})
    with pytest.raises(TypeError, match="unsupported dtype"):
        encode(np.array(["a"], dtype=object))


def test_the_checksum_is_zlib_crc32_of_the_payload() -> None:
    arr = np.arange(16, dtype=np.uint8)
    data = encode(arr)
    assert data.endswith(arr.tobytes())
    assert str(zlib.crc32(arr.tobytes())) in data[:200].decode("latin-1")


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.float32, np.int32, np.uint8, np.bool_]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)))
def test_any_array_round_trips_bit_for_bit(arr: np.ndarray) -> None:
    out = decode(encode([arr, arr]), key="h")
    for got in out:
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()
