"""The QUIC Fleet transport on real QUIC connections over loopback (no mocks of the network).

A server runs in its own thread and event loop, like a SuperLink; clients run in the test's
thread, either asyncio (FleetQuicClient) or through httpx as Flower's SuperNode uses them.
Timeouts here are hang guards only; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import select
import socket
import struct
import threading

import httpx
import lz4.block
import pytest
from aioquic.asyncio.client import connect as aioquic_connect

from flq.transport import congestion, frames
from flq.transport.certs import make_certificates
from flq.transport.flower_pins import FLEET_PATHS
from flq.transport.frames import ErrorCode, FrameType
from flq.transport.quic_client import FleetQuicClient, QuicConnectFailed
from flq.transport.quic_httpx import QuicHttpTransport
from flq.transport.quic_server import FleetQuicServer
from flq.transport.quic_settings import QuicSettings, client_configuration, pending_datagrams
from flq.transport.session_tickets import TicketFile, ticket_from_bytes, ticket_to_bytes

pytestmark = pytest.mark.e2e  # real QUIC servers and connections on loopback

GUARD = 30.0  # hang guard for any single wait

# aioquic's StreamWriter.__del__ tries to end a stream the server already refused (raw-stream tests)
IGNORE_AIOQUIC_WRITER_GC = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SMALL = QuicSettings(limits=frames.Limits(max_frame_payload=64 * 1024, max_body=1 << 20, max_head_bytes=4096))
# The server serves an exact list of paths: Flower's Fleet RPCs, plus the test app's own.
TEST_PATHS = FLEET_PATHS | {f"/v1/fleet/{name}" for name in ("echo", "slow", "release", "x")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("other-ca"))


class EchoApp:
    """A small ASGI app: echo, a request that waits to be released, and a record of requests."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.release: asyncio.Event | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = (await receive())["body"]
        self.seen.append(scope["path"])
        if scope["path"] == "/v1/fleet/slow":
            await self.release.wait()
        elif scope["path"] == "/v1/fleet/release":
            self.release.set()
        headers = [(b"content-type", b"application/octet-stream"), (b"x-len", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body[::-1]})


class ServerThread:
    """A FleetQuicServer on its own event-loop thread, as in a SuperLink process."""

    def __init__(
        self, certs, app=None, settings: QuicSettings = SMALL, port: int = 0, max_buffered: int = 64 << 20
    ) -> None:
        self.app = app or EchoApp()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(self._start(certs, settings, port, max_buffered))
        self.port = self.server.address[1]

    async def _start(self, certs, settings, port, max_buffered):
        if isinstance(self.app, EchoApp):
            self.app.release = asyncio.Event()
        server = FleetQuicServer(
            self.app,
            certfile=str(certs["server_cert"]),
            keyfile=str(certs["server_key"]),
            settings=settings,
            allowed_paths=TEST_PATHS,
            max_buffered_per_connection=max_buffered,
        )
        await server.start("127.0.0.1", port)
        return server

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(GUARD)

    @property
    def stats(self):
        return self.server.stats

    def stop(self, graceful: bool = True) -> None:
        async def _stop():
            if graceful:
                self.server.close()
            else:  # a crash: the socket disappears, nobody is told
                self.server._transport.close()
            await asyncio.sleep(0.05)

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(GUARD)


@pytest.fixture
def server(certs):
    srv = ServerThread(certs)
    try:
        yield srv
    finally:
        srv.stop()


def client_for(srv: ServerThread, certs, **kwargs) -> FleetQuicClient:
    return FleetQuicClient("127.0.0.1", srv.port, cafile=str(certs["ca_cert"]), settings=SMALL, **kwargs)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, GUARD * 2))


async def raw_stream(port: int, ca: str, payload: bytes, *, end: bool = True, alpn: str = frames.ALPN) -> bytes:
    """Send arbitrary bytes on one stream of a fresh connection; return what comes back."""
    config = client_configuration("127.0.0.1", QuicSettings(), cafile=ca, alpn=alpn)
    async with aioquic_connect("127.0.0.1", port, configuration=config) as conn:
        reader, writer = await conn.create_stream()
        writer.write(payload)
        if end:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), GUARD)


def error_of(response: bytes) -> frames.PeerError:
    decoder = frames.StreamDecoder("response")
    events = decoder.feed(response)
    assert decoder.complete and isinstance(events[-1], frames.PeerError), events
    return events[-1]


# --- requests -----------------------------------------------------------------------------


def test_requests_round_trip_on_concurrent_streams(server, certs):
    async def scenario():
        client = client_for(server, certs)
        bodies = [os.urandom(n) for n in (0, 1, 1000, 200_000, 700_000)] + [b"\x00" * 900_000]
        responses = await asyncio.gather(
            *[client.request("POST", "/v1/fleet/echo", [("k", str(i))], b) for i, b in enumerate(bodies * 3)]
        )
        await client.close()
        return bodies * 3, responses, client.stats

    bodies, responses, stats = run(scenario())
    for body, response in zip(bodies, responses):
        assert response.status == 200 and response.body == body[::-1]
        assert dict(response.headers)["x-len"] == str(len(body))
    assert stats.connections == 1 and stats.requests == len(bodies)  # one connection, one stream each


def test_a_waiting_request_does_not_block_others(server, certs):
    """One stream per request: a request the server holds back never delays another."""

    async def scenario():
        client = client_for(server, certs)
        slow = asyncio.ensure_future(client.request("POST", "/v1/fleet/slow", [], b"s"))
        fast = await client.request("POST", "/v1/fleet/echo", [], b"f")
        slow_done_before = slow.done()
        await client.request("POST", "/v1/fleet/release", [], b"")
        await slow
        await client.close()
        return fast, slow_done_before

    fast, slow_done_before = run(scenario())
    assert fast.body == b"f" and not slow_done_before


def test_httpx_transport_carries_flower_style_requests(server, certs):
    transport = QuicHttpTransport("127.0.0.1", server.port, cafile=str(certs["ca_cert"]), settings=SMALL)
    with httpx.Client(transport=transport, timeout=GUARD) as client:
        response = client.post(
            f"https://127.0.0.1:{server.port}/v1/fleet/echo",
            content=b"abc",
            headers={"content-type": "application/protobuf"},
        )
        assert response.status_code == 200 and response.content == b"cba"
        assert response.http_version == frames.ALPN
        refused = client.post(f"https://127.0.0.1:{server.port}/v1/control/list-runs", content=b"")
        assert refused.status_code == 404 and "not served over QUIC" in refused.text
    assert server.app.seen == ["/v1/fleet/echo"]


# --- 0-RTT resumption ---------------------------------------------------------------------


def test_reconnect_resumes_with_0rtt_and_tickets_are_single_use(server, certs, tmp_path):
    ticket_file = TicketFile(tmp_path / "ticket.json")

    async def connect_once(tf, path="/v1/fleet/get-run"):
        client = client_for(server, certs, ticket_file=tf)
        response = await client.request("POST", path, [], b"ping")
        handshake = client.last_handshake
        await client.close()
        return response, handshake, client.stats

    _, first, _ = run(connect_once(ticket_file))
    assert not first.session_resumed
    saved = (tmp_path / "ticket.json").read_bytes()
    assert oct((tmp_path / "ticket.json").stat().st_mode & 0o777) == "0o600"  # holds a resumption secret

    # A new client (a restarted SuperNode) resumes and sends its first request as early data.
    response, second, stats = run(connect_once(ticket_file))
    assert response.body == b"gnip"
    assert second.session_resumed and second.early_data_accepted
    assert stats.early_requests == 1 and stats.early_data_accepted == 1
    assert server.stats.early_data_accepted == 1 and server.stats.early_requests == 1

    # The first ticket was consumed: replaying it cannot resume again (no 0-RTT replay).
    replay = tmp_path / "replay.json"
    replay.write_bytes(saved)
    response, third, _ = run(connect_once(TicketFile(replay)))
    assert response.status == 200 and not third.session_resumed and not third.early_data_accepted


def test_disconnect_then_request_resumes_with_0rtt(server, certs):
    transport = QuicHttpTransport("127.0.0.1", server.port, cafile=str(certs["ca_cert"]), settings=SMALL)
    with httpx.Client(transport=transport, timeout=GUARD) as client:
        url = f"https://127.0.0.1:{server.port}/v1/fleet/pull-messages"
        for _ in range(3):  # an intermittent node: a new connection every round
            assert client.post(url, content=b"poll").content == b"llop"
            transport.disconnect()
    stats = transport.client.stats
    assert stats.connections == 3 and stats.resumed == 2 and stats.early_requests == 2


MEASURING_CONNECTIONS = 10


def test_a_reconnecting_client_carries_what_it_measured_of_the_path_over(server, certs):
    """Both ends remember the pipe they measured per peer host; a new connection is wired to it
    (whether it jumps depends on loopback RTT noise, so the jump itself is tested in test_congestion)."""
    congestion.PATHS.clear()

    async def scenario():
        body = os.urandom(900_000)
        # Only a sample taken while the window limited the sender is remembered. On loopback that
        # is slow start: once the window holds the whole body, the sender is application-limited.
        # How many such samples a connection gets depends on the host's load, so a fresh
        # connection (a fresh slow start) is tried until one is remembered.
        for _ in range(MEASURING_CONNECTIONS):
            client = client_for(server, certs)
            assert (await client.request("POST", "/v1/fleet/echo", [], body)).body == body[::-1]
            first = client._conn._quic._loss._cc
            await client.disconnect()
            if congestion.PATHS.recall("127.0.0.1", asyncio.get_running_loop().time()) is not None:
                break
            await client.close()
        else:
            pytest.fail(f"no connection of {MEASURING_CONNECTIONS} remembered what it measured of the path")
        assert (await client.request("POST", "/v1/fleet/echo", [], b"poll")).body == b"llop"
        second = client._conn._quic._loss._cc
        await client.close()
        opted_out = FleetQuicClient(
            "127.0.0.1",
            server.port,
            cafile=str(certs["ca_cert"]),
            settings=dataclasses.replace(SMALL, resume_paths=False),
        )
        assert (await opted_out.request("POST", "/v1/fleet/echo", [], b"poll")).body == b"llop"
        third = opted_out._conn._quic._loss._cc
        await opted_out.close()
        return first, second, third, asyncio.get_running_loop().time()

    first, second, third, now = run(scenario())
    assert first is not second and first.peer_host == second.peer_host == "127.0.0.1"
    assert third.peer_host is None
    memory = congestion.PATHS.recall("127.0.0.1", now)
    assert memory is not None and memory.pipe > 0 and memory.min_rtt > 0


def test_early_request_with_side_effects_waits_for_the_handshake(server, certs, tmp_path):
    """Non-idempotent RPCs that arrive as 0-RTT data still succeed (run once the handshake is confirmed)."""
    ticket_file = TicketFile(tmp_path / "t.json")

    async def scenario():
        for _ in range(2):
            client = client_for(server, certs, ticket_file=ticket_file)
            response = await client.request("POST", "/v1/fleet/push-messages", [], b"once")
            await client.close()
        return response, client.last_handshake

    response, handshake = run(scenario())
    assert handshake.early_data_accepted and response.body == b"ecno"
    assert server.app.seen.count("/v1/fleet/push-messages") == 2  # each ran exactly once


def test_ticket_codec_round_trip_and_rejects_junk(server, certs, tmp_path):
    ticket_file = TicketFile(tmp_path / "t.json")

    async def scenario():
        client = client_for(server, certs, ticket_file=ticket_file)
        await client.request("POST", "/v1/fleet/echo", [], b"")
        await client.close()
        return client.session_ticket

    ticket = run(scenario())
    assert ticket_from_bytes(ticket_to_bytes(ticket)) == ticket
    for junk in [b"", b"{}", b"[1]", b'{"version": 1}', b"\xff" * 10, b'{"version":1,"age_add":-1}']:
        with pytest.raises(ValueError):
            ticket_from_bytes(junk)
    (tmp_path / "bad.json").write_bytes(b"not json")
    assert TicketFile(tmp_path / "bad.json").load() is None  # a damaged file costs one full handshake


# --- migration ----------------------------------------------------------------------------


def test_connection_survives_client_address_change(server, certs):
    async def scenario():
        client = client_for(server, certs)
        first = await client.request("POST", "/v1/fleet/echo", [], b"before")
        old_port = client.local_address()[1]
        new_port = (await client.rebind())[1]
        second = await client.request("POST", "/v1/fleet/echo", [], os.urandom(300_000))
        third = await client.request("POST", "/v1/fleet/echo", [], b"after")
        await client.close()
        return first, second, third, old_port, new_port, client.stats

    first, second, third, old_port, new_port, stats = run(scenario())
    assert old_port != new_port
    assert first.body == b"erofeb" and second.status == 200 and third.body == b"retfa"
    assert stats.connections == 1 and stats.migrations == 1  # same connection, new address
    assert server.stats.migrations == 1 and server.stats.handshakes == 1


# --- bad input: the stream is refused, the server keeps serving -----------------------------


def _lz4_bomb() -> bytes:
    inflated = b"\x00" * (4 << 20)  # 4 MiB of zeros: ~16 KB on the wire
    payload = len(inflated).to_bytes(4, "big") + lz4.block.compress(inflated, store_size=False)
    return frames.encode_request_head("POST", "/v1/fleet/push-object") + frames.encode_frame(
        FrameType.BODY, payload, compressed=True
    )


def _lying_lz4() -> bytes:
    payload = (100).to_bytes(4, "big") + lz4.block.compress(b"\x00" * 50_000, store_size=False)
    return frames.encode_request_head("POST", "/v1/fleet/push-object") + frames.encode_frame(
        FrameType.BODY, payload, compressed=True
    )


BAD_INPUT = {
    "garbage": (
        os.urandom(3) + b"\xfe\xfe\xfe" * 20,
        {ErrorCode.FRAME_TOO_LARGE, ErrorCode.UNKNOWN_FRAME_TYPE, ErrorCode.MALFORMED, ErrorCode.UNEXPECTED_FRAME},
    ),
    "malformed_head": (struct.pack(">IB", 3, FrameType.REQUEST_HEAD) + b"\x09PO", {ErrorCode.MALFORMED}),
    "declared_4gb": (
        frames.encode_request_head("POST", "/v1/fleet/push-object") + struct.pack(">IB", 0xFFFFFFFF, FrameType.BODY),
        {ErrorCode.FRAME_TOO_LARGE},
    ),
    "lz4_inflates_past_limit": (_lz4_bomb(), {ErrorCode.FRAME_TOO_LARGE}),
    "lz4_lies_about_size": (_lying_lz4(), {ErrorCode.MALFORMED}),
    "unknown_frame_type": (struct.pack(">IB", 0, 0x42), {ErrorCode.UNKNOWN_FRAME_TYPE}),
    "path_outside_fleet": (
        b"".join(frames.encode_request("POST", "/v1/control/stop-run", [], b"")),
        {ErrorCode.PATH_NOT_ALLOWED},
    ),
    "runtime_api_path": (
        b"".join(frames.encode_request("POST", "/v1/runtime/pull-task-input", [], b"")),
        {ErrorCode.PATH_NOT_ALLOWED},
    ),
    "get_method": (
        b"".join(frames.encode_request("GET", "/v1/fleet/get-run", [], b"")),
        {ErrorCode.METHOD_NOT_ALLOWED},
    ),
    "truncated": (
        frames.encode_request_head("POST", "/v1/fleet/x") + frames.encode_body_chunk(b"abc"),
        {ErrorCode.TRUNCATED},
    ),
    "body_over_limit": (
        frames.encode_request_head("POST", "/v1/fleet/x")
        + frames.encode_body_chunk(os.urandom(60_000), compress=False) * 20,
        {ErrorCode.BODY_TOO_LARGE},
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_stream_is_refused_with_a_clear_error_and_others_are_served(server, certs, name):
    payload, expected = BAD_INPUT[name]

    async def scenario():
        good = client_for(server, certs)
        warm = await good.request("POST", "/v1/fleet/echo", [], b"1")
        refused = await raw_stream(server.port, str(certs["ca_cert"]), payload)
        after = await good.request("POST", "/v1/fleet/echo", [], b"2")  # same connection, still served
        await good.close()
        return warm, refused, after

    warm, refused, after = run(scenario())
    error = error_of(refused)
    assert error.code in expected and error.message
    assert warm.body == b"1" and after.body == b"2"
    assert server.stats.refused_streams == 1
    assert all(p.startswith("/v1/fleet/echo") for p in server.app.seen)  # nothing bad reached the app


@IGNORE_AIOQUIC_WRITER_GC
def test_bad_stream_on_a_connection_leaves_its_other_streams_alone(server, certs):
    async def scenario():
        config = client_configuration("127.0.0.1", QuicSettings(), cafile=str(certs["ca_cert"]))
        async with aioquic_connect("127.0.0.1", server.port, configuration=config) as conn:
            # (aioquic allots a stream id only once data is written to it)
            bad_r, bad_w = await conn.create_stream()
            bad_w.write(struct.pack(">IB", 0xFFFFFFFF, FrameType.REQUEST_HEAD))
            good_r, good_w = await conn.create_stream()
            good_w.write(b"".join(frames.encode_request("POST", "/v1/fleet/echo", [], b"fine")))
            good_w.write_eof()
            return await bad_r.read(), await good_r.read()

    bad, good = run(scenario())
    assert error_of(bad).code == ErrorCode.FRAME_TOO_LARGE
    events = frames.StreamDecoder("response").feed(good)
    assert events[0].status == 200 and events[1].data == b"enif"


@IGNORE_AIOQUIC_WRITER_GC
def test_connection_buffering_too_much_is_refused_per_stream(certs):
    """Many large half-sent requests on one connection cannot pin unbounded memory."""
    srv = ServerThread(certs, max_buffered=1536 * 1024)
    chunk = frames.encode_body_chunk(os.urandom(60_000), compress=False)

    async def scenario():
        config = client_configuration("127.0.0.1", QuicSettings(), cafile=str(certs["ca_cert"]))
        async with aioquic_connect("127.0.0.1", srv.port, configuration=config) as conn:
            streams = []
            for _ in range(3):  # (aioquic allots a stream id only once data is written to it)
                reader, writer = await conn.create_stream()
                writer.write(frames.encode_request_head("POST", "/v1/fleet/echo") + chunk * 12)  # 720 KB, no END
                streams.append((reader, writer))
            reads = {asyncio.ensure_future(reader.read()): writer for reader, writer in streams}
            done, pending = await asyncio.wait(reads, timeout=GUARD, return_when=asyncio.FIRST_COMPLETED)
            refused = [task.result() for task in done]
            for task in pending:  # the others may still finish their requests
                reads[task].write(frames.encode_end())
                reads[task].write_eof()
            finished = [await asyncio.wait_for(task, GUARD) for task in pending]
            return refused, finished

    try:
        refused, finished = run(scenario())
    finally:
        srv.stop()
    assert refused and all(error_of(r).code == ErrorCode.BODY_TOO_LARGE for r in refused)
    statuses = [frames.StreamDecoder("response").feed(f)[0] for f in finished]
    assert statuses and all(getattr(s, "status", None) == 200 for s in statuses)


def test_client_that_cannot_verify_the_server_is_refused_while_others_are_served(server, certs, other_ca):
    async def scenario():
        stranger = FleetQuicClient("127.0.0.1", server.port, cafile=str(other_ca["ca_cert"]), settings=SMALL)
        friend = client_for(server, certs)
        results = await asyncio.gather(
            stranger.request("POST", "/v1/fleet/echo", [], b"x"),
            friend.request("POST", "/v1/fleet/echo", [], b"ok"),
            return_exceptions=True,
        )
        await stranger.close()
        await friend.close()
        return results

    stranger_result, friend_result = run(scenario())
    assert isinstance(stranger_result, QuicConnectFailed)
    assert "certificate" in str(stranger_result).lower()
    assert friend_result.body == b"ko"


def test_certificate_failure_surfaces_as_a_final_httpx_error(server, other_ca):
    """Flower gives up (no retry loop) on transport errors that mention the certificate."""
    transport = QuicHttpTransport("127.0.0.1", server.port, cafile=str(other_ca["ca_cert"]), settings=SMALL)
    with httpx.Client(transport=transport, timeout=GUARD) as client:
        with pytest.raises(httpx.ConnectError, match="(?i)certificate"):
            client.post(f"https://127.0.0.1:{server.port}/v1/fleet/echo", content=b"")


def test_wrong_protocol_version_fails_the_handshake(server, certs):
    async def scenario():
        client = FleetQuicClient(
            "127.0.0.1", server.port, cafile=str(certs["ca_cert"]), settings=SMALL, alpn="flq-fleet/2"
        )
        try:
            return await client.request("POST", "/v1/fleet/echo", [], b"")
        except QuicConnectFailed as exc:
            return exc
        finally:
            await client.close()

    result = run(scenario())
    assert isinstance(result, QuicConnectFailed) and "alpn" in str(result).lower()


# --- faults: what Flower's retry logic sees --------------------------------------------------

RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_a_connect_error(certs):
    port = free_udp_port()
    transport = QuicHttpTransport("127.0.0.1", port, cafile=str(certs["ca_cert"]), settings=SMALL)
    with httpx.Client(transport=transport, timeout=httpx.Timeout(GUARD)) as client:
        with pytest.raises(httpx.ConnectError, match="refused"):
            client.post(f"https://127.0.0.1:{port}/v1/fleet/echo", content=b"")


def test_pending_datagrams_reads_what_is_queued_up_to_a_limit_without_waiting():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        for i in range(5):
            tx.sendto(bytes([i]) * (i + 1), rx.getsockname())
        assert select.select([rx], [], [], GUARD)[0]
        assert [data for data, _ in pending_datagrams(rx, 3)] == [b"\x00", b"\x01" * 2, b"\x02" * 3]
        assert [data for data, _ in pending_datagrams(rx, 10)] == [b"\x03" * 4, b"\x04" * 5]
        assert list(pending_datagrams(rx, 10)) == []  # nothing queued: returns at once


def test_pending_datagrams_surfaces_icmp_errors_of_a_connected_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", free_udp_port()))
        sock.setblocking(False)
        sock.send(b"anyone?")
        assert select.select([sock], [], [], GUARD)[0]
        with pytest.raises(ConnectionRefusedError):
            list(pending_datagrams(sock, 10))


@pytest.mark.parametrize("graceful", [True, False], ids=["server-closes", "server-crashes"])
def test_server_restart_is_retryable_then_recovers(certs, graceful):
    first = ServerThread(certs)
    port = first.port
    transport = QuicHttpTransport("127.0.0.1", port, cafile=str(certs["ca_cert"]), settings=SMALL)
    second = None
    try:
        with httpx.Client(transport=transport, timeout=httpx.Timeout(GUARD, read=5.0)) as client:
            url = f"https://127.0.0.1:{port}/v1/fleet/echo"
            assert client.post(url, content=b"a").content == b"a"
            first.stop(graceful=graceful)
            failures = []
            for _ in range(3):  # the transport notices (close frame, ICMP or silence) and fails retryably
                try:
                    client.post(url, content=b"b")
                except RETRYABLE as exc:
                    failures.append(exc)
            assert failures and all(isinstance(f, RETRYABLE) for f in failures)
            second = ServerThread(certs, port=port)  # restarted on the same port
            assert client.post(url, content=b"back").content == b"kcab"
        assert transport.client.stats.connections >= 2
    finally:
        if second is not None:
            second.stop()


# --- the real Flower SuperLink app, over QUIC, with Flower's own Fleet connection ------------


def test_flower_fleet_connection_over_quic(certs, monkeypatch, tmp_path):
    from flq.transport.flower_pins import FLEET_CLIENT_GLOBAL, FLEET_CONNECTION_MODULE, create_app
    from flq.transport.supernode_quic import QuicClientOptions, make_quic_fleet_client_class

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    app = create_app()  # Flower's SuperLink app: in-memory LinkState, Flower's middleware
    server = ServerThread(certs, app=app, settings=QuicSettings())
    options = QuicClientOptions(settings=QuicSettings(), session_file=tmp_path / "ticket.json")
    monkeypatch.setattr(FLEET_CONNECTION_MODULE, FLEET_CLIENT_GLOBAL, make_quic_fleet_client_class(options))
    state = app.state.linkstate_factory.state()
    try:
        with FLEET_CONNECTION_MODULE.http_request_response(
            f"127.0.0.1:{server.port}", False, str(certs["ca_cert"])
        ) as conn:
            node_id, receive = conn[0], conn[1]
            # register + activate went over QUIC, through Flower's node-auth middleware
            assert [n.status for n in state.get_node_info(node_ids=[node_id])] == ["online"]
            assert receive() is None  # pull-messages over QUIC: signed, translated, answered
        # leaving the context deactivates and unregisters, over QUIC too
        assert [n.status for n in state.get_node_info(node_ids=[node_id])] in ([], ["unregistered"])
        assert server.stats.requests >= 5 and server.stats.refused_streams == 0
        assert (tmp_path / "ticket.json").is_file()
    finally:
        server.stop()
