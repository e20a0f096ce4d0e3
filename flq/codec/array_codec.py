"""A safe, versioned binary container for ONE encoded tensor (no pickle, no ``np.load``).

This module knows the wire layout, the size every scheme's payload must have, and the
optional LZ4 framing of that payload; the quantization math lives in ``update_codec``.

Wire format, version 1 (all integers little-endian)::

    offset  size        field
    0       4           magic b"FLQT"
    4       1   u8      format version (1)
    5       1   u8      scheme: 0 fp32, 1 fp16, 2 int8, 3 int4
    6       1   u8      dtype the decoder returns: 1 float32 (the only one in v1)
    7       1   u8      flags: bit 0 = body is one LZ4 frame; other bits must be 0
    8       1   u8      ndim (0 = scalar)
    9       3           reserved, must be 0
    12      4   u32     block_size: elements per scale (int8/int4), 0 for fp32/fp16
    16      4   u32     num_scales: ceil(numel / block_size) for int8/int4, 0 otherwise
    20      4   u32     body_nbytes: stored body length (the LZ4 frame's length when flagged)
    24      4*ndim u32  shape, C order
    ...     body_nbytes body = scales ‖ payload, or one LZ4 frame of exactly that:
              4*num_scales  float32 scales (absmax / qmax of each block of the flattened tensor)
              raw payload

The raw (uncompressed) payload is fp32: 4 B/element, fp16: 2, int8: 1 (int8 two's
complement), int4: ceil(numel/2) (element 2i in the low nibble of byte i, stored as q + 8;
an odd count pads the last high nibble with 8, i.e. zero). The header is 24 + 4*ndim bytes
(32 for a 2-D tensor), a multiple of 4, so scales and payload start 4-byte aligned. LZ4
covers scales and payload together: an all-zero tensor has all-zero scales too.

Decoding checks every field against ``DecodeLimits`` before anything is allocated, and the
encoded length must match the header exactly (no truncation, no trailing bytes). LZ4 output
is bounded by the raw body size the header implies, so a body can never inflate past it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum

import lz4.frame
import numpy as np

Buffer = bytes | bytearray | memoryview

MAGIC = b"FLQT"
FORMAT_VERSION = 1
DTYPE_FLOAT32 = 1
FLAG_LZ4 = 0x01
KNOWN_FLAGS = FLAG_LZ4

_FIXED = struct.Struct("<4sBBBBB3sIII")
FIXED_HEADER_NBYTES = _FIXED.size  # 24
MAX_U32 = 2**32 - 1

# LZ4 only where it pays: dense float and int8 bytes do not shrink, zero-heavy bodies (a fresh
# LoRA B) shrink by orders of magnitude (benchmarks/results/codec_throughput.md). Two cheap probes gate a full compress,
# and the result is kept only when it saves at least LZ4_MIN_SAVING of the raw size.
LZ4_MIN_BODY = 256  # below this the 15+ byte frame overhead eats any gain
LZ4_ZERO_FRACTION = 0.25  # share of zero bytes that makes compression worth trying
LZ4_ZERO_SAMPLES = 4096  # bytes sampled (evenly strided) to estimate the zero share
LZ4_PROBE_NBYTES = 4096  # prefix compressed to catch repetitive non-zero data
LZ4_PROBE_RATIO = 0.75  # prefix must shrink to this share to justify a full pass
LZ4_MIN_SAVING = 0.10


class CodecError(ValueError):
    """Encoded bytes are malformed, inconsistent, or exceed the decode limits."""


class Scheme(IntEnum):
    FP32 = 0
    FP16 = 1
    INT8 = 2
    INT4 = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def quantized(self) -> bool:
        return self in (Scheme.INT8, Scheme.INT4)


def parse_scheme(name: str | Scheme) -> Scheme:
    """``"int8"`` -> ``Scheme.INT8``; raise ValueError naming the valid schemes."""
    if isinstance(name, Scheme):
        return name
    try:
        return Scheme[str(name).upper()]
    except KeyError:
        valid = ", ".join(s.label for s in Scheme)
        raise ValueError(f"unknown update codec scheme {name!r}; expected one of: {valid}") from None


def raw_payload_nbytes(scheme: Scheme, numel: int) -> int:
    """Bytes of the uncompressed payload of ``numel`` elements in ``scheme``."""
    if scheme is Scheme.FP32:
        return 4 * numel
    if scheme is Scheme.FP16:
        return 2 * numel
    if scheme is Scheme.INT8:
        return numel
    return (numel + 1) // 2


def num_blocks(numel: int, block_size: int) -> int:
    return -(-numel // block_size) if numel else 0


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds a decoder enforces before it allocates anything.

    Defaults fit any LoRA adapter of a model up to a few billion parameters; raise them
    explicitly for bigger tensors (e.g. a full task head over a large vocabulary).
    """

    max_ndim: int = 8
    max_elements: int = 1 << 26  # per tensor: 64 Mi elements = 256 MiB as float32
    max_bytes: int = (1 << 28) + (1 << 20)  # per encoded tensor: fp32 at max_elements + slack
    max_tensors: int = 4096  # per adapter
    max_total_elements: int = 1 << 27  # per adapter: 512 MiB of decoded float32

    def __post_init__(self) -> None:
        for name in ("max_ndim", "max_elements", "max_bytes", "max_tensors", "max_total_elements"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecodeLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_ndim > 255:
            raise ValueError("DecodeLimits.max_ndim cannot exceed 255 (one header byte)")


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class PackedTensor:
    """One tensor in wire terms: scheme, shape, per-block scales and the raw payload."""

    scheme: Scheme
    shape: tuple[int, ...]
    block_size: int
    scales: np.ndarray  # float32, (num_scales,)
    payload: Buffer  # raw, uncompressed

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TensorHeader:
    """The validated header of an encoded tensor (nothing beyond it is read)."""

    version: int
    scheme: Scheme
    compressed: bool
    shape: tuple[int, ...]
    block_size: int
    num_scales: int
    body_nbytes: int  # as stored (compressed when flagged)
    header_nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def raw_body_nbytes(self) -> int:
        """Scales plus uncompressed payload: what the body must decompress to."""
        return 4 * self.num_scales + raw_payload_nbytes(self.scheme, self.numel)

    @property
    def total_nbytes(self) -> int:
        return self.header_nbytes + self.body_nbytes


# --------------------------------------------------------------------------- encoding


def pack_tensor(tensor: PackedTensor, *, lz4: bool = True) -> bytes:
    """Serialise ``tensor``; with ``lz4`` the body is LZ4-framed only where that pays."""
    _check_packable(tensor)
    body = [np.ascontiguousarray(tensor.scales, dtype="<f4").tobytes(), bytes(tensor.payload)]
    flags = 0
    if lz4:
        compressed = compress_if_it_pays(*body)
        if compressed is not None:
            body, flags = [compressed], FLAG_LZ4
    body_nbytes = sum(map(len, body))
    if body_nbytes > MAX_U32:
        raise ValueError(f"encoded body of {body_nbytes} B does not fit the u32 length field")
    head = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        int(tensor.scheme),
        DTYPE_FLOAT32,
        flags,
        len(tensor.shape),
        b"\0\0\0",
        tensor.block_size,
        tensor.scales.size,
        body_nbytes,
    )
    dims = struct.pack(f"<{len(tensor.shape)}I", *tensor.shape)
    return b"".join((head, dims, *body))


def _check_packable(t: PackedTensor) -> None:
    """Encoder-side checks: what we write must be something our decoder accepts."""
    if len(t.shape) > 255 or any(not 0 <= d <= MAX_U32 for d in t.shape):
        raise ValueError(f"shape {t.shape} does not fit the wire format (ndim <= 255, dims < 2**32)")
    if len(t.payload) != raw_payload_nbytes(t.scheme, t.numel):
        raise ValueError(f"{t.scheme.label} payload of {len(t.payload)} B does not match shape {t.shape}")
    if t.scheme.quantized:
        if not 1 <= t.block_size <= MAX_U32:
            raise ValueError(f"block_size must be in [1, 2**32), got {t.block_size}")
        expected = num_blocks(t.numel, t.block_size)
    else:
        if t.block_size != 0:
            raise ValueError(f"{t.scheme.label} has no blocks; block_size must be 0")
        expected = 0
    if t.scales.size != expected:
        raise ValueError(f"{t.scheme.label} needs {expected} scales, got {t.scales.size}")


def compress_if_it_pays(*parts: bytes) -> bytes | None:
    """One LZ4 frame of the joined ``parts`` if it saves >= LZ4_MIN_SAVING, else None."""
    size = sum(map(len, parts))
    if size < LZ4_MIN_BODY or not _looks_compressible(parts, size):
        return None
    framed = lz4.frame.compress(b"".join(parts), store_size=True)
    return framed if len(framed) <= (1.0 - LZ4_MIN_SAVING) * size else None


def _looks_compressible(parts: tuple[bytes, ...], size: int) -> bool:
    """Cheap probes (constant cost): many zero bytes in a strided sample, or a prefix LZ4 shrinks."""
    stride = max(1, size // LZ4_ZERO_SAMPLES)
    samples = [np.frombuffer(p, dtype=np.uint8)[::stride] for p in parts]
    sampled = sum(s.size for s in samples)
    if sampled and 1.0 - sum(np.count_nonzero(s) for s in samples) / sampled >= LZ4_ZERO_FRACTION:
        return True
    probe = b"".join(p[:LZ4_PROBE_NBYTES] for p in parts)[:LZ4_PROBE_NBYTES]
    return len(lz4.frame.compress(probe)) <= LZ4_PROBE_RATIO * len(probe)


# --------------------------------------------------------------------------- decoding


def read_header(data: Buffer, limits: DecodeLimits = DEFAULT_LIMITS) -> TensorHeader:
    """Parse and validate the header of ``data`` (lengths included); allocates nothing big."""
    if len(data) > limits.max_bytes:
        raise CodecError(f"encoded tensor is {len(data)} B, over the limit of {limits.max_bytes} B")
    if len(data) < FIXED_HEADER_NBYTES:
        raise CodecError(f"truncated: {len(data)} B is shorter than the {FIXED_HEADER_NBYTES} B header")
    (magic, version, scheme_id, dtype_id, flags, ndim, reserved, block_size, num_scales, body_nbytes) = (
        _FIXED.unpack_from(data, 0)
    )
    _check_fixed_fields(magic, version, scheme_id, dtype_id, flags, ndim, reserved, limits)
    header_nbytes = FIXED_HEADER_NBYTES + 4 * ndim
    if len(data) < header_nbytes:
        raise CodecError(f"truncated: {len(data)} B, header with ndim={ndim} needs {header_nbytes} B")
    shape = struct.unpack_from(f"<{ndim}I", data, FIXED_HEADER_NBYTES)
    header = TensorHeader(
        version=version,
        scheme=Scheme(scheme_id),
        compressed=bool(flags & FLAG_LZ4),
        shape=tuple(shape),
        block_size=block_size,
        num_scales=num_scales,
        body_nbytes=body_nbytes,
        header_nbytes=header_nbytes,
    )
    _check_counts(header, limits)
    _check_total_length(header, len(data))
    return header


def _check_fixed_fields(magic, version, scheme_id, dtype_id, flags, ndim, reserved, limits) -> None:
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not an FLQ tensor")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported format version {version} (this decoder reads {FORMAT_VERSION})")
    if scheme_id not in Scheme._value2member_map_:
        raise CodecError(f"unknown scheme id {scheme_id}")
    if dtype_id != DTYPE_FLOAT32:
        raise CodecError(f"unknown output dtype id {dtype_id}")
    if flags & ~KNOWN_FLAGS:
        raise CodecError(f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:02x}")
    if reserved != b"\0\0\0":
        raise CodecError("reserved header bytes are not zero")
    if ndim > limits.max_ndim:
        raise CodecError(f"ndim {ndim} exceeds the limit of {limits.max_ndim}")


def _check_counts(h: TensorHeader, limits: DecodeLimits) -> None:
    numel = h.numel  # Python int: no overflow whatever the dims
    if numel > limits.max_elements:
        raise CodecError(f"declared shape {h.shape} has {numel} elements, over the limit of {limits.max_elements}")
    if h.scheme.quantized:
        if h.block_size < 1:
            raise CodecError(f"{h.scheme.label} needs block_size >= 1, got {h.block_size}")
        expected_scales = num_blocks(numel, h.block_size)
    else:
        if h.block_size != 0:
            raise CodecError(f"{h.scheme.label} has no blocks but declares block_size {h.block_size}")
        expected_scales = 0
    if h.num_scales != expected_scales:
        raise CodecError(
            f"{h.scheme.label} with {numel} elements needs {expected_scales} scales, header says {h.num_scales}"
        )
    if not h.compressed and h.body_nbytes != h.raw_body_nbytes:
        raise CodecError(
            f"{h.scheme.label} body of shape {h.shape} must be {h.raw_body_nbytes} B, header says {h.body_nbytes}"
        )


def _check_total_length(h: TensorHeader, actual: int) -> None:
    if actual < h.total_nbytes:
        raise CodecError(f"truncated: header declares {h.total_nbytes} B, got {actual}")
    if actual > h.total_nbytes:
        raise CodecError(f"{actual - h.total_nbytes} trailing bytes after the declared {h.total_nbytes} B")


def unpack_tensor(data: Buffer, limits: DecodeLimits = DEFAULT_LIMITS) -> PackedTensor:
    """Validate ``data`` and split it into scales and the raw (decompressed) payload."""
    header = read_header(data, limits)
    body = memoryview(data)[header.header_nbytes : header.total_nbytes]
    if header.compressed:
        body = memoryview(decompress_bounded(body, header.raw_body_nbytes))
    scales_end = 4 * header.num_scales
    scales = np.frombuffer(body[:scales_end], dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise CodecError("scales must be finite and non-negative")
    return PackedTensor(header.scheme, header.shape, header.block_size, scales, body[scales_end:])


def decompress_bounded(frame: Buffer, expected_nbytes: int) -> bytes:
    """Decompress one LZ4 frame that must yield exactly ``expected_nbytes`` bytes.

    The declared content size (when present) is checked first, and the decompressor never
    produces more than ``expected_nbytes + 1`` bytes, so a lying frame cannot inflate.
    """
    try:
        declared = lz4.frame.get_frame_info(frame)["content_size"]
    except Exception as exc:  # lz4 raises RuntimeError/ValueError on garbage
        raise CodecError(f"payload is not a valid LZ4 frame: {exc}") from None
    if declared and declared != expected_nbytes:
        raise CodecError(f"LZ4 frame declares {declared} B, the header implies {expected_nbytes} B")
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        out = decompressor.decompress(frame, max_length=expected_nbytes + 1)
    except Exception as exc:
        raise CodecError(f"corrupt LZ4 payload: {exc}") from None
    if len(out) > expected_nbytes:
        raise CodecError(f"LZ4 payload inflates past the {expected_nbytes} B the header implies")
    if not decompressor.eof or len(out) != expected_nbytes:
        raise CodecError(f"truncated LZ4 payload: {len(out)} of {expected_nbytes} B")
    if decompressor.unused_data:
        raise CodecError(f"{len(decompressor.unused_data)} trailing bytes after the LZ4 frame")
    return out
