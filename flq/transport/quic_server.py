"""QUIC server that feeds each stream, as one HTTP request, into an ASGI app.

Only POST requests under `allowed_prefix` (the Fleet API) are accepted; anything else, and
any frame that breaks the protocol or its limits, closes that one stream with an ERROR frame
and a clear message while the connection and every other client carry on.

0-RTT: tickets are single-use (see session_tickets), and a request that arrived as early
data is run before the handshake completes only if replaying it could do no harm
(`early_safe_paths`); any other early request waits for the handshake to be confirmed, so
a replayed ClientHello never executes it (RFC 8470's advice for servers).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from . import frames
from .asgi_bridge import ASGIApp, call_asgi, http_scope
from .congestion import remember_paths
from .quic_settings import QuicSettings, pending_datagrams, server_configuration, udp_socket
from .recovery import tolerate_reordering
from .session_tickets import ServerTicketStore

log = logging.getLogger("flq.transport.quic")

FLEET_PREFIX = "/v1/fleet/"
# Fleet RPCs run at once even when they arrive as 0-RTT data, because executing a replayed
# copy harms nothing: reads, idempotent writes (push-object is content-addressed, activate
# and confirm are idempotent), and pull-messages, whose replay can at worst hide a message
# from its node, which an on-path attacker able to replay can do anyway by dropping packets.
# Everything else (push-messages, register/unregister/deactivate-node) waits for the handshake.
FLEET_EARLY_SAFE_PATHS = frozenset(
    {
        "/v1/fleet/send-node-heartbeat",
        "/v1/fleet/get-run",
        "/v1/fleet/get-fab",
        "/v1/fleet/pull-object",
        "/v1/fleet/push-object",
        "/v1/fleet/pull-messages",
        "/v1/fleet/confirm-message-received",
        "/v1/fleet/activate-node",
    }
)
QUIC_APP_ERROR = 0x100  # application error code for STOP_SENDING on a refused stream


@dataclass
class ServerStats:
    connections: int = 0
    handshakes: int = 0
    resumed: int = 0
    early_data_accepted: int = 0
    requests: int = 0
    early_requests: int = 0
    refused_streams: int = 0
    migrations: int = 0


class _RequestStream:
    __slots__ = ("stream_id", "decoder", "head", "body", "dispatched", "refused", "disconnected", "early")

    def __init__(self, stream_id: int, limits: frames.Limits) -> None:
        self.stream_id = stream_id
        self.decoder = frames.StreamDecoder("request", limits)
        self.head: frames.RequestHead | None = None
        self.body = bytearray()
        self.dispatched = False
        self.refused = False
        self.disconnected = asyncio.Event()
        self.early = False


class _FleetServerConnection(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, stream_handler=None, *, server: FleetQuicServer) -> None:
        super().__init__(quic, stream_handler)
        if server.settings.adaptive_reordering:
            tolerate_reordering(quic)
        self._server = server
        self._streams: dict[int, _RequestStream] = {}
        self._handshake_done = asyncio.Event()
        self._terminated = asyncio.Event()
        self._buffered = 0  # request bytes held for this connection, across its streams
        self._peer: tuple[str, int] | None = None
        self._seen_addresses: set[tuple[str, int]] = set()
        server.stats.connections += 1
        server.connections.add(self)

    # --- events -----------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, (events.StreamReset, events.StopSendingReceived)):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                self._release(stream)
                stream.disconnected.set()
        elif isinstance(event, events.HandshakeCompleted):
            self._on_handshake(event)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated.set()
            self._server.connections.discard(self)
            for stream in self._streams.values():
                stream.disconnected.set()
            self._streams.clear()
            self._buffered = 0
            log.info(
                "QUIC connection from %s closed: %s", self._peer_text(), event.reason_phrase or "idle or peer closed"
            )

    def datagram_received(self, data, addr) -> None:
        key = _addr_key(addr)
        if not self._seen_addresses and self._server.settings.resume_paths:
            remember_paths(self._quic, key[0])
        if key not in self._seen_addresses:
            if self._seen_addresses and self._handshake_done.is_set():
                # aioquic validates the new path itself; this only makes migration observable.
                self._server.stats.migrations += 1
                log.info("QUIC client %s now sends from %s (connection migration)", self._peer_text(), _fmt(key))
            self._seen_addresses.add(key)
            self._peer = key
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        receiving = self._server.receiving
        if receiving is None:
            self.answer()
        else:
            receiving[self] = None  # answers once the socket is drained

    def answer(self) -> None:
        """Act on what was received and send what it calls for (ACKs, responses, window updates)."""
        self._process_events()
        self.transmit()

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        stats = self._server.stats
        stats.handshakes += 1
        stats.resumed += int(event.session_resumed)
        stats.early_data_accepted += int(event.early_data_accepted)
        self._handshake_done.set()
        log.info(
            "QUIC connection from %s (resumed=%s, 0-RTT %s)",
            self._peer_text(),
            event.session_resumed,
            "accepted" if event.early_data_accepted else "not used",
        )

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            if event.stream_id % 4 != 0:  # only client-initiated bidirectional streams carry requests
                if event.stream_id % 4 == 2:
                    self._quic.stop_stream(event.stream_id, QUIC_APP_ERROR)
                    self.transmit()
                return
            stream = self._streams[event.stream_id] = _RequestStream(event.stream_id, self._server.settings.limits)
            stream.early = not self._handshake_done.is_set()
        if stream.refused:
            return
        try:
            for item in stream.decoder.feed(event.data):
                self._on_frame(stream, item)
            if event.end_stream:
                stream.decoder.end_of_stream()
        except frames.FrameError as exc:
            self._refuse(stream, exc.code, exc.message)

    def _on_frame(self, stream: _RequestStream, item: frames.Event) -> None:
        if isinstance(item, frames.RequestHead):
            if item.method != "POST":
                raise frames.FrameError(frames.ErrorCode.METHOD_NOT_ALLOWED, f"method {item.method} not allowed")
            if not item.path.startswith(self._server.allowed_prefix):
                raise frames.FrameError(
                    frames.ErrorCode.PATH_NOT_ALLOWED,
                    f"path {item.path} is not served over QUIC (only {self._server.allowed_prefix}*)",
                )
            stream.head = item
        elif isinstance(item, frames.BodyChunk):
            self._buffered += len(item.data)
            if self._buffered > self._server.max_buffered_per_connection:
                raise frames.FrameError(
                    frames.ErrorCode.BODY_TOO_LARGE, "too many request bytes buffered on this connection"
                )
            stream.body += item.data
        elif isinstance(item, frames.MessageEnd):
            stream.dispatched = True
            asyncio.ensure_future(self._serve(stream))
        elif isinstance(item, frames.PeerError):  # the client gave up on this request
            self._streams.pop(stream.stream_id, None)
            self._release(stream)
            stream.disconnected.set()

    # --- requests ---------------------------------------------------------------------

    async def _serve(self, stream: _RequestStream) -> None:
        server = self._server
        head = stream.head
        assert head is not None
        body = bytes(stream.body)
        self._release(stream)
        server.stats.requests += 1
        if stream.early:
            server.stats.early_requests += 1
        if not self._handshake_done.is_set() and head.path not in server.early_safe_paths:
            await self._wait_handshake()
            if not self._handshake_done.is_set():
                return  # never confirmed: possibly a replay, so never executed
        scope = http_scope(
            head.method,
            head.path,
            list(head.headers),
            client=self._peer,
            server=server.address,
            state=server.lifespan_state(),
        )
        try:
            await call_asgi(
                server.app,
                scope,
                body,
                on_head=functools.partial(self._send_head, stream),
                on_body=functools.partial(self._send_body, stream),
                disconnected=stream.disconnected,
            )
        except Exception:  # the app's own failure: it has answered 500 already
            log.exception("Fleet request %s over QUIC failed", head.path)
        finally:
            stream.disconnected.set()
            self._streams.pop(stream.stream_id, None)

    async def _wait_handshake(self) -> None:
        waiters = [asyncio.ensure_future(self._handshake_done.wait()), asyncio.ensure_future(self._terminated.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self._server.settings.handshake_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _send(self, stream: _RequestStream, data: bytes, end: bool = False) -> None:
        if stream.disconnected.is_set() or self._terminated.is_set():
            return
        try:
            self._quic.send_stream_data(stream.stream_id, data, end_stream=end)
        except Exception:  # the peer reset or stopped the stream meanwhile
            stream.disconnected.set()
            return
        self.transmit()

    def _send_head(self, stream: _RequestStream, status: int, headers: list[tuple[str, str]]) -> None:
        limits = self._server.settings.limits
        # HTTP/1-only hop headers mean nothing on a QUIC stream.
        kept = [(k.lower(), v) for k, v in headers if k.lower() not in ("connection", "transfer-encoding")]
        self._send(stream, frames.encode_response_head(status, kept[: limits.max_headers], limits))

    def _send_body(self, stream: _RequestStream, data: bytes, more: bool) -> None:
        out = frames.encode_body(
            data, chunk_size=min(frames.DEFAULT_CHUNK_SIZE, self._server.settings.limits.max_frame_payload)
        )
        if not more:
            out.append(frames.encode_end())
        self._send(stream, b"".join(out), end=not more)

    def _refuse(self, stream: _RequestStream, code: frames.ErrorCode, message: str) -> None:
        stream.refused = True
        self._release(stream)
        self._server.stats.refused_streams += 1
        log.warning("QUIC stream %d from %s refused: %s (%s)", stream.stream_id, self._peer_text(), message, code.name)
        try:
            self._quic.send_stream_data(stream.stream_id, frames.encode_error(code, message), end_stream=True)
            self._quic.stop_stream(stream.stream_id, QUIC_APP_ERROR)  # stop the peer sending more
        except Exception:  # the stream is already gone in that direction
            pass
        stream.disconnected.set()
        self.transmit()

    def _release(self, stream: _RequestStream) -> None:
        self._buffered -= len(stream.body)
        stream.body = bytearray()

    def _peer_text(self) -> str:
        return _fmt(self._peer) if self._peer else "?"


def _addr_key(addr) -> tuple[str, int]:
    host = addr[0]
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, addr[1]


def _fmt(addr) -> str:
    host, port = _addr_key(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _DrainingQuicServer(QuicServer):
    """aioquic's QuicServer, except that every datagram already queued on the socket is read
    before any connection answers: one reply per wake-up instead of one per datagram."""

    def __init__(self, *, fleet: FleetQuicServer, sock: socket.socket, **kwargs) -> None:
        super().__init__(**kwargs)
        self._fleet, self._sock = fleet, sock

    def datagram_received(self, data, addr) -> None:
        receiving = self._fleet.receiving = {}  # connections that received, in order
        try:
            super().datagram_received(data, addr)
            for data, addr in pending_datagrams(self._sock, self._fleet.settings.receive_batch - 1):
                super().datagram_received(data, addr)
        except OSError as exc:  # what asyncio would hand to error_received: logged, reading goes on
            log.debug("QUIC socket error: %s", exc)
        finally:
            self._fleet.receiving = None
        for connection in receiving:
            connection.answer()


class FleetQuicServer:
    """Serves `app`'s Fleet routes over QUIC on one UDP socket, in the running event loop."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        certfile: str,
        keyfile: str,
        settings: QuicSettings | None = None,
        allowed_prefix: str = FLEET_PREFIX,
        early_safe_paths: Iterable[str] = FLEET_EARLY_SAFE_PATHS,
        lifespan_state: Callable[[], dict] = dict,
        max_buffered_per_connection: int | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or QuicSettings()
        self.allowed_prefix = allowed_prefix
        self.early_safe_paths = frozenset(early_safe_paths)
        self.lifespan_state = lifespan_state
        self.max_buffered_per_connection = max_buffered_per_connection or 2 * self.settings.limits.max_body
        self.stats = ServerStats()
        self.connections: set[_FleetServerConnection] = set()
        self.tickets = ServerTicketStore()
        self.address: tuple[str, int] | None = None
        self._configuration = server_configuration(certfile, keyfile, self.settings)
        self._protocol: QuicServer | None = None
        self.receiving: dict[_FleetServerConnection, None] | None = None  # set while a batch is read
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        sock = udp_socket(host, port, self.settings.socket_buffer)
        self._transport, self._protocol = await loop.create_datagram_endpoint(
            lambda: _DrainingQuicServer(
                fleet=self,
                sock=sock,
                configuration=self._configuration,
                create_protocol=functools.partial(_FleetServerConnection, server=self),
                session_ticket_fetcher=self.tickets.pop,
                session_ticket_handler=self.tickets.add,
            ),
            sock=sock,
        )
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    def close(self) -> None:
        """Close every connection (peers learn at once, with a reason) and the socket."""
        if self._protocol is None:
            return
        for connection in list(self.connections):
            connection.close(reason_phrase="server shutting down")
        self.connections.clear()
        if self._transport is not None:
            self._transport.close()
        self._protocol = None
