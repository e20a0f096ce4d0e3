"""Crafted QUIC datagrams, Fleet frames and a raw client for hostile-load tests and benchmarks.

Plain functions and one small asyncio client; nothing here talks to a server by itself. Used by
tests/test_quic_hostile.py and benchmarks/quic_hostile_load.py (issue 23). Each helper builds
what an outside attacker can send: no server secrets, only what any client sees on the wire.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterable

import lz4.block
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from flq.transport import frames
from flq.transport.quic_settings import QuicSettings, client_configuration

# --- datagrams ---------------------------------------------------------------------------------


def junk_initial(size: int = 1200) -> bytes:
    """A QUIC v1 Initial long header with fresh connection IDs and a garbage payload, `size` bytes."""
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + b"\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"
    rest = size - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def real_initial(cafile: str, host: str, port: int, server_name: str | None = None) -> bytes:
    """The first datagram of a real client handshake (a ClientHello that will never be continued)."""
    conn = QuicConnection(configuration=client_configuration(server_name or host, QuicSettings(), cafile=cafile))
    conn.connect((host, port), now=time.monotonic())
    return conn.datagrams_to_send(now=time.monotonic())[0][0]


def short_header(cid: bytes, size: int = 60) -> bytes:
    """A 1-RTT (short header) datagram for connection ID `cid` with a garbage payload."""
    return bytes([0x40]) + cid + os.urandom(max(0, size - 1 - len(cid)))


def is_retry(datagram: bytes) -> bool:
    """Whether a server datagram is a QUIC v1 Retry packet (long header, type 3)."""
    return len(datagram) > 5 and datagram[0] & 0x80 and (datagram[0] & 0x30) == 0x30


def bind_udp(host: str, port: int = 0) -> socket.socket:
    """A non-blocking UDP socket bound to `host` (any 127.x.y.z works on Linux loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """Everything queued on a non-blocking socket, without waiting."""
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:  # e.g. ICMP port unreachable reported on the socket
            continue


# --- Fleet frames ------------------------------------------------------------------------------


def partial_body(size: int, path: str = "/v1/fleet/push-object", *, filler: bytes | None = None) -> bytes:
    """A request head and one raw BODY frame that declares `size` bytes and carries all but one."""
    data = filler[: size - 1] if filler is not None else b"\x01" * (size - 1)
    return frames.encode_request_head("POST", path) + struct.pack(">IB", size, frames.FrameType.BODY) + data


def lz4_frame(data: bytes) -> bytes:
    """A BODY frame carrying `data` LZ4-compressed, whatever its ratio (a legal frame for the codec)."""
    payload = len(data).to_bytes(4, "big") + lz4.block.compress(data, store_size=False)
    return frames.encode_frame(frames.FrameType.BODY, payload, compressed=True)


def compressible(size: int, max_ratio: int) -> bytes:
    """`size` bytes that LZ4 shrinks by close to, but not more than, `max_ratio` (mostly zeros with a
    random byte every so often): the most a frame can amplify under the server's ratio limit."""
    best = os.urandom(size)
    for gap in (16, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512):
        data = bytearray(size)
        data[::gap] = os.urandom(len(range(0, size, gap)))
        packed = lz4.block.compress(bytes(data), store_size=False)
        if size > max_ratio * len(packed):
            break
        best = bytes(data)
    return best


def with_unknown_field(message: bytes, pad: int, field_number: int = 1000) -> bytes:
    """A protobuf message padded with a length-delimited unknown field: parsers keep and ignore it."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return message + varint(field_number << 3 | 2) + varint(pad) + os.urandom(pad)


# Paths that try to reach the SuperLink app's Control and Runtime routes through the Fleet prefix.
TRAVERSAL_PATHS = (
    "/v1/fleet/../control/list-runs",
    "/v1/fleet/../control/stop-run",
    "/v1/fleet/get-run/../../control/list-runs",
    "/v1/fleet/%2e%2e/control/list-runs",
    "/v1/fleet/%2E%2E/runtime/pull-task-input",
    "/v1/fleet/..%2fcontrol/list-runs",
    "/v1/fleet/./get-run",
    "/v1/fleet//get-run",
    "//v1/fleet/get-run",
    "/v1/fleet/get-run?x=/../control",
    "/v1/fleet/get-run#../control",
    "/v1/fleet/get-run/",
    "/v1/fleet\\..\\control\\list-runs",
    "/V1/fleet/get-run",
    "/v1/control/list-runs",
    "/v1/runtime/pull-task-input",
    "/health",
)


def request_bytes(path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """One complete request (REQUEST_HEAD, BODY frames, END), as FLQ's client frames it."""
    return b"".join(frames.encode_request("POST", path, list(headers), body))


# --- a raw QUIC client ----------------------------------------------------------------------------


def send_at_offset(quic: QuicConnection, stream_id: int, offset: int, data: bytes) -> None:
    """Queue `data` at stream `offset` on a stream nothing was sent on yet: the peer receives one
    STREAM frame far ahead of anything it has (out-of-order data, the gap below it empty)."""
    sender = quic._get_or_create_stream_for_send(stream_id).sender
    assert sender._buffer_stop == 0 and not sender._buffer, "send_at_offset needs a fresh stream"
    sender._buffer_start = sender._buffer_stop = offset  # nothing below `offset` is ever sent
    sender.write(data)


class DefiantQuicConnection(QuicConnection):
    """A client that ignores STOP_SENDING: it keeps sending on a stream the server asked it to stop
    (what a hostile peer may do; aioquic's own client would reset its side and refuse to write)."""

    def _handle_stop_sending_frame(self, context, frame_type: int, buf) -> None:
        buf.pull_uint_var()  # stream ID
        buf.pull_uint_var()  # error code


class _Capture:
    """A datagram transport that keeps a copy of what it sends."""

    def __init__(self, transport: asyncio.DatagramTransport, keep: int) -> None:
        self._transport, self._keep = transport, keep
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr=None) -> None:
        self.sent.append(data)
        del self.sent[: -self._keep]
        self._transport.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self._transport, name)


class RawConnection(QuicConnectionProtocol):
    """An aioquic client connection that collects each stream's response bytes as they come."""

    def __init__(self, quic: QuicConnection, stream_handler=None) -> None:
        super().__init__(quic, stream_handler)
        self.data: dict[int, bytearray] = {}
        self.done: dict[int, asyncio.Future] = {}
        self.terminated: events.ConnectionTerminated | None = None
        self.capture: _Capture | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream or frames_complete(self.data[event.stream_id]):
                self._settle(event.stream_id, "end")
            return  # not through aioquic's stream readers: they would keep a second copy
        if isinstance(event, events.StreamReset):
            self._settle(event.stream_id, "reset")
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            for stream_id in list(self.done):
                self._settle(stream_id, "closed")
        super().quic_event_received(event)

    def _settle(self, stream_id: int, how: str) -> None:
        future = self.done.get(stream_id)
        if future is not None and not future.done():
            future.set_result(how)

    def start_capture(self, keep: int = 64) -> _Capture:
        self.capture = self._transport = _Capture(self._transport, keep)
        return self.capture

    @property
    def server_cid(self) -> bytes:
        """The server's connection ID this client currently sends to (visible on the wire)."""
        return self._quic._peer_cid.cid

    def send(self, data: bytes, *, end: bool = True, stream_id: int | None = None) -> int:
        """Send bytes on a (new) stream; `wait` for the server's answer on it."""
        if stream_id is None:
            stream_id = self._quic.get_next_available_stream_id()
        self.done.setdefault(stream_id, self._loop.create_future())
        if self.terminated is not None:
            self._settle(stream_id, "closed")
            return stream_id
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()
        return stream_id

    def send_at(self, offset: int, data: bytes) -> int:
        """One STREAM frame at `offset` on a new stream (see `send_at_offset`)."""
        stream_id = self._quic.get_next_available_stream_id()
        self.done.setdefault(stream_id, self._loop.create_future())
        send_at_offset(self._quic, stream_id, offset, data)
        self.transmit()
        return stream_id

    async def wait(self, stream_id: int, timeout: float) -> str:
        """'end' (a complete answer or FIN), 'reset', 'closed' or 'timeout'."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.done[stream_id]), timeout)
        except TimeoutError:
            return "timeout"

    def answer(self, stream_id: int) -> list[frames.Event]:
        """The server's frames on a stream so far (a decoding error comes back as a PeerError)."""
        try:
            return frames.StreamDecoder("response").feed(bytes(self.data.get(stream_id, b"")))
        except frames.FrameError as exc:
            return [frames.PeerError(int(exc.code), f"undecodable answer: {exc.message}")]

    def forget(self, stream_id: int) -> None:
        self.data.pop(stream_id, None)
        self.done.pop(stream_id, None)


def frames_complete(data: bytes | bytearray) -> bool:
    """Whether `data` holds a complete response (ending in END or ERROR), parsed by headers alone."""
    pos = 0
    while len(data) - pos >= frames.FRAME_HEADER.size:
        length, type_byte = frames.FRAME_HEADER.unpack_from(data, pos)
        pos += frames.FRAME_HEADER.size + length
        if pos > len(data):
            return False
        if type_byte & frames.TYPE_MASK in (frames.FrameType.END, frames.FrameType.ERROR):
            return True
    return False


def outcome(events_: list[frames.Event]) -> str:
    """A short name for a stream's answer: 'HTTP <status>' or the ERROR frame's code name."""
    for event in events_:
        if isinstance(event, frames.PeerError):
            try:
                return frames.ErrorCode(event.code).name
            except ValueError:
                return f"error {event.code}"
    for event in events_:
        if isinstance(event, frames.ResponseHead):
            return f"HTTP {event.status}"
    return "no answer"


async def open_connection(
    host: str,
    port: int,
    *,
    cafile: str,
    local_host: str = "127.0.0.1",
    settings: QuicSettings | None = None,
    timeout: float = 10.0,
    quic_class: type[QuicConnection] = QuicConnection,
) -> tuple[RawConnection, asyncio.DatagramTransport]:
    """A completed handshake from a socket bound to `local_host`; close with `close_connection`."""
    loop = asyncio.get_running_loop()
    quic = quic_class(configuration=client_configuration(host, settings or QuicSettings(), cafile=cafile))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local_host, 0))
    transport, protocol = await loop.create_datagram_endpoint(lambda: RawConnection(quic), sock=sock)
    try:
        protocol.connect((host, port))
        await asyncio.wait_for(protocol.wait_connected(), timeout)
    except BaseException:
        transport.close()
        raise
    return protocol, transport


async def close_connection(protocol: RawConnection, transport: asyncio.DatagramTransport, wait: float = 1.0) -> None:
    try:
        protocol.close()
        await asyncio.wait_for(protocol.wait_closed(), wait)
    except (TimeoutError, Exception):
        pass
    finally:
        transport.close()
