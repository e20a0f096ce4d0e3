"""The Flower edge: encoded tensors as ArrayRecords, plain numpy records, honest byte counts."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from flq.codec.array_codec import CodecError, DecodeLimits
from flq.codec.flower_records import (
    BUNDLE_KEY,
    BUNDLE_STYPE,
    CODEC_STYPE,
    adapter_to_array_record,
    array_record_nbytes,
    array_record_to_adapter,
    bundle,
    encoded_to_array_record,
    unbundle,
)
from flq.codec.update_codec import SCHEMES, ErrorFeedback, encode_adapter, encode_tensor


def framing(keys) -> int:
    """The bundle's own bytes: an 8-byte head, then 6 bytes and the UTF-8 key per tensor."""
    return 8 + sum(6 + len(k.encode()) for k in keys)


@pytest.fixture(scope="module")
def adapter() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "q_proj.lora_A.weight": rng.normal(0, 0.02, size=(8, 576)).astype(np.float32),
        "q_proj.lora_B.weight": np.zeros((576, 8), np.float32),
        "score.weight": rng.normal(0, 0.1, size=(5, 576)).astype(np.float32),
    }


def npy_bytes_with_header(header: str) -> bytes:
    """A hand-made .npy v1.0 buffer whose header can declare anything."""
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    body = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def numpy_array(data: bytes, shape=(2, 2), dtype="float32") -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


# --------------------------------------------------------------------------- encoding side


@pytest.mark.parametrize("scheme", SCHEMES)
def test_record_is_one_bundle_of_exactly_the_encoded_bytes(adapter, scheme):
    record = adapter_to_array_record(adapter, scheme)
    [(key, array)] = record.items()  # one Array whatever the number of tensors: one object for Flower to move
    assert key == BUNDLE_KEY and array.stype == BUNDLE_STYPE and tuple(array.shape) == (len(array.data),)
    entries = unbundle(array.data)
    assert list(entries) == list(adapter)
    assert all(bytes(entries[k]) == encode_tensor(adapter[k], scheme) for k in adapter)
    assert array_record_nbytes(record) == len(array.data) == sum(map(len, entries.values())) + framing(adapter)


def test_byte_counts_shrink_with_the_scheme(adapter):
    sizes = {s: array_record_nbytes(adapter_to_array_record(adapter, s, lz4=False)) for s in SCHEMES}
    assert sizes["fp32"] > sizes["fp16"] > sizes["int8"] > sizes["int4"]
    assert sizes["fp32"] == sum(v.nbytes for v in adapter.values()) + 3 * 32 + framing(adapter)  # 32 B header each


def test_a_record_of_one_codec_array_per_tensor_is_still_read(adapter):
    legacy = ArrayRecord(
        {
            k: Array(dtype="float32", shape=v.shape, stype=CODEC_STYPE, data=encode_tensor(v, "fp16"))
            for k, v in adapter.items()
        }
    )
    decoded = array_record_to_adapter(legacy)
    assert decoded.keys() == adapter.keys()
    assert all(np.allclose(decoded[k], v, atol=1e-3) for k, v in adapter.items())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_record_round_trip(adapter, scheme):
    decoded = array_record_to_adapter(adapter_to_array_record(adapter, scheme))
    assert decoded.keys() == adapter.keys()
    for key, value in adapter.items():
        assert decoded[key].dtype == np.float32 and decoded[key].shape == value.shape
        tolerance = {"fp32": 0.0, "fp16": 1e-3, "int8": 1e-2, "int4": 0.2}[scheme] * np.abs(value).max()
        assert np.max(np.abs(decoded[key] - value)) <= tolerance


def test_bytes_survive_flower_deflate_and_inflate(adapter):
    record = adapter_to_array_record(adapter, "int4")
    children = {}
    for array in record.values():
        rebuilt = Array.inflate(array.deflate(), children=array.children)
        children[rebuilt.object_id] = rebuilt
    inflated = ArrayRecord.inflate(record.deflate(), children=children)
    assert array_record_to_adapter(inflated).keys() == adapter.keys()
    assert all(inflated[k].data == record[k].data for k in record)


def test_error_feedback_encodings_and_residual_storage(adapter):
    feedback = ErrorFeedback()
    record = encoded_to_array_record(feedback.encode(adapter, "int4"))
    assert array_record_to_adapter(record)["score.weight"].shape == (5, 576)
    stored = adapter_to_array_record(feedback.to_arrays(), "fp32")  # what context.state would hold
    restored = array_record_to_adapter(stored)
    assert all(np.array_equal(restored[k], v) for k, v in feedback.to_arrays().items())


# --------------------------------------------------------------------------- plain numpy records


def test_plain_numpy_record_is_accepted(adapter):
    record = ArrayRecord({k: Array(v) for k, v in adapter.items()})
    decoded = array_record_to_adapter(record)
    assert all(np.array_equal(decoded[k], v) for k, v in adapter.items())
    assert array_record_nbytes(record) > sum(v.nbytes for v in adapter.values())  # .npy headers count


def test_plain_numpy_float64_is_cast_to_float32():
    record = ArrayRecord({"w": Array(np.linspace(0, 1, 6).reshape(2, 3))})
    assert array_record_to_adapter(record)["w"].dtype == np.float32


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (npy_bytes_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (2, 2), }"), "dtype object"),
        (npy_bytes_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }") + b"\0" * 16, "int32"),
        (
            npy_bytes_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }") + b"\0" * 15,
            "header implies",
        ),
        (
            npy_bytes_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }") + b"\0" * 17,
            "header implies",
        ),
        (
            npy_bytes_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, -4), }") + b"\0" * 16,
            "negative",
        ),
        (
            npy_bytes_with_header("{'descr': ('<f4', (4,)), 'fortran_order': False, 'shape': (1,), }") + b"\0" * 16,
            "float dtype",
        ),
        (b"\x93NUMPY\x09\x00", "version 9"),
        (b"not numpy at all", "not a .npy"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': __import", "malformed"),
    ],
)
def test_malformed_numpy_arrays_are_rejected(data, message):
    with pytest.raises(CodecError, match=message):
        array_record_to_adapter(ArrayRecord({"w": numpy_array(data)}))


@settings(max_examples=80, deadline=None)
@given(position=st.integers(0, 200), value=st.integers(0, 255), cut=st.integers(0, 8))
def test_corrupted_numpy_bytes_decode_or_raise_codec_error_only(position, value, cut):
    buffer = io.BytesIO()
    np.save(buffer, np.arange(12, dtype=np.float32).reshape(3, 4), allow_pickle=False)
    data = bytearray(buffer.getvalue())
    data[position % len(data)] = value
    try:
        out = array_record_to_adapter(ArrayRecord({"w": numpy_array(bytes(data[: len(data) - cut]), shape=(3, 4))}))
    except CodecError:
        return
    assert out["w"].shape == (3, 4) and out["w"].dtype == np.float32


def test_huge_numpy_shape_is_rejected_before_allocating():
    data = npy_bytes_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }")
    record = ArrayRecord({"w": numpy_array(data, shape=(2**20, 2**20))})
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="1099511627776 elements"):
            array_record_to_adapter(record)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# --------------------------------------------------------------------------- malformed records


def test_metadata_that_disagrees_with_the_bytes_is_rejected(adapter):
    data = encode_tensor(adapter["score.weight"], "int8")
    with pytest.raises(CodecError, match="'w'.*shape"):
        array_record_to_adapter(
            ArrayRecord({"w": Array(dtype="float32", shape=(576, 5), stype=CODEC_STYPE, data=data)})
        )
    with pytest.raises(CodecError, match="float32"):
        array_record_to_adapter(
            ArrayRecord({"w": Array(dtype="float16", shape=(5, 576), stype=CODEC_STYPE, data=data)})
        )


def test_unknown_stype_and_bad_codec_bytes_name_the_key():
    with pytest.raises(CodecError, match="'w'.*stype 'torch.pickle'"):
        array_record_to_adapter(ArrayRecord({"w": Array(dtype="float32", shape=(1,), stype="torch.pickle", data=b"x")}))
    with pytest.raises(CodecError, match="'bad'.*truncated"):
        array_record_to_adapter(
            ArrayRecord({"bad": Array(dtype="float32", shape=(1,), stype=CODEC_STYPE, data=b"FLQT")})
        )


def test_record_limits(adapter):
    record = adapter_to_array_record(adapter, "int8")
    with pytest.raises(CodecError, match="3 tensors"):
        array_record_to_adapter(record, DecodeLimits(max_tensors=2))
    total = sum(v.size for v in adapter.values())
    with pytest.raises(CodecError, match="elements in all"):
        array_record_to_adapter(record, DecodeLimits(max_total_elements=total - 1))


def bundle_array(data: bytes) -> ArrayRecord:
    return ArrayRecord({BUNDLE_KEY: Array(dtype="uint8", shape=(len(data),), stype=BUNDLE_STYPE, data=data)})


def test_malformed_bundles_are_rejected(adapter):
    good = bundle(encode_adapter(adapter, "int8"))
    one = bundle({"w": encode_tensor(np.ones(4, np.float32), "fp32")})
    cases = [
        (good[:5], "shorter than its 8-byte header"),
        (b"XXXX" + good[4:], "not an FLQ bundle"),
        (good[:-1], "declares"),
        (good + b"\0", "1 B after its last tensor"),
        (good[:8] + good[8:10] + (2**31).to_bytes(4, "little") + good[14:], "over the limits"),
        (one[:4] + (2).to_bytes(4, "little") + one[8:] + one[8:], "'w' twice"),
        (one[:4] + (2).to_bytes(4, "little") + one[8:], "ends inside entry 1 of 2"),
        (one[:14] + b"\xff" + one[15:], "not UTF-8"),
    ]
    for data, message in cases:
        with pytest.raises(CodecError, match=message):
            array_record_to_adapter(bundle_array(data))
    with pytest.raises(CodecError, match="3 tensors"):
        array_record_to_adapter(bundle_array(good), DecodeLimits(max_tensors=2))
    mixed = ArrayRecord({**bundle_array(good), "extra": Array(np.ones(2, np.float32))})
    with pytest.raises(CodecError, match="only array"):
        array_record_to_adapter(mixed)


@settings(max_examples=80, deadline=None)
@given(position=st.integers(0, 400), value=st.integers(0, 255), cut=st.integers(0, 8))
def test_corrupted_bundles_decode_or_raise_codec_error_only(position, value, cut):
    data = bytearray(
        bundle(encode_adapter({"a": np.arange(12, dtype=np.float32), "b": np.ones(3, np.float32)}, "int8"))
    )
    data[position % len(data)] = value
    try:
        out = array_record_to_adapter(bundle_array(bytes(data[: len(data) - cut])))
    except CodecError:
        return
    assert all(v.dtype == np.float32 for v in out.values())


def test_npy_buffer_written_by_numpy_passes_the_header_check():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((3, 4), np.float32), allow_pickle=False)
    decoded = array_record_to_adapter(ArrayRecord({"w": numpy_array(buffer.getvalue(), shape=(3, 4))}))
    assert np.array_equal(decoded["w"], np.ones((3, 4)))
