"""Adapter update compression: fp32 / fp16 / int8 / int4 tensors, and error feedback.

Schemes (every decode returns float32):

* ``fp32``: the reference, lossless.
* ``fp16``: IEEE half; encoding refuses values beyond +-65504 instead of sending inf.
* ``int8``: symmetric, one float32 scale (absmax / 127) per block of ``block_size``
  consecutive elements of the C-order flattened tensor; q in [-127, 127].
* ``int4``: the same with absmax / 7, q in [-7, 7], packed two per byte.

Why per-block and not per-row: a LoRA B is (out, r), so at r = 8 per-row scales would cost
4 bytes per 8 elements; blocks of the flattened tensor cost the same for A and B whatever the
rank. Defaults: int8 blocks of 512 (one 4-byte scale per 512 bytes), int4 blocks of 128 (finer,
since its step is 18x coarser); the ratios they reach on a real adapter are in
benchmarks/results/codec_accuracy.md and codec_throughput.md. Per element, |x - decoded| <= scale / 2 (plus float32
rounding), scale being the stored scale of its block.

LZ4 is applied by ``array_codec`` only where a cheap probe says the payload shrinks (the
zero-heavy B of a fresh LoRA adapter); dense float and int8 payloads go raw (ratio 1.0).

Error feedback (``ErrorFeedback``): a client keeps the quantization error of each tensor and
adds it to its next update before quantizing, so what the server receives sums, over rounds,
to what the client really learned, up to one step's quantization error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .array_codec import (
    DEFAULT_LIMITS,
    Buffer,
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

SCHEMES = tuple(s.label for s in Scheme)
DEFAULT_BLOCK_SIZE = {Scheme.INT8: 512, Scheme.INT4: 128}
QMAX = {Scheme.INT8: 127, Scheme.INT4: 7}
FP16_MAX = float(np.finfo(np.float16).max)
# Non-zero blocks get at least this scale so 1/scale stays finite (subnormal inputs).
MIN_SCALE = float(np.finfo(np.float32).tiny)
INT4_OFFSET = 8  # a nibble stores q + 8; 8 is zero (also the padding of an odd count)


# --------------------------------------------------------------------------- block helpers


def _split_blocks(flat: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``flat``: the full blocks as (n_full, block) and the short tail (maybe empty)."""
    n_full = flat.size // block
    return flat[: n_full * block].reshape(n_full, block), flat[n_full * block :]


def _block_absmax(flat: np.ndarray, block: int) -> np.ndarray:
    head, tail = _split_blocks(flat, block)
    parts = [np.abs(head).max(axis=1)] if head.size else []
    if tail.size:
        parts.append(np.abs(tail).max(keepdims=True))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _scale_blocks_inplace(values: np.ndarray, factors: np.ndarray, block: int) -> None:
    """Multiply each block of the flat float32 ``values`` by its factor, in place."""
    head, tail = _split_blocks(values, block)
    if head.size:
        head *= factors[: head.shape[0], None]
    if tail.size:
        tail *= factors[-1]


def block_scales(flat: np.ndarray, scheme: Scheme, block: int) -> np.ndarray:
    """absmax / qmax per block; 0 for an all-zero block, never below MIN_SCALE otherwise."""
    absmax = _block_absmax(flat, block)
    if not np.all(np.isfinite(absmax)):
        raise ValueError("cannot quantize a tensor with NaN or inf values")
    scales = absmax / np.float32(QMAX[scheme])
    return np.where(absmax > 0, np.maximum(scales, np.float32(MIN_SCALE)), np.float32(0)).astype(np.float32)


# --------------------------------------------------------------------------- quantize


def quantize(x: np.ndarray, scheme: str | Scheme, block_size: int | None = None) -> PackedTensor:
    """Quantize one float tensor into wire parts (pure numpy, no serialisation)."""
    scheme = parse_scheme(scheme)
    x = _as_float32(x)
    if scheme is Scheme.FP32:
        return _pack_fp32(x)
    if scheme is Scheme.FP16:
        return _pack_fp16(x)
    block = _block_size(scheme, block_size)
    flat = x.reshape(-1)
    scales = block_scales(flat, scheme, block)
    q = _quantize_levels(flat, scales, scheme, block)
    payload = q.astype(np.int8).tobytes() if scheme is Scheme.INT8 else _pack_nibbles(q)
    return PackedTensor(scheme, x.shape, block, scales, payload)


def _as_float32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise ValueError(f"only floating tensors can be encoded, got dtype {x.dtype}")
    return np.asarray(x, dtype=np.float32, order="C")  # not ascontiguousarray: it makes 0-d 1-d


def _block_size(scheme: Scheme, block_size: int | None) -> int:
    block = DEFAULT_BLOCK_SIZE[scheme] if block_size is None else int(block_size)
    if not 1 <= block < 2**32:
        raise ValueError(f"block_size must be in [1, 2**32), got {block_size}")
    return block


def _pack_fp32(x: np.ndarray) -> PackedTensor:
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot encode a tensor with NaN or inf values")
    return PackedTensor(Scheme.FP32, x.shape, 0, np.zeros(0, np.float32), x.astype("<f4", copy=False).tobytes())


def _pack_fp16(x: np.ndarray) -> PackedTensor:
    with np.errstate(over="ignore"):  # overflow is reported below, as a ValueError
        half = x.astype("<f2")
    if not np.all(np.isfinite(half)):
        raise ValueError(f"cannot encode as fp16: NaN/inf values or magnitudes beyond {FP16_MAX:g}")
    return PackedTensor(Scheme.FP16, x.shape, 0, np.zeros(0, np.float32), half.tobytes())


def _quantize_levels(flat: np.ndarray, scales: np.ndarray, scheme: Scheme, block: int) -> np.ndarray:
    """Integer levels round(x / scale) in [-qmax, qmax], as float32 (exact small integers)."""
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
    levels = flat.copy()
    _scale_blocks_inplace(levels, inverse, block)
    np.rint(levels, out=levels)
    qmax = QMAX[scheme]
    return np.clip(levels, -qmax, qmax, out=levels)


def _pack_nibbles(levels: np.ndarray) -> bytes:
    """int4 levels -> bytes, element 2i in the low nibble of byte i (stored as q + 8)."""
    codes = (levels + INT4_OFFSET).astype(np.uint8)
    if codes.size % 2:
        codes = np.append(codes, np.uint8(INT4_OFFSET))
    return (codes[0::2] | (codes[1::2] << 4)).tobytes()


# --------------------------------------------------------------------------- dequantize


def dequantize(t: PackedTensor) -> np.ndarray:
    """Wire parts -> float32 array of ``t.shape`` (a fresh, writeable array)."""
    if t.scheme is Scheme.FP32:
        values = np.frombuffer(t.payload, dtype="<f4").astype(np.float32)
    elif t.scheme is Scheme.FP16:
        values = np.frombuffer(t.payload, dtype="<f2").astype(np.float32)
    else:
        values = _levels(t)
        _scale_blocks_inplace(values, t.scales, t.block_size)
    return values.reshape(t.shape)


def _levels(t: PackedTensor) -> np.ndarray:
    if t.scheme is Scheme.INT8:
        return np.frombuffer(t.payload, dtype=np.int8).astype(np.float32)
    return _unpack_nibbles(t.payload, t.numel)


def _unpack_nibbles(payload: Buffer, numel: int) -> np.ndarray:
    packed = np.frombuffer(payload, dtype=np.uint8)
    codes = np.empty(2 * packed.size, dtype=np.uint8)
    codes[0::2] = packed & 0x0F
    codes[1::2] = packed >> 4
    if numel % 2 and codes[numel] != INT4_OFFSET:
        raise CodecError("int4 padding nibble of an odd-sized tensor is not zero")
    levels = codes[:numel].astype(np.float32)
    levels -= INT4_OFFSET
    return levels


# --------------------------------------------------------------------------- one tensor, bytes


def encode_tensor(x: np.ndarray, scheme: str | Scheme, *, block_size: int | None = None, lz4: bool = True) -> bytes:
    """Quantize and serialise one tensor (LZ4 only where it pays, when ``lz4``)."""
    return pack_tensor(quantize(x, scheme, block_size), lz4=lz4)


def decode_tensor(data: Buffer, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Validate and decode one encoded tensor to float32; raise CodecError if malformed."""
    return dequantize(unpack_tensor(data, limits))


# --------------------------------------------------------------------------- whole adapters


def encode_adapter(
    state: Mapping[str, np.ndarray], scheme: str | Scheme, *, block_size: int | None = None, lz4: bool = True
) -> dict[str, bytes]:
    """Encode every tensor of an adapter (or update) with one scheme."""
    return {key: encode_tensor(value, scheme, block_size=block_size, lz4=lz4) for key, value in state.items()}


def decode_adapter(encoded: Mapping[str, Buffer], limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode an encoded adapter; every header and the totals are checked before decoding.
    An error names the tensor it is about."""
    check_tensor_count(len(encoded), limits)
    check_total_elements(
        sum(with_key(key, lambda d=data: read_header(d, limits).numel) for key, data in encoded.items()), limits
    )
    return {key: with_key(key, lambda d=data: decode_tensor(d, limits)) for key, data in encoded.items()}


def with_key(key: str, fn):
    """Run ``fn``; prefix any CodecError with the tensor's key so the log says which one."""
    try:
        return fn()
    except CodecError as exc:
        raise CodecError(f"{key!r}: {exc}") from None


def check_tensor_count(count: int, limits: DecodeLimits) -> None:
    if count > limits.max_tensors:
        raise CodecError(f"adapter has {count} tensors, over the limit of {limits.max_tensors}")


def check_total_elements(total: int, limits: DecodeLimits) -> None:
    if total > limits.max_total_elements:
        raise CodecError(f"adapter declares {total} elements in all, over the limit of {limits.max_total_elements}")


def bytes_per_element(scheme: str | Scheme) -> float:
    """Payload bytes per element in ``scheme``, its block scales included (headers and LZ4 not counted)."""
    s = parse_scheme(scheme)
    block = DEFAULT_BLOCK_SIZE.get(s)
    scale_bytes = 4.0 / block if block else 0.0  # one float32 scale per block
    return raw_payload_nbytes(s, 2) / 2 + scale_bytes


def encoded_nbytes(encoded: Mapping[str, Buffer]) -> int:
    """Bytes on the wire for an encoded adapter (tensor bytes; keys and framing not counted)."""
    return sum(len(data) for data in encoded.values())


# --------------------------------------------------------------------------- error feedback


def compensate(update: Mapping[str, np.ndarray], residuals: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``update + residual`` per key (a missing residual is zero); shapes must match."""
    out = {}
    for key, value in update.items():
        value = _as_float32(value)
        residual = residuals.get(key)
        if residual is not None and residual.shape != value.shape:
            raise ValueError(
                f"residual for {key!r} has shape {residual.shape}, update has {value.shape}; "
                "truncate/pad residuals to the new rank first (flq.adapter.truncate_to_rank / pad_to_rank)"
            )
        out[key] = value if residual is None else value + residual
    return out


def encode_with_feedback(
    update: Mapping[str, np.ndarray],
    residuals: Mapping[str, np.ndarray],
    scheme: str | Scheme,
    *,
    block_size: int | None = None,
    lz4: bool = True,
) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Encode ``update + residuals``; return (encoded, new residuals for this update's keys).

    The new residual is exactly ``compensated - decode(encoded)``: the part not sent yet.
    """
    encoded: dict[str, bytes] = {}
    new_residuals: dict[str, np.ndarray] = {}
    for key, value in compensate(update, residuals).items():
        packed = quantize(value, scheme, block_size)
        encoded[key] = pack_tensor(packed, lz4=lz4)
        new_residuals[key] = value - dequantize(packed)
    return encoded, new_residuals


class ErrorFeedback:
    """Per-tensor quantization residuals a client carries from round to round.

    Store ``to_arrays()`` in the client's state (e.g. an ArrayRecord in ``context.state``)
    and rebuild with ``ErrorFeedback(arrays)`` next round. Residuals of keys absent from
    an update are carried over unchanged. When the client's rank changes, reshape the
    residuals first with ``flq.adapter.truncate_to_rank`` / ``pad_to_rank``: they are an
    adapter-shaped dict, so the rank semantics carry over (a mismatch raises ValueError).
    """

    def __init__(self, residuals: Mapping[str, np.ndarray] | None = None) -> None:
        self._residuals = {k: np.array(v, dtype=np.float32) for k, v in (residuals or {}).items()}

    def encode(
        self, update: Mapping[str, np.ndarray], scheme: str | Scheme, *, block_size: int | None = None, lz4: bool = True
    ) -> dict[str, bytes]:
        """Encode ``update`` with the carried residuals added; keep the new residuals."""
        encoded, fresh = encode_with_feedback(update, self._residuals, scheme, block_size=block_size, lz4=lz4)
        self._residuals.update(fresh)
        return encoded

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the residuals (float32), ready to store."""
        return {k: v.copy() for k, v in self._residuals.items()}

    def reset(self) -> None:
        self._residuals.clear()
