"""QUIC settings shared by the Fleet client and server: TLS, windows, timers, UDP sockets."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket

from . import congestion  # noqa: F401  (registers the "westwood" controller with aioquic)
from .frames import ALPN, Limits

log = logging.getLogger("flq.transport.quic")

# Linux's "force" variants override net.core.{r,w}mem_max where the process may (CAP_NET_ADMIN).
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


@dataclass(frozen=True)
class QuicSettings:
    idle_timeout: float = 30.0  # a connection with nothing received for this long is gone
    keepalive_interval: float = 10.0  # client PINGs so a quiet but healthy link never idles out
    handshake_timeout: float = 10.0
    # Flow-control windows: large enough that a 4 MB adapter never waits on a window update.
    max_data: int = 32 << 20
    max_stream_data: int = 16 << 20
    # The kernel's default buffers (~208 KiB on Linux) drop packets at QUIC speeds and cost throughput
    # (measured: docs/deployment.md, "Sockets and windows").
    socket_buffer: int = 4 << 20
    max_datagram_size: int = 1350  # fits a 1500-byte MTU with IPv6 + UDP headers to spare
    # Datagrams read per wake-up before answering: asyncio reads one per event-loop pass, and
    # aioquic then tries to build a reply per datagram; draining the socket first saves that work.
    receive_batch: int = 64
    congestion_control: str = "westwood"  # loss-tolerant, see congestion.py; "reno" and "cubic" also work
    resume_paths: bool = True  # westwood only: a new connection may start from the pipe last measured to its peer host
    adaptive_reordering: bool = True  # loss detection learns reordering, undoes spurious losses (recovery.py)
    limits: Limits = field(default_factory=Limits)
    # Server only; why each default: docs/deployment.md, "Limits and bad input".
    memory_budget: int = 256 << 20  # all a SuperLink's peers together may make it hold
    max_half_open: int = 128  # connections whose handshake is not complete
    max_connections_per_address: int = 32  # counted once the address is proven (IPv6: per /64)
    max_connections: int = 1024  # in all
    retry: str = "auto"  # QUIC Retry (address validation): "auto" (under load), "always", "never"


def _apply(config: QuicConfiguration, settings: QuicSettings) -> QuicConfiguration:
    config.idle_timeout = settings.idle_timeout
    config.max_data = settings.max_data
    config.max_stream_data = settings.max_stream_data
    config.max_datagram_size = settings.max_datagram_size
    config.congestion_control_algorithm = settings.congestion_control
    return config


def server_configuration(certfile: str, keyfile: str, settings: QuicSettings) -> QuicConfiguration:
    config = _apply(QuicConfiguration(is_client=False, alpn_protocols=[ALPN]), settings)
    config.load_cert_chain(certfile, keyfile)
    return config


def client_configuration(
    server_name: str,
    settings: QuicSettings,
    *,
    cafile: str | None = None,
    cadata: bytes | None = None,
    session_ticket: SessionTicket | None = None,
    alpn: str = ALPN,
) -> QuicConfiguration:
    config = _apply(QuicConfiguration(is_client=True, alpn_protocols=[alpn]), settings)
    config.server_name = server_name
    config.verify_mode = ssl.CERT_REQUIRED  # QUIC is always TLS 1.3 with a verified server
    if cafile or cadata:
        config.load_verify_locations(cafile=cafile, cadata=cadata)
    config.session_ticket = session_ticket
    return config


def set_socket_buffers(sock: socket.socket, size: int) -> tuple[int, int]:
    """Ask for `size`-byte receive/send buffers; returns what the kernel granted."""
    for normal, force in ((socket.SO_RCVBUF, _SO_RCVBUFFORCE), (socket.SO_SNDBUF, _SO_SNDBUFFORCE)):
        sock.setsockopt(socket.SOL_SOCKET, normal, size)
        if sock.getsockopt(socket.SOL_SOCKET, normal) < size:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                pass
    granted = (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )
    if min(granted) < size:  # Linux reports twice the usable size, so this is a real shortfall
        log.warning(
            "UDP socket buffers limited to %s/%s bytes (asked %s); raise "
            "net.core.rmem_max / wmem_max for full QUIC throughput",
            *granted,
            size,
        )
    return granted


def udp_socket(host: str, port: int, buffer_size: int) -> socket.socket:
    """A bound UDP socket with large buffers; dual-stack when bound to an IPv6 address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        set_socket_buffers(sock, buffer_size)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


MAX_UDP_PAYLOAD = 65535


def pending_datagrams(sock: socket.socket, limit: int) -> Iterator[tuple[bytes, tuple]]:
    """Up to `limit` datagrams already queued on non-blocking `sock`, without waiting.

    Errors other than "nothing queued" (e.g. ICMP port unreachable on a connected socket)
    propagate, for the caller to handle as asyncio's `error_received` would.
    """
    for _ in range(limit):
        try:
            yield sock.recvfrom(MAX_UDP_PAYLOAD)
        except (BlockingIOError, InterruptedError):
            return
