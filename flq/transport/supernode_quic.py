"""Flower's Fleet client, with its HTTP connection replaced by QUIC.

`install_quic_fleet_client` puts a `FleetHttpClient` subclass where Flower's SuperNode builds
its Fleet client. Everything above the transport stays Flower's: the RPC methods, node-auth
and version interceptors, retries, heartbeats, error handling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from .flower_pins import FLEET_CLIENT_GLOBAL, FLEET_CONNECTION_MODULE, FleetHttpClient
from .quic_httpx import QuicHttpTransport
from .quic_settings import QuicSettings
from .session_tickets import TicketFile


@dataclass(frozen=True)
class QuicClientOptions:
    settings: QuicSettings
    session_file: Path | None = None
    server_name: str | None = None  # TLS name to verify, if not the host in --superlink


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"SuperLink address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def make_quic_fleet_client_class(options: QuicClientOptions) -> type[FleetHttpClient]:
    class QuicFleetHttpClient(FleetHttpClient):
        """Flower's FleetHttpClient over one QUIC connection."""

        quic_options = options

        @classmethod
        def from_server_address(cls, server_address, insecure, root_certificates, interceptors, *, retry_invoker=None):
            if insecure:
                raise ValueError("The QUIC Fleet transport always uses TLS 1.3: `insecure` is not supported.")
            host, port = split_address(server_address)
            tls = {}
            if isinstance(root_certificates, bytes):
                tls["cadata"] = root_certificates
            elif root_certificates:
                tls["cafile"] = str(root_certificates)
            # else: the system's default CA bundle, as Flower's own HTTPS client does
            transport = QuicHttpTransport(
                host,
                port,
                server_name=options.server_name,
                settings=options.settings,
                ticket_file=TicketFile(options.session_file) if options.session_file else None,
                **tls,
            )
            client = cls(f"https://{server_address}", interceptors=interceptors, retry_invoker=retry_invoker)
            timeout = client._client.timeout
            client._client.close()
            client._client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)
            client.quic_transport = transport
            return client

    return QuicFleetHttpClient


def install_quic_fleet_client(options: QuicClientOptions) -> type[FleetHttpClient]:
    cls = make_quic_fleet_client_class(options)
    setattr(FLEET_CONNECTION_MODULE, FLEET_CLIENT_GLOBAL, cls)
    return cls


def default_session_file(superlink: str, runtime_port: int) -> Path:
    """One ticket file per (SuperLink, SuperNode) pair: SuperNodes on one host differ by --port."""
    home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in superlink)
    return home / "quic" / f"session-{safe}-node{runtime_port}.json"
