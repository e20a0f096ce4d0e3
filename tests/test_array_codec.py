"""The wire container: layout, strict validation, bounded LZ4, no large allocations on bad input."""

from __future__ import annotations

import struct
import tracemalloc

import lz4.frame
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flq.codec.array_codec import (
    FIXED_HEADER_NBYTES,
    FLAG_LZ4,
    MAGIC,
    CodecError,
    DecodeLimits,
    PackedTensor,
    Scheme,
    pack_tensor,
    parse_scheme,
    raw_payload_nbytes,
    read_header,
    unpack_tensor,
)

SMALL_PEAK = 1 << 20  # 1 MiB: far below anything a declared shape in these tests would need


def header(
    *,
    magic=MAGIC,
    version=1,
    scheme=0,
    dtype=1,
    flags=0,
    shape=(4,),
    reserved=b"\0\0\0",
    block_size=0,
    num_scales=0,
    body_nbytes=None,
) -> bytes:
    """A hand-built header, independent of the encoder, so tests can lie in any field."""
    if body_nbytes is None:
        known = scheme in Scheme._value2member_map_
        body_nbytes = 4 * num_scales + (raw_payload_nbytes(Scheme(scheme), int(np.prod(shape))) if known else 0)
    fixed = struct.pack(
        "<4sBBBBB3sIII", magic, version, scheme, dtype, flags, len(shape), reserved, block_size, num_scales, body_nbytes
    )
    return fixed + struct.pack(f"<{len(shape)}I", *shape)


def fp32_tensor(values: np.ndarray) -> PackedTensor:
    return PackedTensor(Scheme.FP32, values.shape, 0, np.zeros(0, np.float32), values.astype("<f4").tobytes())


def int8_tensor(levels: np.ndarray, scales: np.ndarray, block: int) -> PackedTensor:
    return PackedTensor(Scheme.INT8, levels.shape, block, scales.astype(np.float32), levels.astype(np.int8).tobytes())


def peak_bytes_of(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# --------------------------------------------------------------------------- layout


def test_header_layout_of_a_2d_int8_tensor():
    levels = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    data = pack_tensor(int8_tensor(levels, np.array([0.5, 0.25]), block=8), lz4=False)
    assert data[:4] == b"FLQT"
    assert data[4:9] == bytes([1, Scheme.INT8, 1, 0, 2])  # version, scheme, dtype, flags, ndim
    assert data[9:12] == b"\0\0\0"
    assert struct.unpack_from("<III", data, 12) == (8, 2, 2 * 4 + 12)  # block, scales, body
    assert struct.unpack_from("<2I", data, FIXED_HEADER_NBYTES) == (3, 4)
    assert np.frombuffer(data[32:40], "<f4").tolist() == [0.5, 0.25]
    assert np.frombuffer(data[40:], np.int8).tolist() == levels.ravel().tolist()
    assert len(data) == 32 + 8 + 12


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 3), (1, 2, 3, 4)])
def test_pack_unpack_round_trip_keeps_parts(shape):
    values = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    out = unpack_tensor(pack_tensor(fp32_tensor(values)))
    assert out.scheme is Scheme.FP32 and out.shape == shape and out.block_size == 0
    assert np.array_equal(np.frombuffer(out.payload, "<f4").reshape(shape), values)


def test_header_size_is_4_byte_aligned():
    for ndim in range(5):
        assert read_header(pack_tensor(fp32_tensor(np.zeros((1,) * ndim, np.float32)))).header_nbytes % 4 == 0


def test_parse_scheme_names_and_rejects_unknown():
    assert [parse_scheme(n) for n in ("fp32", "FP16", "int8", "int4")] == list(Scheme)
    with pytest.raises(ValueError, match="int8"):
        parse_scheme("int3")


# --------------------------------------------------------------------------- encoder-side checks


def test_pack_rejects_inconsistent_parts():
    with pytest.raises(ValueError, match="payload"):
        pack_tensor(PackedTensor(Scheme.FP32, (4,), 0, np.zeros(0, np.float32), b"\0" * 15))
    with pytest.raises(ValueError, match="scales"):
        pack_tensor(int8_tensor(np.zeros(10), np.ones(1), block=4))
    with pytest.raises(ValueError, match="block_size"):
        pack_tensor(int8_tensor(np.zeros(10), np.ones(1), block=0))


# --------------------------------------------------------------------------- malformed input


def valid_int8() -> bytes:
    levels = np.random.default_rng(2).integers(-127, 128, size=(5, 7))
    return pack_tensor(int8_tensor(levels, np.full(3, 0.01), block=16), lz4=False)


def test_every_truncation_is_rejected():
    data = valid_int8()
    for n in range(len(data)):
        with pytest.raises(CodecError, match="truncated"):
            read_header(data[:n])


def test_trailing_bytes_are_rejected():
    with pytest.raises(CodecError, match="trailing"):
        unpack_tensor(valid_int8() + b"\0")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"magic": b"NOPE"}, "magic"),
        ({"version": 2}, "version 2"),
        ({"version": 0}, "version 0"),
        ({"scheme": 9}, "scheme id 9"),
        ({"dtype": 7}, "dtype id 7"),
        ({"flags": 0x80}, "flag bits 0x80"),
        ({"reserved": b"\0\1\0"}, "reserved"),
        ({"shape": (1,) * 9}, "ndim 9"),
        ({"scheme": 2, "block_size": 0, "num_scales": 0}, "block_size >= 1"),
        ({"scheme": 2, "block_size": 2, "num_scales": 1}, "needs 2 scales"),
        ({"scheme": 0, "block_size": 4, "num_scales": 1}, "no blocks"),
        ({"scheme": 0, "body_nbytes": 12}, "must be 16 B"),
    ],
)
def test_bad_header_fields_are_rejected(fields, message):
    h = header(**fields)
    body_nbytes = struct.unpack_from("<I", h, 20)[0]
    with pytest.raises(CodecError, match=message):
        unpack_tensor(h + b"\0" * body_nbytes)


def test_huge_declared_shape_is_rejected_before_allocating():
    data = header(shape=(2**20, 2**20), body_nbytes=64) + b"\0" * 64  # 2**40 elements
    with pytest.raises(CodecError, match="1099511627776 elements"):
        unpack_tensor(data)
    assert peak_bytes_of(lambda: pytest.raises(CodecError, unpack_tensor, data)) < SMALL_PEAK


def test_declared_shape_over_u32_payload_is_rejected_by_limits_not_overflow():
    dims = (2**32 - 1,) * 8  # product ~2**256: Python ints, no wrap-around
    with pytest.raises(CodecError, match="elements"):
        unpack_tensor(header(shape=dims, body_nbytes=0))


def test_limits_are_enforced():
    data = pack_tensor(fp32_tensor(np.zeros((10, 10), np.float32)), lz4=False)
    with pytest.raises(CodecError, match="over the limit of 99"):
        unpack_tensor(data, DecodeLimits(max_elements=99))
    with pytest.raises(CodecError, match="over the limit of 100 B"):
        unpack_tensor(data, DecodeLimits(max_bytes=100))
    with pytest.raises(CodecError, match="ndim 2 exceeds"):
        unpack_tensor(data, DecodeLimits(max_ndim=1))
    with pytest.raises(ValueError, match="max_elements"):
        DecodeLimits(max_elements=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_bad_scales_are_rejected(bad):
    data = pack_tensor(int8_tensor(np.zeros(4), np.array([bad]), block=4), lz4=False)
    with pytest.raises(CodecError, match="scales"):
        unpack_tensor(data)


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, 200), value=st.integers(0, 255), cut=st.integers(0, 8))
def test_corrupted_bytes_decode_or_raise_codec_error_only(position, value, cut):
    data = bytearray(valid_int8())
    data[position % len(data)] = value
    corrupted = bytes(data[: len(data) - cut])
    try:
        out = unpack_tensor(corrupted)
    except CodecError:
        return
    assert out.numel == 35 and len(out.payload) == 35


# --------------------------------------------------------------------------- LZ4


def lz4_tensor(frame: bytes, shape=(16,)) -> bytes:
    return header(shape=shape, flags=FLAG_LZ4, body_nbytes=len(frame)) + frame


def test_zero_body_is_compressed_and_round_trips():
    zeros = np.zeros((576, 64), np.float32)
    data = pack_tensor(fp32_tensor(zeros))
    h = read_header(data)
    assert h.compressed and len(data) < zeros.nbytes / 50
    assert np.array_equal(np.frombuffer(unpack_tensor(data).payload, "<f4"), zeros.ravel())


def test_dense_body_is_sent_raw():
    dense = np.random.default_rng(3).normal(size=(576, 64)).astype(np.float32)
    data = pack_tensor(fp32_tensor(dense))
    assert not read_header(data).compressed
    assert len(data) == dense.nbytes + 32


def test_lz4_can_be_switched_off():
    assert not read_header(pack_tensor(fp32_tensor(np.zeros(4096, np.float32)), lz4=False)).compressed


def test_lz4_frame_declaring_a_bigger_size_is_rejected_before_inflating():
    frame = lz4.frame.compress(b"\0" * 10_000_000)  # declares 10 MB, the header implies 64 B
    data = lz4_tensor(frame)
    with pytest.raises(CodecError, match="declares 10000000 B"):
        unpack_tensor(data)
    assert peak_bytes_of(lambda: pytest.raises(CodecError, unpack_tensor, data)) < SMALL_PEAK


def test_lz4_frame_without_size_cannot_inflate_past_the_header():
    frame = lz4.frame.compress(b"\0" * 10_000_000, store_size=False)
    data = lz4_tensor(frame)
    with pytest.raises(CodecError, match="inflates past the 64 B"):
        unpack_tensor(data)
    assert peak_bytes_of(lambda: pytest.raises(CodecError, unpack_tensor, data)) < SMALL_PEAK


def test_lz4_frame_that_is_short_or_truncated_is_rejected():
    with pytest.raises(CodecError, match="truncated LZ4"):
        unpack_tensor(lz4_tensor(lz4.frame.compress(b"\0" * 60, store_size=False)))
    frame = lz4.frame.compress(b"\0" * 64)
    with pytest.raises(CodecError):
        unpack_tensor(lz4_tensor(frame[:-3]))


def test_lz4_trailing_data_and_garbage_are_rejected():
    frame = lz4.frame.compress(b"\0" * 64)
    with pytest.raises(CodecError, match="trailing"):
        unpack_tensor(lz4_tensor(frame + b"junk"))
    with pytest.raises(CodecError, match="LZ4"):
        unpack_tensor(lz4_tensor(b"definitely not an lz4 frame"))
