"""Sans-I/O frame codec for carrying Fleet API requests over QUIC streams.

One bidirectional QUIC stream carries one request and its response. Each direction is a
sequence of frames ``[4-byte big-endian payload length][1-byte type][payload]``:

    request:  REQUEST_HEAD  BODY*  END
    response: RESPONSE_HEAD BODY*  END        (or ERROR, at any point, instead)

The high bit of the type byte marks an LZ4-compressed BODY payload; the encoder sets it only
when compression makes that frame smaller. Every length is checked against `Limits` before
anything is allocated, and the decoder is a state machine fed with bytes that returns events
(the aioquic style); it never does I/O. The protocol version is carried in the TLS ALPN
(`ALPN`), so a peer speaking another version fails the handshake instead of misparsing.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import lz4.block

PROTOCOL_VERSION = 1
ALPN = f"flq-fleet/{PROTOCOL_VERSION}"

FRAME_HEADER = struct.Struct(">IB")
FLAG_LZ4 = 0x80
TYPE_MASK = 0x7F

# A body chunk is compressed only if it has at least this many bytes: below it LZ4's
# framing overhead wins more often than not, and the CPU is better spent elsewhere.
MIN_COMPRESS_SIZE = 256
DEFAULT_CHUNK_SIZE = 256 * 1024


class FrameType(IntEnum):
    REQUEST_HEAD = 1
    RESPONSE_HEAD = 2
    BODY = 3
    END = 4
    ERROR = 5


class ErrorCode(IntEnum):
    """Why a stream was refused; each maps to the HTTP status the client reports."""

    MALFORMED = 1
    FRAME_TOO_LARGE = 2
    BODY_TOO_LARGE = 3
    UNKNOWN_FRAME_TYPE = 4
    UNEXPECTED_FRAME = 5
    TRUNCATED = 6
    PATH_NOT_ALLOWED = 7
    METHOD_NOT_ALLOWED = 8
    UNAVAILABLE = 9
    INTERNAL = 10


HTTP_STATUS_FOR_ERROR = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.BODY_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_FRAME_TYPE: 400,
    ErrorCode.UNEXPECTED_FRAME: 400,
    ErrorCode.TRUNCATED: 400,
    ErrorCode.PATH_NOT_ALLOWED: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


@dataclass(frozen=True)
class Limits:
    """Hard bounds, all checked before allocating."""

    max_frame_payload: int = 1 << 20  # also the most a compressed BODY may inflate to
    max_body: int = 128 << 20  # one request or response body, all frames together
    max_headers: int = 64
    max_head_bytes: int = 16 << 10  # a whole REQUEST_HEAD / RESPONSE_HEAD payload
    max_path: int = 2048
    max_error_message: int = 1024
    # Requests only: an LZ4 BODY frame may inflate to at most this many times its compressed
    # size. 1 MiB of zeros is ~4 kB on the wire (~255x); FLQ's quantized updates compress < 2x,
    # so only degenerate data (long runs of one byte) goes uncompressed under this limit.
    max_lz4_ratio: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.max_head_bytes <= self.max_frame_payload:
            raise ValueError("max_head_bytes must be in (0, max_frame_payload]")
        if self.max_lz4_ratio < 1:
            raise ValueError("max_lz4_ratio must be >= 1")
        if self.max_frame_payload > 0xFFFFFFFF - 4:
            raise ValueError("max_frame_payload does not fit the 4-byte length field")


DEFAULT_LIMITS = Limits()


class FrameError(Exception):
    """A frame broke the protocol; `code` says how, the message says it for humans."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


# --- events -------------------------------------------------------------------------------

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    headers: Headers


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Headers


@dataclass(frozen=True)
class BodyChunk:
    data: bytes


@dataclass(frozen=True)
class MessageEnd:
    pass


@dataclass(frozen=True)
class PeerError:
    code: int
    message: str


Event = RequestHead | ResponseHead | BodyChunk | MessageEnd | PeerError

# --- validation of head fields -----------------------------------------------------------

_METHOD = re.compile(r"[A-Z]{1,16}")
_PATH = re.compile(r"/[\x21-\x7e]*")  # visible ASCII, no spaces or controls
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,255}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")


def _check_headers(headers: Iterable[tuple[str, str]], limits: Limits) -> Headers:
    out = tuple((name, value) for name, value in headers)
    if len(out) > limits.max_headers:
        raise FrameError(ErrorCode.MALFORMED, f"{len(out)} headers > limit {limits.max_headers}")
    for name, value in out:
        if not _HEADER_NAME.fullmatch(name):
            raise FrameError(ErrorCode.MALFORMED, f"invalid header name {name[:64]!r}")
        if len(value) > 0xFFFF or not _HEADER_VALUE.fullmatch(value):
            raise FrameError(ErrorCode.MALFORMED, f"invalid value for header {name!r}")
    return out


class _Reader:
    """Bounded cursor over one frame payload; every read checks what is left."""

    def __init__(self, payload: bytes) -> None:
        self._data = payload
        self._pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self._data) - self._pos:
            raise FrameError(ErrorCode.MALFORMED, f"{what} runs past the end of the frame")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def ascii(self, n: int, what: str) -> str:
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(ErrorCode.MALFORMED, f"{what} is not ASCII") from None

    def finish(self, what: str) -> None:
        if self._pos != len(self._data):
            raise FrameError(ErrorCode.MALFORMED, f"{len(self._data) - self._pos} trailing bytes in {what}")


def _pack_headers(headers: Headers) -> bytes:
    parts = [len(headers).to_bytes(2, "big")]
    for name, value in headers:
        raw_name, raw_value = name.encode("ascii"), value.encode("ascii")
        parts += [len(raw_name).to_bytes(1, "big"), raw_name, len(raw_value).to_bytes(2, "big"), raw_value]
    return b"".join(parts)


def _read_headers(reader: _Reader, limits: Limits) -> Headers:
    count = reader.u16("header count")
    if count > limits.max_headers:
        raise FrameError(ErrorCode.MALFORMED, f"{count} headers > limit {limits.max_headers}")
    headers = []
    for _ in range(count):
        name = reader.ascii(reader.u8("header name length"), "header name")
        value = reader.ascii(reader.u16("header value length"), "header value")
        headers.append((name, value))
    return _check_headers(headers, limits)


# --- one encoder and one decoder per frame type -----------------------------------------


def encode_frame(frame_type: FrameType, payload: bytes, *, compressed: bool = False) -> bytes:
    type_byte = int(frame_type) | (FLAG_LZ4 if compressed else 0)
    return FRAME_HEADER.pack(len(payload), type_byte) + payload


def encode_request_head(
    method: str, path: str, headers: Iterable[tuple[str, str]] = (), limits: Limits = DEFAULT_LIMITS
) -> bytes:
    if not _METHOD.fullmatch(method):
        raise FrameError(ErrorCode.MALFORMED, f"invalid method {method[:32]!r}")
    if len(path) > limits.max_path or not _PATH.fullmatch(path):
        raise FrameError(ErrorCode.MALFORMED, f"invalid path {path[:64]!r}")
    checked = _check_headers(headers, limits)
    payload = (
        len(method).to_bytes(1, "big")
        + method.encode("ascii")
        + len(path).to_bytes(2, "big")
        + path.encode("ascii")
        + _pack_headers(checked)
    )
    if len(payload) > limits.max_head_bytes:
        raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"request head of {len(payload)} bytes")
    return encode_frame(FrameType.REQUEST_HEAD, payload)


def decode_request_head(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> RequestHead:
    reader = _Reader(payload)
    method = reader.ascii(reader.u8("method length"), "method")
    if not _METHOD.fullmatch(method):
        raise FrameError(ErrorCode.MALFORMED, f"invalid method {method!r}")
    path_len = reader.u16("path length")
    if path_len > limits.max_path:
        raise FrameError(ErrorCode.MALFORMED, f"path of {path_len} bytes > limit {limits.max_path}")
    path = reader.ascii(path_len, "path")
    if not _PATH.fullmatch(path):
        raise FrameError(ErrorCode.MALFORMED, f"invalid path {path[:64]!r}")
    headers = _read_headers(reader, limits)
    reader.finish("request head")
    return RequestHead(method, path, headers)


def encode_response_head(
    status: int, headers: Iterable[tuple[str, str]] = (), limits: Limits = DEFAULT_LIMITS
) -> bytes:
    if not 100 <= status <= 599:
        raise FrameError(ErrorCode.MALFORMED, f"invalid status {status}")
    payload = status.to_bytes(2, "big") + _pack_headers(_check_headers(headers, limits))
    if len(payload) > limits.max_head_bytes:
        raise FrameError(ErrorCode.FRAME_TOO_LARGE, f"response head of {len(payload)} bytes")
    return encode_frame(FrameType.RESPONSE_HEAD, payload)


def decode_response_head(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> ResponseHead:
    reader = _Reader(payload)
    status = reader.u16("status")
    if not 100 <= status <= 599:
        raise FrameError(ErrorCode.MALFORMED, f"invalid status {status}")
    headers = _read_headers(reader, limits)
    reader.finish("response head")
    return ResponseHead(status, headers)


def encode_body_chunk(chunk: bytes, *, compress: bool = True, max_ratio: int | None = None) -> bytes:
    """One BODY frame; LZ4 only if it makes this frame smaller and inflates at most `max_ratio` x."""
    if compress and len(chunk) >= MIN_COMPRESS_SIZE:
        packed = lz4.block.compress(chunk, store_size=False)
        if len(packed) + 4 < len(chunk) and (max_ratio is None or len(chunk) <= max_ratio * len(packed)):
            return encode_frame(FrameType.BODY, len(chunk).to_bytes(4, "big") + packed, compressed=True)
    return encode_frame(FrameType.BODY, chunk)


Reserve = Callable[[int], None]  # called with an LZ4 frame's declared size before inflating; may raise FrameError


def decode_body(
    payload: bytes,
    compressed: bool,
    limits: Limits = DEFAULT_LIMITS,
    budget: int | None = None,
    *,
    max_ratio: int | None = None,
    reserve: Reserve | None = None,
) -> bytes:
    """A BODY payload; `budget` is how many body bytes the message may still carry.

    A compressed payload is checked against the frame limit, the body budget and `max_ratio`
    from its declared size alone, then `reserve` is told that size, and only then is the
    output buffer (exactly that size) allocated.
    """
    budget = limits.max_body if budget is None else budget
    if not compressed:
        if len(payload) > budget:
            raise FrameError(ErrorCode.BODY_TOO_LARGE, f"body exceeds {limits.max_body} bytes")
        return payload
    reader = _Reader(payload)
    size = reader.u32("decompressed size")
    if size > limits.max_frame_payload:
        raise FrameError(
            ErrorCode.FRAME_TOO_LARGE, f"LZ4 frame inflates to {size} bytes > limit {limits.max_frame_payload}"
        )
    if size > budget:
        raise FrameError(ErrorCode.BODY_TOO_LARGE, f"body exceeds {limits.max_body} bytes")
    packed = reader.take(len(payload) - 4, "LZ4 data")
    if max_ratio is not None and size > max_ratio * len(packed):
        raise FrameError(
            ErrorCode.FRAME_TOO_LARGE,
            f"LZ4 frame of {len(packed)} bytes declares {size} inflated (limit {max_ratio}x its size)",
        )
    if reserve is not None:
        reserve(size)
    try:
        # The output buffer is exactly `size` bytes: data that inflates further fails here.
        data = lz4.block.decompress(packed, uncompressed_size=size)
    except lz4.block.LZ4BlockError:
        raise FrameError(ErrorCode.MALFORMED, "LZ4 data is corrupt or inflates past its declared size") from None
    if len(data) != size:
        raise FrameError(ErrorCode.MALFORMED, f"LZ4 data inflates to {len(data)} bytes, declared {size}")
    return data


def encode_end() -> bytes:
    return encode_frame(FrameType.END, b"")


def decode_end(payload: bytes) -> MessageEnd:
    if payload:
        raise FrameError(ErrorCode.MALFORMED, "END frame with a payload")
    return MessageEnd()


def encode_error(code: int, message: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    raw = message.encode("utf-8")[: limits.max_error_message]
    raw = raw.decode("utf-8", errors="ignore").encode("utf-8")  # never cut a character in half
    return encode_frame(FrameType.ERROR, int(code).to_bytes(2, "big") + raw)


def decode_error(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> PeerError:
    reader = _Reader(payload)
    code = reader.u16("error code")
    raw = reader.take(len(payload) - 2, "error message")
    if len(raw) > limits.max_error_message:
        raise FrameError(ErrorCode.MALFORMED, "error message too long")
    return PeerError(code, raw.decode("utf-8", errors="replace"))


def encode_body(
    body: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE, compress: bool = True, max_ratio: int | None = None
) -> list[bytes]:
    view = memoryview(body)
    return [
        encode_body_chunk(bytes(view[i : i + chunk_size]), compress=compress, max_ratio=max_ratio)
        for i in range(0, len(body), chunk_size)
    ]


def encode_request(
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    compress: bool = True,
) -> list[bytes]:
    if len(body) > limits.max_body:
        raise FrameError(ErrorCode.BODY_TOO_LARGE, f"request body of {len(body)} bytes")
    return [
        encode_request_head(method, path, headers, limits),
        *encode_body(
            body,
            chunk_size=min(DEFAULT_CHUNK_SIZE, limits.max_frame_payload),
            compress=compress,
            max_ratio=limits.max_lz4_ratio,
        ),
        encode_end(),
    ]


def encode_response(
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    compress: bool = True,
) -> list[bytes]:
    return [
        encode_response_head(status, headers, limits),
        *encode_body(body, chunk_size=min(DEFAULT_CHUNK_SIZE, limits.max_frame_payload), compress=compress),
        encode_end(),
    ]


# --- the stream decoder ------------------------------------------------------------------

_AWAIT_HEAD, _IN_BODY, _DONE = range(3)


class StreamDecoder:
    """Decodes one direction of one stream. `feed` bytes, get events; errors raise FrameError.

    `expect` is "request" on the server (REQUEST_HEAD first) and "response" on the client;
    requests also obey `limits.max_lz4_ratio`. After END or ERROR the message is complete;
    any further frame is an error. `feed`'s `reserve`, if given, is called with each LZ4
    frame's declared size before it is inflated (the server charges its memory budget there).
    """

    def __init__(self, expect: str, limits: Limits = DEFAULT_LIMITS) -> None:
        if expect not in ("request", "response"):
            raise ValueError("expect must be 'request' or 'response'")
        self._head_type = FrameType.REQUEST_HEAD if expect == "request" else FrameType.RESPONSE_HEAD
        self._max_ratio = limits.max_lz4_ratio if expect == "request" else None
        self._reserve: Reserve | None = None
        self._limits = limits
        self._buffer = bytearray()
        self._state = _AWAIT_HEAD
        self._body_bytes = 0
        # why the stream failed, as (code, message): never the exception itself, whose traceback
        # holds the caller's frames (and the stream they decode) in a reference cycle
        self._failed: tuple[ErrorCode, str] | None = None

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    @property
    def body_bytes(self) -> int:
        return self._body_bytes

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes, *, reserve: Reserve | None = None) -> list[Event]:
        if self._failed is not None:
            raise FrameError(*self._failed)
        self._reserve = reserve  # held only during this call: no reference cycle through the caller
        try:
            return self._feed(data)
        except FrameError as exc:
            self._failed = (exc.code, exc.message)
            self._buffer.clear()
            raise
        finally:
            self._reserve = None

    def discard(self) -> None:
        """Keep nothing more (the stream is refused or forgotten): any further input fails."""
        self._buffer = bytearray()
        if self._failed is None:
            self._failed = (ErrorCode.UNEXPECTED_FRAME, "the stream is closed")

    def end_of_stream(self) -> None:
        """The peer finished its side: anything short of a complete message is truncated."""
        if self._failed is not None:
            raise FrameError(*self._failed)
        if self._state != _DONE or self._buffer:
            self._failed = (ErrorCode.TRUNCATED, "stream ended inside a message")
            raise FrameError(*self._failed)

    def _max_payload(self, frame_type: FrameType, compressed: bool) -> int:
        if frame_type is FrameType.BODY:
            return self._limits.max_frame_payload + (4 if compressed else 0)
        if frame_type is FrameType.ERROR:
            return 2 + self._limits.max_error_message
        if frame_type is FrameType.END:
            return 0
        return self._limits.max_head_bytes

    def _feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        while len(buffer) >= FRAME_HEADER.size:
            length, type_byte = FRAME_HEADER.unpack_from(buffer)
            compressed = bool(type_byte & FLAG_LZ4)
            try:
                frame_type = FrameType(type_byte & TYPE_MASK)
            except ValueError:
                raise FrameError(ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type {type_byte & TYPE_MASK}") from None
            if compressed and frame_type is not FrameType.BODY:
                raise FrameError(ErrorCode.MALFORMED, f"LZ4 flag on a {frame_type.name} frame")
            # Checked on the 5-byte header alone: a declared 4 GB frame is refused before
            # a single payload byte is buffered.
            limit = self._max_payload(frame_type, compressed)
            if length > limit:
                raise FrameError(
                    ErrorCode.FRAME_TOO_LARGE, f"{frame_type.name} frame declares {length} bytes > limit {limit}"
                )
            self._check_order(frame_type)
            end = FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            payload = bytes(buffer[FRAME_HEADER.size : end])
            del buffer[:end]
            events.append(self._handle(frame_type, payload, compressed))
        return events

    def _check_order(self, frame_type: FrameType) -> None:
        if self._state == _DONE:
            raise FrameError(ErrorCode.UNEXPECTED_FRAME, f"{frame_type.name} frame after the end of the message")
        if frame_type is FrameType.ERROR:
            return
        if self._state == _AWAIT_HEAD:
            if frame_type is not self._head_type:
                raise FrameError(
                    ErrorCode.UNEXPECTED_FRAME, f"{frame_type.name} frame where {self._head_type.name} was expected"
                )
        elif frame_type not in (FrameType.BODY, FrameType.END):
            raise FrameError(ErrorCode.UNEXPECTED_FRAME, f"{frame_type.name} frame inside a body")

    def _handle(self, frame_type: FrameType, payload: bytes, compressed: bool) -> Event:
        if frame_type is FrameType.REQUEST_HEAD:
            self._state = _IN_BODY
            return decode_request_head(payload, self._limits)
        if frame_type is FrameType.RESPONSE_HEAD:
            self._state = _IN_BODY
            return decode_response_head(payload, self._limits)
        if frame_type is FrameType.BODY:
            data = decode_body(
                payload,
                compressed,
                self._limits,
                self._limits.max_body - self._body_bytes,
                max_ratio=self._max_ratio,
                reserve=self._reserve,
            )
            self._body_bytes += len(data)
            return BodyChunk(data)
        self._state = _DONE
        if frame_type is FrameType.END:
            return decode_end(payload)
        return decode_error(payload, self._limits)
