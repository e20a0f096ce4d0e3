"""Two real aioquic connections (FLQ's QUIC settings) joined by an emulated link, on a virtual clock.

Every datagram goes through ``flq.netem.link.LinkQueue`` (loss, bottleneck, queue, jitter), and
time is an event clock, not the wall: a transfer's duration is a deterministic function of the
link, the seeds and the protocol's decisions. For tests of congestion control and loss recovery.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from pathlib import Path

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from flq.netem.link import LinkDirection, LinkQueue
from flq.transport.certs import make_certificates
from flq.transport.quic_settings import QuicSettings, client_configuration, server_configuration
from flq.transport.recovery import tolerate_reordering

CLIENT_ADDR, SERVER_ADDR = ("10.0.0.1", 4433), ("10.0.0.2", 4433)


@dataclass
class Transfer:
    seconds: float  # on the virtual clock, from the first request byte to the last byte received
    delivered: int
    client: QuicConnection
    server: QuicConnection
    up: LinkQueue
    down: LinkQueue
    rounds_s: list[float]  # each upload's own time, when several went over the one connection


def upload(
    size: int,
    up: LinkDirection,
    down: LinkDirection,
    certs_dir: Path,
    *,
    settings: QuicSettings | None = None,
    seed: int = 1,
    time_limit_s: float = 600.0,
    rounds: int = 1,
    idle_s: float = 3.0,
) -> Transfer:
    """The client sends ``size`` bytes on one stream; returns when the server has them all.

    ``rounds`` > 1: then it waits ``idle_s`` and sends ``size`` more on a new stream of the same
    connection, as a persistent Fleet connection does round after round."""
    settings = settings or QuicSettings()
    if not (certs_dir / "server.key").exists():
        make_certificates(certs_dir)
    ca, cert, key = (str(certs_dir / f) for f in ("ca.crt", "server.pem", "server.key"))
    client = QuicConnection(configuration=client_configuration("localhost", settings, cafile=ca))
    server = QuicConnection(
        configuration=server_configuration(cert, key, settings),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    if settings.adaptive_reordering:
        tolerate_reordering(client)
        tolerate_reordering(server)
    links = {
        id(client): (LinkQueue(up, seed), server, CLIENT_ADDR),
        id(server): (LinkQueue(down, seed + 1), client, SERVER_ADDR),
    }
    arrivals: list[tuple[float, int, QuicConnection, bytes, tuple]] = []
    order = itertools.count()
    now = 0.0
    client.connect(SERVER_ADDR, now=now)
    stream_id = None
    started = None
    received = 0
    rounds_s: list[float] = []
    next_round_at: float | None = None

    heard_from_client = False  # the server has no path to send on before its first datagram

    def flush(conn: QuicConnection) -> None:
        if conn is server and not heard_from_client:
            return
        queue, peer, addr = links[id(conn)]
        for data, _ in conn.datagrams_to_send(now=now):
            at = queue.admit(now, len(data) + 28)  # + IPv4 and UDP headers
            if at is not None:
                heapq.heappush(arrivals, (at, next(order), peer, data, addr))

    def on_events(conn: QuicConnection) -> None:
        nonlocal stream_id, started, received
        while (event := conn.next_event()) is not None:
            if conn is client and isinstance(event, events.HandshakeCompleted) and stream_id is None:
                stream_id = client.get_next_available_stream_id()
                client.send_stream_data(stream_id, b"\0" * size, end_stream=True)
                started = now
            elif conn is server and isinstance(event, events.StreamDataReceived):
                received += len(event.data)

    while len(rounds_s) < rounds:
        for conn in (client, server):
            on_events(conn)
            flush(conn)
        if started is not None and next_round_at is None and received >= size * (len(rounds_s) + 1):
            rounds_s.append(now - started)
            next_round_at = now + idle_s
            continue
        if next_round_at is not None and now >= next_round_at and len(rounds_s) < rounds:
            client.send_stream_data(client.get_next_available_stream_id(), b"\0" * size, end_stream=True)
            started, next_round_at = now, None
            continue
        timers = [(t, conn) for conn in (client, server) if (t := conn.get_timer()) is not None]
        if next_round_at is not None and len(rounds_s) < rounds:
            timers.append((next_round_at, None))
        next_arrival = arrivals[0][0] if arrivals else None
        next_timer = min(timers, key=lambda x: x[0]) if timers else None
        if next_arrival is None and next_timer is None:
            raise RuntimeError("the connection went idle before the transfer completed")
        if next_timer is not None and (next_arrival is None or next_timer[0] < next_arrival):
            # A real clock always moves on: a timer found due again at the same instant (aioquic's
            # pacing and loss timers can be) is handled a microsecond later, not in a loop.
            now = max(now + 1e-6, next_timer[0])
            if next_timer[1] is not None:
                next_timer[1].handle_timer(now=now)
        else:
            at, _, peer, data, addr = heapq.heappop(arrivals)
            now = max(now, at)
            peer.receive_datagram(data, addr, now=now)
            heard_from_client = heard_from_client or peer is server
        if now > time_limit_s:
            raise RuntimeError(f"transfer of {size} bytes not done after {time_limit_s} s (got {received})")
    up_queue, down_queue = (links[id(c)][0] for c in (client, server))
    return Transfer(rounds_s[0], received, client, server, up_queue, down_queue, rounds_s)
