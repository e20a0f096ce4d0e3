"""Asyncio QUIC client for the Fleet API: one connection, one bidirectional stream per request.

The client keeps the server's latest session ticket (in memory and, if given a `TicketFile`,
on disk), so a new connection, even from a restarted process, resumes the TLS session and
sends its first request as 0-RTT early data. It PINGs a quiet connection so that NAT and
idle timers never drop a healthy one, and drops a connection on which nothing at all came
back while a request waited: the next request reconnects instead of waiting on a dead peer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from . import frames
from .congestion import remember_paths
from .quic_settings import QuicSettings, client_configuration, pending_datagrams, udp_socket
from .recovery import tolerate_reordering
from .session_tickets import TicketFile

log = logging.getLogger("flq.transport.quic")

STREAM_CANCELLED = 0x101  # application error code when the client gives up on a stream
ICMP_RECHECK_S = 1.0  # after an ICMP error, how long a live server has to answer our PING
TICKET_WAIT_S = 2.0  # how long disconnect() waits for the server's next session ticket


class QuicTransportError(Exception):
    """Base of the failures the httpx adapter maps onto httpx's own errors."""


class QuicConnectFailed(QuicTransportError):
    """The handshake failed (unreachable, refused, or the certificate did not verify)."""


class QuicConnectTimeout(QuicTransportError):
    pass


class QuicConnectionLost(QuicTransportError):
    """The connection closed or the stream was reset before the response was complete."""


class QuicResponseTimeout(QuicTransportError):
    pass


class QuicProtocolError(QuicTransportError):
    """The server's frames broke the protocol."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass
class ClientStats:
    connections: int = 0
    handshakes: int = 0
    resumed: int = 0
    early_data_accepted: int = 0
    early_requests: int = 0  # requests sent as 0-RTT data, before the handshake completed
    requests: int = 0
    migrations: int = 0
    dropped_silent: int = 0  # connections dropped because the peer went silent


class _RetryResendingQuicConnection(QuicConnection):
    """aioquic 1.7's client restarts its handshake on a Retry with fresh packet spaces and so
    forgets the 0-RTT packets it had sent: their request data was never resent and the request
    hung. Here they are declared lost (not a congestion event) so their data goes out again."""

    def _receive_retry_packet(self, header, packet_without_tag: bytes, now: float) -> None:
        spaces, retries = list(self._loss.spaces), self._retry_count
        super()._receive_retry_packet(header, packet_without_tag, now)
        if self._retry_count == retries:
            return  # not acted upon
        for space in spaces:
            if space.sent_packets:
                packets = list(space.sent_packets.values())
                self._loss._on_packets_lost(congestion_event=False, now=now, packets=packets, space=space)


class _PendingResponse:
    __slots__ = ("decoder", "future", "head", "body")

    def __init__(self, limits: frames.Limits, loop: asyncio.AbstractEventLoop) -> None:
        self.decoder = frames.StreamDecoder("response", limits)
        self.future: asyncio.Future[Response] = loop.create_future()
        self.head: frames.ResponseHead | None = None
        self.body = bytearray()


class _ClientConnection(QuicConnectionProtocol):
    def __init__(
        self, quic: QuicConnection, stream_handler=None, *, client: FleetQuicClient, sock: socket.socket
    ) -> None:
        super().__init__(quic, stream_handler)
        self._client = client
        self.sock = sock  # the socket its transport reads, drained directly on each wake-up
        self.pending: dict[int, _PendingResponse] = {}
        self.handshake: asyncio.Future[events.HandshakeCompleted] = self._loop.create_future()
        self.terminated = False
        self.last_received = self._loop.time()
        self.has_early_keys = False
        self.ticket_arrived = asyncio.Event()

    def datagram_received(self, data, addr) -> None:
        # Read everything already queued before answering: asyncio hands over one datagram
        # per event-loop pass, and aioquic would otherwise try to build a reply to each.
        self.last_received = self._loop.time()
        self._quic.receive_datagram(data, addr, now=self.last_received)
        error = None
        try:
            for data, addr in pending_datagrams(self.sock, self._client.settings.receive_batch - 1):
                self._quic.receive_datagram(data, addr, now=self._loop.time())
        except OSError as exc:
            error = exc
        self._process_events()
        self.transmit()
        if error is not None:
            self.error_received(error)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for our connected socket, e.g. nothing listens on the server's port.

        Before the handshake it fails the connection at once (as TCP's "connection refused"
        would). After it, ICMP is unauthenticated, so the connection is only dropped if a
        PING sent now gets no answer either.
        """
        if self.terminated:
            return
        if not self.handshake.done():
            self._abort(QuicConnectFailed(f"QUIC connection to {self._client.target} failed: {exc.strerror or exc}"))
            return
        noted = self._loop.time()
        self._quic.send_ping(0)
        self.transmit()
        self._loop.call_later(ICMP_RECHECK_S, self._drop_if_silent, noted, exc)

    def _drop_if_silent(self, since: float, exc: Exception) -> None:
        if not self.terminated and self.last_received < since:
            self._abort(QuicConnectionLost(f"QUIC connection to {self._client.target} lost: {exc.strerror or exc}"))

    def _abort(self, error: QuicTransportError) -> None:
        """Give up on this connection locally: fail everything waiting on it."""
        self.terminated = True
        if not self.handshake.done():
            self.handshake.set_exception(error)
            self.handshake.exception()
        for stream_id in list(self.pending):
            self._fail(stream_id, error)
        self._quic.close(reason_phrase=str(error))
        self.transmit()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.StreamReset):
            self._fail(event.stream_id, QuicConnectionLost(f"server reset stream {event.stream_id}"))
        elif isinstance(event, events.HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(event)
            self._client._on_handshake(event)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = True
            reason = event.reason_phrase or f"error code {event.error_code:#x}"
            if not self.handshake.done():
                self.handshake.set_exception(
                    QuicConnectFailed(f"QUIC handshake with {self._client.target} failed: {reason}")
                )
                self.handshake.exception()  # retrieved: no "never retrieved" warning
                error: QuicTransportError = QuicConnectFailed(
                    f"QUIC connection to {self._client.target} failed: {reason}"
                )
            else:
                error = QuicConnectionLost(f"QUIC connection to {self._client.target} closed: {reason}")
            for stream_id in list(self.pending):
                self._fail(stream_id, error)

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        pending = self.pending.get(event.stream_id)
        if pending is None:
            return
        try:
            for item in pending.decoder.feed(event.data):
                if isinstance(item, frames.ResponseHead):
                    pending.head = item
                elif isinstance(item, frames.BodyChunk):
                    pending.body += item.data
                elif isinstance(item, frames.MessageEnd):
                    self._finish(
                        event.stream_id, Response(pending.head.status, pending.head.headers, bytes(pending.body))
                    )
                elif isinstance(item, frames.PeerError):
                    self._finish(event.stream_id, _error_response(item))
            if event.end_stream:
                pending.decoder.end_of_stream()
        except frames.FrameError as exc:
            self.cancel_stream(event.stream_id)
            self._fail(event.stream_id, QuicProtocolError(f"bad response from {self._client.target}: {exc}"))

    def _finish(self, stream_id: int, response: Response) -> None:
        pending = self.pending.pop(stream_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(response)

    def _fail(self, stream_id: int, error: Exception) -> None:
        pending = self.pending.pop(stream_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(error)

    def cancel_stream(self, stream_id: int) -> None:
        self.pending.pop(stream_id, None)
        if self.terminated:
            return
        try:
            self._quic.reset_stream(stream_id, STREAM_CANCELLED)
            self._quic.stop_stream(stream_id, STREAM_CANCELLED)
        except Exception:  # already finished in that direction
            pass
        self.transmit()


async def _close_when_drained(conn: _ClientConnection | None, transport: asyncio.DatagramTransport) -> None:
    """Close the socket once the CONNECTION_CLOSE has gone out (bounded wait)."""
    if conn is not None:
        try:
            await asyncio.wait_for(conn.wait_closed(), 1.0)
        except TimeoutError:
            pass
    transport.close()


def _error_response(error: frames.PeerError) -> Response:
    """A refused stream becomes the HTTP status a plain HTTP server would have answered."""
    try:
        status = frames.HTTP_STATUS_FOR_ERROR[frames.ErrorCode(error.code)]
    except ValueError:
        status = 400
    body = f"QUIC Fleet server refused the request: {error.message}".encode()
    return Response(status, (("content-type", "text/plain; charset=utf-8"), ("x-flq-error", str(error.code))), body)


class FleetQuicClient:
    """Owns at most one QUIC connection to `host:port`; must be used from one event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server_name: str | None = None,
        cafile: str | None = None,
        cadata: bytes | None = None,
        settings: QuicSettings | None = None,
        ticket_file: TicketFile | None = None,
        alpn: str = frames.ALPN,
    ) -> None:
        self.host, self.port = host, port
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server_name = server_name or host
        self.settings = settings or QuicSettings()
        self.stats = ClientStats()
        self.last_handshake: events.HandshakeCompleted | None = None
        self._cafile, self._cadata, self._alpn = cafile, cadata, alpn
        self._ticket_file = ticket_file
        self._ticket: SessionTicket | None = ticket_file.load() if ticket_file else None
        self._conn: _ClientConnection | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._connecting: asyncio.Lock | None = None
        self._keepalive: asyncio.Task | None = None
        self._closed = False

    @property
    def session_ticket(self) -> SessionTicket | None:
        return self._ticket

    def local_address(self) -> tuple[str, int] | None:
        if self._transport is None:
            return None
        return self._transport.get_extra_info("sockname")[:2]

    # --- connection -------------------------------------------------------------------

    def _connected_socket(self, family: int, addr) -> socket.socket:
        # A connected UDP socket receives ICMP errors (port unreachable), so a server that is
        # down fails the handshake at once instead of after the connect timeout.
        sock = udp_socket("::" if family == socket.AF_INET6 else "0.0.0.0", 0, self.settings.socket_buffer)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            raise QuicConnectFailed(f"cannot reach {self.target}: {exc}") from None
        return sock

    async def _connection(self) -> _ClientConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._closed:
                raise QuicConnectionLost("client closed")
            if self._conn is not None and not self._conn.terminated:
                return self._conn
            await self._open()
            return self._conn

    async def _open(self) -> None:
        self._drop_connection()
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise QuicConnectFailed(f"cannot resolve {self.target}: {exc}") from None
        family, _, _, _, addr = infos[0]
        config = client_configuration(
            self.server_name,
            self.settings,
            cafile=self._cafile,
            cadata=self._cadata,
            session_ticket=self._ticket,
            alpn=self._alpn,
        )
        ticket_arrived = asyncio.Event()
        quic = _RetryResendingQuicConnection(
            configuration=config, session_ticket_handler=lambda ticket: self._on_ticket(ticket, ticket_arrived)
        )
        addr = addr[:2] if family == socket.AF_INET else addr
        if self.settings.resume_paths:
            remember_paths(quic, addr[0])
        if self.settings.adaptive_reordering:
            tolerate_reordering(quic)
        sock = self._connected_socket(family, addr)
        self._transport, conn = await loop.create_datagram_endpoint(
            lambda: _ClientConnection(quic, client=self, sock=sock), sock=sock
        )
        conn.connect(addr)
        conn.ticket_arrived = ticket_arrived
        ticket = self._ticket
        # aioquic sends early data exactly when it resumes with a ticket that allows it.
        conn.has_early_keys = bool(
            ticket is not None
            and ticket.is_valid
            and ticket.max_early_data_size
            and ticket.server_name == self.server_name
        )
        self._conn = conn
        self.stats.connections += 1
        self._keepalive = asyncio.ensure_future(self._ping_while_open(conn))

    def _drop_connection(self, reason: str = "") -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        conn, transport = self._conn, self._transport
        self._conn = self._transport = None
        if conn is not None and not conn.terminated:
            conn.close(reason_phrase=reason)
        if transport is not None:
            asyncio.ensure_future(_close_when_drained(conn, transport))

    async def _ping_while_open(self, conn: _ClientConnection) -> None:
        uid = 0
        while not conn.terminated:
            await asyncio.sleep(self.settings.keepalive_interval)
            if conn.terminated:
                break
            uid += 1
            conn._quic.send_ping(uid)
            conn.transmit()

    def _on_ticket(self, ticket: SessionTicket, arrived: asyncio.Event) -> None:
        arrived.set()
        self._ticket = ticket
        if self._ticket_file is not None:
            try:
                self._ticket_file.save(ticket)
            except OSError as exc:
                log.warning("cannot store the QUIC session ticket in %s: %s", self._ticket_file.path, exc)

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        self.last_handshake = event
        self.stats.handshakes += 1
        self.stats.resumed += int(event.session_resumed)
        self.stats.early_data_accepted += int(event.early_data_accepted)
        log.info(
            "QUIC connected to %s (resumed=%s, 0-RTT %s)",
            self.target,
            event.session_resumed,
            "accepted" if event.early_data_accepted else "not used",
        )

    # --- requests ---------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Response:
        data = b"".join(frames.encode_request(method, path, headers, body, limits=self.settings.limits))
        connect_timeout = connect_timeout or self.settings.handshake_timeout
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        stream_id = conn._quic.get_next_available_stream_id()
        pending = conn.pending[stream_id] = _PendingResponse(self.settings.limits, loop)
        early = not conn.handshake.done()
        conn._quic.send_stream_data(stream_id, data, end_stream=True)
        conn.transmit()
        self.stats.requests += 1
        if early and conn.has_early_keys:
            self.stats.early_requests += 1
        sent_at = loop.time()

        if not conn.handshake.done():
            done, _ = await asyncio.wait(
                [conn.handshake, pending.future], timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                self._drop_connection("handshake timeout")
                conn.pending.pop(stream_id, None)
                raise QuicConnectTimeout(f"QUIC handshake with {self.target} timed out after {connect_timeout:.1f} s")
            if pending.future.done():
                return pending.future.result()  # answered, or failed with the handshake's reason
            if conn.handshake.exception() is not None:
                raise conn.handshake.exception()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), read_timeout)
        except TimeoutError:
            conn.cancel_stream(stream_id)
            if conn.last_received < sent_at and conn is self._conn:
                # Nothing at all came back, not even an ACK: the peer is gone (crashed or
                # restarted without closing). Reconnect on the next request.
                self.stats.dropped_silent += 1
                self._drop_connection("peer silent")
            raise QuicResponseTimeout(f"no response from {self.target} within {read_timeout} s") from None
        except asyncio.CancelledError:
            conn.cancel_stream(stream_id)
            raise

    # --- migration and shutdown --------------------------------------------------------

    async def rebind(self) -> tuple[str, int]:
        """Move the live connection to a fresh local UDP port (a client address change)."""
        conn = self._conn
        if conn is None or conn.terminated:
            raise QuicConnectionLost("no live connection to migrate")
        loop = asyncio.get_running_loop()
        old = self._transport
        old_sock = old.get_extra_info("socket")
        sock = self._connected_socket(old_sock.family, old_sock.getpeername())
        conn.sock = sock
        self._transport, _ = await loop.create_datagram_endpoint(lambda: conn, sock=sock)
        old.close()
        conn.change_connection_id()  # a new path gets a new connection ID (RFC 9000 section 9.5)
        conn._quic.send_ping(0)
        conn.transmit()
        self.stats.migrations += 1
        return self.local_address()

    async def disconnect(self) -> None:
        """Close the current connection but keep the session ticket: the next request
        reconnects and resumes with 0-RTT (what an intermittent node does).

        Tickets are single-use and the server sends the next one only after the handshake
        is confirmed, so on a connection that has not had its ticket yet this waits (at most
        `TICKET_WAIT_S`) for it; otherwise the next connection could not resume.
        """
        conn = self._conn
        if conn is not None and not conn.terminated and conn.handshake.done() and not conn.handshake.exception():
            try:
                await asyncio.wait_for(conn.ticket_arrived.wait(), TICKET_WAIT_S)
            except TimeoutError:
                pass
        self._drop_connection("client disconnecting")  # the socket closes once drained

    async def close(self) -> None:
        self._closed = True
        conn, transport = self._conn, self._transport
        self._drop_connection("client closing")
        if transport is not None:
            await _close_when_drained(conn, transport)
