"""aioquic's QuicServer, guarded: admission before any connection exists, batched receiving,
and teardown whose cost does not grow with the number of connections.

- An Initial for an unknown connection ID must decrypt, then pass `Admission` (caps, Retry);
  only then is a connection (a BoundedQuicConnection, charged to the server's budget) made.
- Every datagram already queued on the socket is read before any connection answers: one
  reply per wake-up instead of one per datagram.
- aioquic finds a closed connection's IDs by scanning its whole table (quadratic when
  thousands close together); here each connection's IDs are kept with it.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from typing import TYPE_CHECKING

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, _encode_invalid_token_close
from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.packet import QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

from .admission import Verdict, initial_decrypts
from .bounded_quic import BoundedQuicConnection
from .quic_settings import pending_datagrams

if TYPE_CHECKING:
    from .quic_server import FleetQuicServer

log = logging.getLogger("flq.transport.quic")


def address_host(addr) -> str:
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") else host


class FleetListener(QuicServer):
    def __init__(self, *, fleet: FleetQuicServer, sock: socket.socket, **kwargs) -> None:
        super().__init__(**kwargs)  # aioquic's own Retry stays off: `_admit` decides
        self._fleet = fleet
        self._sock = sock
        self._tokens = QuicRetryTokenHandler()
        self._cids: dict[QuicConnectionProtocol, set[bytes]] = {}

    def datagram_received(self, data, addr) -> None:
        receiving = self._fleet.receiving = {}  # connections that received, in order
        try:
            self._receive(data, addr)
            for data, addr in pending_datagrams(self._sock, self._fleet.settings.receive_batch - 1):
                self._receive(data, addr)
        except OSError as exc:  # what asyncio would hand to error_received: logged, reading goes on
            log.debug("QUIC socket error: %s", exc)
        finally:
            self._fleet.receiving = None
        for connection in receiving:
            connection.answer()

    def _receive(self, data: bytes, addr) -> None:
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self._configuration.connection_id_length)
        except ValueError:
            self._fleet.stats.junk_datagrams += 1
            return
        protocol = self._protocols.get(header.destination_cid)
        if protocol is not None:
            protocol.datagram_received(data, addr)
            return
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return  # nothing for a new connection (RFC 9000 14.1), nor a Version Negotiation (6.1)
        if header.version is not None and header.version not in self._configuration.supported_versions:
            if header.packet_type != QuicPacketType.VERSION_NEGOTIATION:
                super().datagram_received(data, addr)  # aioquic answers with Version Negotiation
            return
        if header.packet_type != QuicPacketType.INITIAL:
            return
        if not initial_decrypts(data, header, buf.tell()):
            self._fleet.stats.junk_datagrams += 1
            return
        self._admit(data, addr, header)

    def _admit(self, data: bytes, addr, header) -> None:
        fleet, now = self._fleet, self._loop.time()
        original_cid, retry_cid, proven = header.destination_cid, None, False
        if header.token:
            try:
                original_cid = self._tokens.validate_token(
                    address=addr, destination_cid=header.destination_cid, token=header.token, now=now
                )
            except ValueError:  # RFC 9000 8.1.3: close with INVALID_TOKEN, keep nothing
                fleet.stats.invalid_tokens += 1
                self._transport.sendto(
                    _encode_invalid_token_close(header.version, header.destination_cid, header.source_cid), addr
                )
                return
            retry_cid, proven = header.destination_cid, True
        host = address_host(addr)
        verdict, reason = fleet.admission.verdict(host, proven=proven)
        if verdict is Verdict.DROP:
            fleet.stats.dropped_initials[reason] += 1
            fleet.limited_log.warning("QUIC connection attempt from %s dropped: %s", host, reason)
            return
        if verdict is Verdict.RETRY:
            fleet.stats.retries_sent += 1
            source_cid = os.urandom(8)
            token = self._tokens.create_token(
                address=addr,
                original_destination_connection_id=header.destination_cid,
                retry_source_connection_id=source_cid,
                now=now,
            )
            retry = encode_quic_retry(
                version=header.version,
                source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            )
            self._transport.sendto(retry, addr)
            return
        connection = BoundedQuicConnection(
            configuration=self._configuration,
            budget=fleet.budget,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
            session_ticket_fetcher=self._session_ticket_fetcher,
            session_ticket_handler=self._session_ticket_handler,
        )
        protocol = self._create_protocol(connection, stream_handler=self._stream_handler)
        protocol.connection_made(self._transport)
        protocol._connection_id_issued_handler = functools.partial(self._connection_id_issued, protocol=protocol)
        protocol._connection_id_retired_handler = functools.partial(self._connection_id_retired, protocol=protocol)
        protocol._connection_terminated_handler = functools.partial(self._connection_terminated, protocol=protocol)
        self._cids[protocol] = set()
        self._connection_id_issued(header.destination_cid, protocol)
        self._connection_id_issued(connection.host_cid, protocol)
        fleet.admission.opened(protocol, host, proven=proven, now=now)
        protocol.datagram_received(data, addr)

    # --- connection IDs, kept per connection -------------------------------------------------

    def _connection_id_issued(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        self._protocols[cid] = protocol
        self._cids.setdefault(protocol, set()).add(cid)

    def _connection_id_retired(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        if self._protocols.get(cid) is protocol:
            del self._protocols[cid]
        self._cids.get(protocol, set()).discard(cid)

    def _connection_terminated(self, protocol: QuicConnectionProtocol) -> None:
        self.forget(protocol)

    def forget(self, protocol: QuicConnectionProtocol) -> None:
        """Route nothing more to this connection."""
        for cid in self._cids.pop(protocol, ()):
            if self._protocols.get(cid) is protocol:
                del self._protocols[cid]
