"""The Flower edge of the update codec: adapters <-> ``flwr.app.ArrayRecord``.

A whole adapter travels as ONE ``Array(dtype="uint8", shape=(n,), stype="flq.codec.bundle.v1",
data=<bundle>)``: the bundle is every tensor's array_codec bytes behind its key, so the bytes
Flower ships are the encoded tensors plus a few bytes of framing per tensor, and
``array_record_nbytes`` counts them all. One Array, not one per tensor, because Flower moves
each Array of a message as separate objects, pulled and pushed two requests at a time: an
adapter of hundreds of tensors cost a deployed round hundreds of round trips on each link
(benchmarks/results/clock_check.md), the bundle a handful.

Records of one codec Array per tensor (``stype="flq.codec.v1"``) are still read, and plain
numpy Arrays (stype ``"numpy.ndarray"``, what ``Array(ndarray)`` makes) are accepted too, so
fp32 baseline runs and stored records work; their ``.npy`` header is parsed and its
shape, dtype and length checked against the same limits before ``Array.numpy()`` (which
loads with ``allow_pickle=False``) allocates anything.

Client residuals for error feedback can be kept in ``context.state`` losslessly with
``adapter_to_array_record(ef.to_arrays(), "fp32")`` and read back with
``array_record_to_adapter``.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from .array_codec import DEFAULT_LIMITS, CodecError, DecodeLimits, Scheme, read_header
from .update_codec import (
    check_tensor_count,
    check_total_elements,
    decode_adapter,
    decode_tensor,
    encode_adapter,
    with_key,
)

CODEC_STYPE = "flq.codec.v1"
BUNDLE_STYPE = "flq.codec.bundle.v1"
BUNDLE_KEY = "adapter"  # the bundle's key in its ArrayRecord
BUNDLE_MAGIC = b"FLQB"
_BUNDLE_HEAD = struct.Struct("<4sI")  # magic, tensor count
_BUNDLE_ENTRY = struct.Struct("<HI")  # key bytes, tensor bytes; then the key (UTF-8), then the tensor
MAX_KEY_BYTES = 1024  # a parameter name; peft's longest are ~100
NUMPY_STYPE = "numpy.ndarray"
NPY_MAX_HEADER = 10_000  # numpy's own default bound for a .npy header
NPY_MAJOR_VERSIONS = (1, 2)  # 3.0 only exists for unicode field names: never a float tensor
# Bytes our own encoder just produced: only their shape is read, so no size policy applies.
_OWN_OUTPUT = DecodeLimits(max_ndim=255, max_elements=2**64, max_bytes=2**64)


def encoded_to_array_record(encoded: Mapping[str, bytes]) -> ArrayRecord:
    """Wrap already-encoded tensors (e.g. from ``ErrorFeedback.encode``) in an ArrayRecord of one bundle."""
    data = bundle(encoded)
    return ArrayRecord({BUNDLE_KEY: Array(dtype="uint8", shape=(len(data),), stype=BUNDLE_STYPE, data=data)})


def bundle(encoded: Mapping[str, bytes]) -> bytes:
    """Encoded tensors behind their keys, in one buffer (``unbundle`` reads it back)."""
    parts = [_BUNDLE_HEAD.pack(BUNDLE_MAGIC, len(encoded))]
    for key, data in encoded.items():
        name = key.encode("utf-8")
        if len(name) > MAX_KEY_BYTES:
            raise CodecError(f"tensor key of {len(name)} B is over the limit of {MAX_KEY_BYTES} B: {key[:80]!r}...")
        read_header(data, _OWN_OUTPUT)  # only our own encoder's output goes in
        parts += [_BUNDLE_ENTRY.pack(len(name), len(data)), name, bytes(data)]
    return b"".join(parts)


def unbundle(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, memoryview]:
    """Key -> encoded tensor bytes (views, nothing copied); every length is checked against the
    buffer and the limits before it is used, and the buffer must end exactly after the last tensor."""
    view = memoryview(data)
    if len(view) < _BUNDLE_HEAD.size:
        raise CodecError(f"bundle of {len(view)} B is shorter than its {_BUNDLE_HEAD.size}-byte header")
    magic, count = _BUNDLE_HEAD.unpack_from(view)
    if magic != BUNDLE_MAGIC:
        raise CodecError(f"not an FLQ bundle (magic {bytes(magic)!r})")
    check_tensor_count(count, limits)
    entries: dict[str, memoryview] = {}
    at = _BUNDLE_HEAD.size
    for i in range(count):
        if len(view) - at < _BUNDLE_ENTRY.size:
            raise CodecError(f"bundle ends inside entry {i} of {count}")
        key_len, size = _BUNDLE_ENTRY.unpack_from(view, at)
        at += _BUNDLE_ENTRY.size
        if key_len > MAX_KEY_BYTES or size > limits.max_bytes:
            raise CodecError(f"bundle entry {i}: key of {key_len} B or tensor of {size} B is over the limits")
        if len(view) - at < key_len + size:
            raise CodecError(f"bundle entry {i} declares {key_len + size} B, {len(view) - at} B are left")
        try:
            key = bytes(view[at : at + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"bundle entry {i}: its key is not UTF-8") from None
        if key in entries:
            raise CodecError(f"bundle holds tensor {key!r} twice")
        entries[key] = view[at + key_len : at + key_len + size]
        at += key_len + size
    if at != len(view):
        raise CodecError(f"bundle has {len(view) - at} B after its last tensor")
    return entries


def adapter_to_array_record(
    state: Mapping[str, np.ndarray], scheme: str | Scheme, *, block_size: int | None = None, lz4: bool = True
) -> ArrayRecord:
    """Encode every tensor of ``state`` with ``scheme`` into an ArrayRecord."""
    return encoded_to_array_record(encode_adapter(state, scheme, block_size=block_size, lz4=lz4))


def array_record_to_adapter(record: ArrayRecord, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode a record of codec or plain numpy Arrays to float32; raise CodecError if malformed.

    Every array's declared size is checked (and the record's totals) before any is decoded.
    """
    bundles = [key for key, array in record.items() if array.stype == BUNDLE_STYPE]
    if bundles:
        if len(record) != 1:
            raise CodecError(f"a bundle must be its record's only array; this record has {len(record)}")
        return decode_adapter(unbundle(record[bundles[0]].data, limits), limits)
    check_tensor_count(len(record), limits)
    check_total_elements(sum(_declared_numel(key, array, limits) for key, array in record.items()), limits)
    return {key: _decode_array(key, array, limits) for key, array in record.items()}


def array_record_nbytes(record: ArrayRecord) -> int:
    """Tensor bytes the record carries: the sum of ``len(array.data)``."""
    return sum(len(array.data) for array in record.values())


def _declared_numel(key: str, array: Array, limits: DecodeLimits) -> int:
    if array.stype == CODEC_STYPE:
        return with_key(key, lambda: read_header(array.data, limits).numel)
    if array.stype == NUMPY_STYPE:
        return with_key(key, lambda: math.prod(_checked_npy_header(array.data, limits)[0]))
    raise CodecError(f"{key!r}: unsupported array stype {array.stype!r} (expected {CODEC_STYPE!r} or {NUMPY_STYPE!r})")


def _decode_array(key: str, array: Array, limits: DecodeLimits) -> np.ndarray:
    if array.stype == CODEC_STYPE:
        if array.dtype != "float32":
            raise CodecError(f"{key!r}: codec arrays decode to float32, metadata says {array.dtype!r}")
        value = with_key(key, lambda: decode_tensor(array.data, limits))
    else:
        value = with_key(key, lambda: _decode_numpy_array(array, limits))
    if tuple(value.shape) != tuple(array.shape):
        raise CodecError(f"{key!r}: Array metadata says shape {tuple(array.shape)}, data holds {value.shape}")
    return value


def _decode_numpy_array(array: Array, limits: DecodeLimits) -> np.ndarray:
    _checked_npy_header(array.data, limits)
    return np.ascontiguousarray(array.numpy(), dtype=np.float32)


def _checked_npy_header(data: bytes, limits: DecodeLimits) -> tuple[tuple[int, ...], np.dtype]:
    """Parse a ``.npy`` header and check dtype, shape and exact length; allocates nothing big."""
    if len(data) > limits.max_bytes:
        raise CodecError(f"numpy array of {len(data)} B is over the limit of {limits.max_bytes} B")
    shape, dtype, header_end = _read_npy_header(data)
    if dtype.kind != "f" or dtype.hasobject:
        raise CodecError(f"numpy array has dtype {dtype}, expected a float dtype")
    if len(shape) > limits.max_ndim:
        raise CodecError(f"ndim {len(shape)} exceeds the limit of {limits.max_ndim}")
    if any(d < 0 for d in shape):  # numpy's parser lets (-1, -4) through; its product looks valid
        raise CodecError(f"negative dimension in declared shape {shape}")
    numel = math.prod(shape)
    if numel > limits.max_elements:
        raise CodecError(f"declared shape {shape} has {numel} elements, over the limit of {limits.max_elements}")
    expected = header_end + numel * dtype.itemsize
    if len(data) != expected:
        raise CodecError(f"numpy array data is {len(data)} B, its header implies {expected} B")
    return shape, dtype


def _read_npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of a ``.npy`` buffer, via numpy's bounded header parser."""
    stream = io.BytesIO(data)
    try:
        major, minor = np.lib.format.read_magic(stream)
    except ValueError as exc:
        raise CodecError(f"not a .npy buffer: {exc}") from None
    # numpy's loader accepts exactly (1,0), (2,0), (3,0): refuse anything else here, clearly.
    if major not in NPY_MAJOR_VERSIONS or minor != 0:
        raise CodecError(f"unsupported .npy format version {major}.{minor}")
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, _fortran_order, dtype = read(stream, max_header_size=NPY_MAX_HEADER)
    except Exception as exc:  # numpy's parser raises ValueError, SyntaxError, TokenError... on garbage
        raise CodecError(f"malformed .npy header: {exc}") from None
    return tuple(shape), dtype, stream.tell()
