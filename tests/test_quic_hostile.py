"""The QUIC Fleet server against hostile senders, on loopback with real aioquic clients (issue 23).

Small, bounded numbers of packets and streams: each test shows one defect is gone while a
legitimate client keeps being served. Timeouts are hang guards; waits poll for a state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import socket
import time
import weakref

import pytest
from aioquic.asyncio.client import connect as aioquic_connect

from flq.transport import frames
from flq.transport.quic_client import FleetQuicClient, QuicTransportError
from flq.transport.quic_settings import QuicSettings, client_configuration
from harness import quic_attacks
from tests.test_quic_transport import GUARD, SMALL, ServerThread, client_for, error_of, run

pytestmark = pytest.mark.e2e  # real QUIC servers and connections on loopback


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from flq.transport.certs import make_certificates

    return make_certificates(tmp_path_factory.mktemp("certs"))


def wait_for(condition, what: str, timeout: float = GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def real_initial(certs, port: int) -> bytes:
    """The first datagram of a real client handshake (which will never be continued)."""
    return quic_attacks.real_initial(str(certs["ca_cert"]), "127.0.0.1", port)


def echo(srv, certs, body: bytes = b"ping", **kwargs):
    async def scenario():
        client = client_for(srv, certs, **kwargs)
        try:
            return await client.request("POST", "/v1/fleet/echo", [], body)
        finally:
            await client.close()

    return run(scenario())


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


# --- defect 1: junk Initials, half-open connections, Retry, per-address caps -----------------


def test_junk_initials_create_no_connection_and_legit_clients_are_served(certs, udp):
    srv = ServerThread(certs)
    try:
        for _ in range(200):
            udp.sendto(quic_attacks.junk_initial(), ("127.0.0.1", srv.port))
        wait_for(lambda: srv.stats.junk_datagrams == 200, "the server to read the junk")
        assert srv.stats.connections == 0 and srv.server.admission.half_open == 0
        assert echo(srv, certs).body == b"gnip"
        assert srv.stats.connections == 1  # the legitimate one
    finally:
        srv.stop()


def test_retry_always_validates_the_address_and_the_client_connects(certs, tmp_path):
    from flq.transport.session_tickets import TicketFile

    srv = ServerThread(certs, settings=dataclasses.replace(SMALL, retry="always"))
    try:
        tickets = TicketFile(tmp_path / "t.json")
        assert echo(srv, certs, ticket_file=tickets).body == b"gnip"
        assert echo(srv, certs, b"again", ticket_file=tickets).body == b"niaga"  # resumes through a Retry too
        assert srv.stats.retries_sent == 2 and srv.stats.handshakes == 2
        assert srv.stats.resumed == 1 and srv.stats.early_requests == 1  # 0-RTT data resent after the Retry
    finally:
        srv.stop()


def test_under_load_new_senders_must_answer_a_retry_and_half_open_connections_expire(certs, udp):
    settings = dataclasses.replace(SMALL, max_half_open=8, handshake_timeout=1.0)  # Retry from 2 half-open
    srv = ServerThread(certs, settings=settings)
    try:
        for _ in range(5):  # real ClientHellos, never continued
            udp.sendto(real_initial(certs, srv.port), ("127.0.0.1", srv.port))
        wait_for(lambda: srv.stats.retries_sent == 3, "Retry packets for the senders past the threshold")
        assert srv.server.admission.half_open == 2
        assert echo(srv, certs).body == b"gnip"  # a legitimate node answers its Retry and is served
        assert srv.stats.retries_sent == 4
        wait_for(lambda: srv.stats.expired_half_open == 2, "the half-open connections to expire")
        assert srv.server.admission.half_open == 0 and len(srv.server.connections) == 0
    finally:
        srv.stop()


def test_connections_per_address_are_capped(certs):
    srv = ServerThread(certs, settings=dataclasses.replace(SMALL, max_connections_per_address=2))
    quick = dataclasses.replace(SMALL, handshake_timeout=1.5)

    async def scenario():
        clients = [client_for(srv, certs) for _ in range(2)]
        for client in clients:
            assert (await client.request("POST", "/v1/fleet/echo", [], b"1")).body == b"1"
        third = FleetQuicClient("127.0.0.1", srv.port, cafile=str(certs["ca_cert"]), settings=quick)
        try:
            await third.request("POST", "/v1/fleet/echo", [], b"3")
            refused = False
        except QuicTransportError:
            refused = True
        await third.close()
        await clients[0].close()
        await asyncio.get_running_loop().run_in_executor(
            None, wait_for, lambda: srv.server.admission.connections_from("127.0.0.1") == 1, "a slot"
        )
        fourth = client_for(srv, certs)
        served = (await fourth.request("POST", "/v1/fleet/echo", [], b"4")).body
        for client in (clients[1], fourth):
            await client.close()
        return refused, served

    try:
        refused, served = run(scenario())
    finally:
        srv.stop()
    assert refused and served == b"4"
    assert srv.stats.dropped_initials["per-address cap"] >= 1


# --- defect 7: a spoofed migration is neither counted nor used --------------------------------


def test_a_datagram_with_a_live_connection_id_from_elsewhere_is_not_a_migration(certs, udp):
    srv = ServerThread(certs)

    async def scenario():
        client = client_for(srv, certs)
        await client.request("POST", "/v1/fleet/echo", [], b"a")
        cid = client._conn._quic._peer_cid.cid  # the server's connection ID, visible on the wire
        for _ in range(5):
            udp.sendto(quic_attacks.short_header(cid, 1 + len(cid) + 40), ("127.0.0.1", srv.port))
        await asyncio.sleep(0.2)
        response = await client.request("POST", "/v1/fleet/echo", [], b"b")
        await client.close()
        return response

    try:
        assert run(scenario()).body == b"b"
        assert srv.stats.migrations == 0
    finally:
        srv.stop()


# --- defect 8: one request per stream, on a real connection ---------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_request_sent_on_an_answered_stream_is_not_run(certs):
    srv = ServerThread(certs)

    async def scenario():
        config = client_configuration("127.0.0.1", QuicSettings(), cafile=str(certs["ca_cert"]))
        async with aioquic_connect("127.0.0.1", srv.port, configuration=config) as conn:
            reader, writer = await conn.create_stream()
            writer.write(b"".join(frames.encode_request("POST", "/v1/fleet/echo", [], b"first")))
            first = await asyncio.wait_for(reader.read(), GUARD)  # answered: END and FIN
            try:  # aioquic refuses once the server's STOP_SENDING arrived; before, it is sent and dropped
                writer.write(b"".join(frames.encode_request("POST", "/v1/fleet/release", [], b"second")))
            except (ValueError, RuntimeError):
                pass
            other_r, other_w = await conn.create_stream()  # a later request on a new stream
            other_w.write(b"".join(frames.encode_request("POST", "/v1/fleet/x", [], b"third")))
            other_w.write_eof()
            third = await asyncio.wait_for(other_r.read(), GUARD)
            return first, third

    try:
        first, third = run(scenario())
    finally:
        srv.stop()
    assert frames.StreamDecoder("response").feed(first)[0].status == 200
    assert frames.StreamDecoder("response").feed(third)[0].status == 200
    assert srv.app.seen == ["/v1/fleet/echo", "/v1/fleet/x"]  # "second" never reached the app


# --- defect 6: refusals are counted, and logged at a bounded rate ---------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_many_refused_streams_are_counted_and_logged_at_a_bounded_rate(certs, caplog):
    caplog.set_level(logging.INFO, logger="flq.transport.quic")
    srv = ServerThread(certs)
    bad = b"".join(frames.encode_request("POST", "/v1/control/stop-run", [], b""))

    async def scenario():
        config = client_configuration("127.0.0.1", QuicSettings(), cafile=str(certs["ca_cert"]))
        async with aioquic_connect("127.0.0.1", srv.port, configuration=config) as conn:

            async def one():
                reader, writer = await conn.create_stream()
                writer.write(bad)
                writer.write_eof()
                return await asyncio.wait_for(reader.read(), GUARD)

            for _ in range(6):
                await asyncio.gather(*[one() for _ in range(50)])

    try:
        run(scenario())
    finally:
        srv.stop()
    assert srv.stats.refused_streams == 300 and srv.stats.refused_by_code["PATH_NOT_ALLOWED"] == 300
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) <= 20  # 300 refusals: a burst, then about one line a second


# --- defect 4: memory back after close; closed connections are collectable --------------------


def test_closed_connections_give_their_memory_back_and_are_collectable(certs):
    srv = ServerThread(certs)

    async def scenario():
        clients = [client_for(srv, certs) for _ in range(3)]
        for client in clients:
            body = os.urandom(300_000)
            assert (await client.request("POST", "/v1/fleet/echo", [], body)).body == body[::-1]

        async def refs():
            return [weakref.ref(c) for c in srv.server.connections] + [
                weakref.ref(c._quic) for c in srv.server.connections
            ]

        held = srv.call(refs())
        for client in clients:
            await client.close()
        return held

    try:
        held = run(scenario())
        wait_for(lambda: not srv.server.connections, "the server to drop closed connections")
        assert srv.server.budget.used == 0 and srv.server.admission.half_open == 0
        assert srv.server._listener._protocols == {} and srv.server._listener._cids == {}
        srv.call(asyncio.sleep(0.05))
        gc.collect()
        assert len(held) == 6 and all(ref() is None for ref in held)
    finally:
        srv.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_budget_spent_by_half_sent_requests_refuses_others_and_recovers(certs):
    """Three connections holding half-sent requests cannot make the server hold more than its budget."""
    srv = ServerThread(certs, settings=dataclasses.replace(SMALL, memory_budget=2 << 20))
    chunk = frames.encode_body_chunk(os.urandom(60_000), compress=False)
    config = client_configuration("127.0.0.1", QuicSettings(), cafile=str(certs["ca_cert"]))

    async def hold(stop: asyncio.Event):
        async with aioquic_connect("127.0.0.1", srv.port, configuration=config) as conn:
            reader, writer = await conn.create_stream()
            writer.write(frames.encode_request_head("POST", "/v1/fleet/echo") + chunk * 15)  # 900 KB, no END
            read = asyncio.ensure_future(reader.read())
            await asyncio.wait([read, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            return read.result() if read.done() else None

    async def scenario():
        stop = asyncio.Event()
        holders = [asyncio.ensure_future(hold(stop)) for _ in range(3)]
        done, _ = await asyncio.wait(holders, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.gather(*holders)
        return [t.result() for t in done]

    try:
        refused = run(scenario())
        assert srv.server.budget.peak <= 2 << 20
        assert refused and all(error_of(r).code == frames.ErrorCode.UNAVAILABLE for r in refused)
        wait_for(lambda: srv.server.budget.used == 0, "the budget to be given back")
        assert echo(srv, certs).body == b"gnip"
    finally:
        srv.stop()
