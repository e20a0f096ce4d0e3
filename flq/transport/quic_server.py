"""QUIC server that runs each Fleet request (one per stream) through an ASGI app: the asyncio layer.

Policy lives in sans-I/O modules: what a stream may carry and when its request runs
(fleet_connection), what a connection may make the server hold (bounded_quic, memory_budget),
who may connect (admission, applied by quic_listener). This module wires them to asyncio:
it runs complete requests through the app, sends the answers, expires half-open connections,
releases a closed connection's state at once, and counts and logs (at a bounded rate) what
was refused. A refused stream gets an ERROR frame with a clear message; the connection and
every other client carry on.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode

from .admission import Admission, AdmissionLimits
from .asgi_bridge import ASGIApp, call_asgi, http_scope
from .bounded_quic import BoundedQuicConnection
from .congestion import remember_paths
from .fleet_connection import (
    FLEET_EARLY_SAFE_PATHS,
    ConnectionClosed,
    FleetConnection,
    FleetEvent,
    FleetPolicy,
    HandshakeDone,
    PeerMigrated,
    RequestCancelled,
    RequestReceived,
    StreamRefused,
)
from .flower_pins import FLEET_PATHS
from .log_limit import RateLimitedLog
from .memory_budget import RESERVE_FRACTION, Account, MemoryBudget
from .quic_listener import FleetListener, address_host
from .quic_settings import QuicSettings, server_configuration, udp_socket
from .recovery import tolerate_reordering
from .session_tickets import ServerTicketStore

log = logging.getLogger("flq.transport.quic")

SWEEP_INTERVAL_S = 1.0  # how often half-open connections are expired and suppressed logs summed up
TRIM_INTERVAL_S = 5.0  # the heap is handed back to the OS at most this often...
TRIM_AFTER_RELEASE = 16 << 20  # ...after a connection closed or this much of the budget came back


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (not Linux/glibc, or no libc found)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


def trim_heap() -> bool:
    """Give the heap's free memory back to the OS (glibc keeps it after large frees: a churn of
    connections left RSS 61% up). A no-op without malloc_trim; never raises."""
    trim = _malloc_trim
    if trim is None:
        return False
    try:
        trim(0)
    except Exception:
        return False
    return True


@dataclass
class ServerStats:
    connections: int = 0  # connections admitted
    handshakes: int = 0
    resumed: int = 0
    early_data_accepted: int = 0
    requests: int = 0
    early_requests: int = 0
    refused_streams: int = 0
    refused_by_code: Counter = field(default_factory=Counter)  # ErrorCode name -> streams
    migrations: int = 0  # to a path aioquic validated
    junk_datagrams: int = 0  # unparseable, or an Initial that does not decrypt: no state kept
    retries_sent: int = 0
    invalid_tokens: int = 0
    dropped_initials: Counter = field(default_factory=Counter)  # reason -> Initials dropped by admission
    expired_half_open: int = 0
    closed_over_address_cap: int = 0


class _FleetProtocol(QuicConnectionProtocol):
    """One QUIC connection: aioquic's events into the FleetConnection, its requests into the app."""

    def __init__(self, quic: BoundedQuicConnection, stream_handler=None, *, server: FleetQuicServer) -> None:
        super().__init__(quic, stream_handler)
        if server.settings.adaptive_reordering:
            tolerate_reordering(quic)
        self._server = server
        self.fleet = FleetConnection(quic, server.policy, Account(server.budget, server.max_buffered_per_connection))
        self._disconnected: dict[int, asyncio.Event] = {}  # per running request: set when the peer goes away
        self._first_datagram = True
        server.stats.connections += 1
        server.connections.add(self)

    # --- input -------------------------------------------------------------------------

    def datagram_received(self, data, addr) -> None:
        if self._first_datagram:
            self._first_datagram = False
            if self._server.settings.resume_paths:
                remember_paths(self._quic, address_host(addr))
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        receiving = self._server.receiving
        if receiving is None:
            self.answer()
        else:
            receiving[self] = None  # answers once the socket is drained

    def answer(self) -> None:
        """Act on what was received and send what it calls for (ACKs, responses, window updates)."""
        self._process_events()
        for fleet_event in self.fleet.after_datagrams():
            self._on_fleet_event(fleet_event)
        self.transmit()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        for fleet_event in self.fleet.handle_event(event):
            self._on_fleet_event(fleet_event)

    def _on_fleet_event(self, event: FleetEvent) -> None:
        server = self._server
        if isinstance(event, RequestReceived):
            server.stats.requests += 1
            server.stats.early_requests += int(event.early)
            disconnected = self._disconnected[event.stream_id] = asyncio.Event()
            asyncio.ensure_future(self._serve(event, disconnected))
        elif isinstance(event, RequestCancelled):
            disconnected = self._disconnected.pop(event.stream_id, None)
            if disconnected is not None:
                disconnected.set()
        elif isinstance(event, StreamRefused):
            server.stats.refused_streams += 1
            server.stats.refused_by_code[event.code.name] += 1
            server.limited_log.warning(
                "QUIC stream %d from %s refused: %s (%s)",
                event.stream_id,
                self.peer_text(),
                event.message,
                event.code.name,
            )
        elif isinstance(event, HandshakeDone):
            server.on_handshake(self, event)
        elif isinstance(event, PeerMigrated):
            server.stats.migrations += 1
            server.limited_log.info(
                "QUIC client %s now sends from %s (connection migration, path validated)",
                _fmt(event.old),
                _fmt(event.new),
            )
        elif isinstance(event, ConnectionClosed):
            server.limited_log.info("QUIC connection from %s closed: %s", self.peer_text(), event.reason)
            self._closed_down()

    # --- requests ------------------------------------------------------------------------

    async def _serve(self, request: RequestReceived, disconnected: asyncio.Event) -> None:
        server, stream_id = self._server, request.stream_id
        scope = http_scope(
            request.method,
            request.path,
            list(request.headers),
            client=_addr_key(self.fleet.peer_address) if self.fleet.peer_address else None,
            server=server.address,
            state=server.lifespan_state(),
        )
        try:
            await call_asgi(
                server.app,
                scope,
                request.body,
                on_head=functools.partial(self._send_head, stream_id),
                on_body=functools.partial(self._send_body, stream_id),
                disconnected=disconnected,
            )
        except Exception:  # the app's own failure: it has answered 500 already
            server.limited_log.log(logging.ERROR, "Fleet request %s over QUIC failed (the app raised)", request.path)
            log.debug("Fleet request %s over QUIC failed", request.path, exc_info=True)
        finally:
            self._disconnected.pop(stream_id, None)
            if not self.fleet.closed:
                self.fleet.request_finished(stream_id)
                self.transmit()

    def _send_head(self, stream_id: int, status: int, headers: list[tuple[str, str]]) -> None:
        if self.fleet.send_head(stream_id, status, headers):
            self.transmit()

    def _send_body(self, stream_id: int, data: bytes, more: bool) -> None:
        if self.fleet.send_body(stream_id, data, more):
            self.transmit()

    # --- teardown --------------------------------------------------------------------------

    def discard(self) -> None:
        """Drop this connection now, silently (a half-open one past the handshake timeout)."""
        self._server.listener_forget(self)
        self.fleet.release()
        self._closed_down()

    def _closed_down(self) -> None:
        """Release everything at once: the server's references, running requests, timers, and
        the callbacks that tie this object to the listener in a reference cycle."""
        for disconnected in self._disconnected.values():
            disconnected.set()
        self._disconnected.clear()
        self._server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connection_id_issued_handler = _ignore
        self._connection_id_retired_handler = _ignore
        self._connection_terminated_handler = _nothing

    def peer_text(self) -> str:
        address = self.fleet.peer_address
        return _fmt(address) if address else "?"


def _ignore(_cid: bytes) -> None:
    pass


def _nothing() -> None:
    pass


def _addr_key(addr) -> tuple[str, int]:
    return address_host(addr), addr[1]


def _fmt(addr) -> str:
    host, port = _addr_key(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FleetQuicServer:
    """Serves `app`'s Fleet routes over QUIC on one UDP socket, in the running event loop."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        certfile: str,
        keyfile: str,
        settings: QuicSettings | None = None,
        allowed_paths: Iterable[str] = FLEET_PATHS,
        early_safe_paths: Iterable[str] = FLEET_EARLY_SAFE_PATHS,
        lifespan_state: Callable[[], dict] = dict,
        max_buffered_per_connection: int | None = None,
    ) -> None:
        self.app = app
        self.settings = settings = settings or QuicSettings()
        self.policy = FleetPolicy(frozenset(allowed_paths), frozenset(early_safe_paths), settings.limits)
        self.lifespan_state = lifespan_state
        self.budget = MemoryBudget(settings.memory_budget, reserve=settings.memory_budget // RESERVE_FRACTION)
        self.max_buffered_per_connection = min(
            max_buffered_per_connection or 2 * settings.limits.max_body, settings.memory_budget
        )
        self.admission = Admission(
            AdmissionLimits(
                max_half_open=settings.max_half_open,
                max_per_address=settings.max_connections_per_address,
                max_connections=settings.max_connections,
                retry=settings.retry,
                handshake_timeout=settings.handshake_timeout,
            )
        )
        self.stats = ServerStats()
        self.limited_log = RateLimitedLog(log)
        self.connections: set[_FleetProtocol] = set()
        self.tickets = ServerTicketStore()
        self.address: tuple[str, int] | None = None
        self._configuration = server_configuration(certfile, keyfile, settings)
        self._listener: FleetListener | None = None
        self.receiving: dict[_FleetProtocol, None] | None = None  # set while a batch is read
        self._transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed_since_trim = False
        self._released_at_trim = 0  # budget.released when the heap was last trimmed
        self._last_trim = float("-inf")
        self.trims = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        sock = udp_socket(host, port, self.settings.socket_buffer)
        self._transport, self._listener = await loop.create_datagram_endpoint(
            lambda: FleetListener(
                fleet=self,
                sock=sock,
                configuration=self._configuration,
                create_protocol=functools.partial(_FleetProtocol, server=self),
                session_ticket_fetcher=self.tickets.pop,
                session_ticket_handler=self.tickets.add,
            ),
            sock=sock,
        )
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        return self.address

    # --- called by connections -------------------------------------------------------------

    def on_handshake(self, connection: _FleetProtocol, event: HandshakeDone) -> None:
        self.stats.handshakes += 1
        self.stats.resumed += int(event.resumed)
        self.stats.early_data_accepted += int(event.early_data_accepted)
        if not self.admission.established(connection):
            self.stats.closed_over_address_cap += 1
            connection.close(QuicErrorCode.CONNECTION_REFUSED, "too many connections from this address")
            return
        self.limited_log.info(
            "QUIC connection from %s (resumed=%s, 0-RTT %s)",
            connection.peer_text(),
            event.resumed,
            "accepted" if event.early_data_accepted else "not used",
        )

    def forget(self, connection: _FleetProtocol) -> None:
        self._closed_since_trim = True
        self.connections.discard(connection)
        self.admission.closed(connection)
        if self.receiving is not None:
            self.receiving.pop(connection, None)

    def listener_forget(self, connection: _FleetProtocol) -> None:
        if self._listener is not None:
            self._listener.forget(connection)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for connection in self.admission.expired(loop.time()):
                self.stats.expired_half_open += 1
                connection.discard()
            self.limited_log.flush()
            self.maybe_trim_heap(loop.time())
        finally:
            self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def maybe_trim_heap(self, now: float) -> bool:
        """Trim the heap (at most every TRIM_INTERVAL_S) once connections closed or much of the
        budget came back since the last trim."""
        released = self.budget.released - self._released_at_trim
        if not (self._closed_since_trim or released >= TRIM_AFTER_RELEASE):
            return False
        if now - self._last_trim < TRIM_INTERVAL_S:
            return False  # still due: the next sweep past the interval does it
        self._closed_since_trim = False
        self._released_at_trim = self.budget.released
        self._last_trim = now
        self.trims += 1
        return trim_heap()

    def close(self) -> None:
        """Close every connection (peers learn at once, with a reason) and the socket."""
        if self._listener is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections):
            connection.close(reason_phrase="server shutting down")
        self.connections.clear()
        if self._transport is not None:
            self._transport.close()
        self._listener = None
