"""The Fleet connection's policies, in memory: a real aioquic client and a BoundedQuicConnection
server exchange datagrams through plain function calls on a virtual clock; no sockets, no loop.

Each test names the defect of issue 23 it rules out; on the code before that issue each of
these behaviours was wrong (see the issue for what was measured on loopback).
"""

from __future__ import annotations

import gc
import os
import weakref

import lz4.block
import pytest
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, QuicConnectionError, QuicReceiveContext
from aioquic.quic.stream import StreamFinishedError
from aioquic.tls import Epoch

from flq.transport import frames
from flq.transport.bounded_quic import MAX_FRAGMENTS, REASSEMBLY_FRACTION, BoundedQuicConnection
from flq.transport.certs import make_certificates
from flq.transport.fleet_connection import (
    FleetConnection,
    FleetPolicy,
    PeerMigrated,
    RequestCancelled,
    RequestReceived,
    StreamRefused,
    check_path,
)
from flq.transport.flower_pins import FLEET_PATHS
from flq.transport.frames import ErrorCode
from flq.transport.memory_budget import Account, MemoryBudget
from flq.transport.quic_settings import QuicSettings, client_configuration, server_configuration
from harness.quic_attacks import lz4_frame, partial_body

CLIENT, OTHER, SERVER = ("10.0.0.1", 50000), ("10.0.0.9", 50001), ("10.0.0.2", 4433)
ECHO = "/v1/fleet/push-object"
LIMITS = frames.Limits(max_frame_payload=64 << 10, max_body=1 << 20, max_head_bytes=4096)
SETTINGS = QuicSettings(limits=LIMITS, max_data=4 << 20, max_stream_data=2 << 20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


class Pair:
    """A client QuicConnection and a server FleetConnection joined by function calls."""

    def __init__(self, certs, *, settings=SETTINGS, budget: MemoryBudget | None = None, cap: int = 8 << 20):
        self.now = 0.0
        self.client_addr = CLIENT
        self.client = QuicConnection(
            configuration=client_configuration("localhost", settings, cafile=str(certs["ca_cert"]))
        )
        self.budget = budget or MemoryBudget(256 << 20)
        self.quic = BoundedQuicConnection(
            configuration=server_configuration(str(certs["server_cert"]), str(certs["server_key"]), settings),
            budget=self.budget,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.account = Account(self.budget, cap)
        self.fleet = FleetConnection(self.quic, FleetPolicy(limits=settings.limits), self.account)
        self.responses: dict[int, bytearray] = {}
        self.client.connect(SERVER, now=self.now)
        self.events = self.pump()

    def pump(self, rounds: int = 200, serve: bool = True) -> list:
        """Exchange datagrams until both sides are quiet; answer requests as an echo app would."""
        out = []
        for _ in range(rounds):
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.quic.receive_datagram(data, self.client_addr, now=self.now)
                moved = True
            new = self.server_events()
            if serve:
                self.answer(new)
            out += new
            for data, _ in self.quic.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER, now=self.now)
                moved = True
            while (event := self.client.next_event()) is not None:
                if isinstance(event, events.StreamDataReceived):
                    self.responses.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.now += 0.005
            if not moved:
                break
        return out

    def server_events(self) -> list:
        out = []
        while (event := self.quic.next_event()) is not None:
            out += self.fleet.handle_event(event)
        return out + self.fleet.after_datagrams()

    def answer(self, fleet_events) -> None:
        for event in fleet_events:
            if isinstance(event, RequestReceived):
                self.fleet.send_head(event.stream_id, 200, [("x-len", str(len(event.body)))])
                self.fleet.send_body(event.stream_id, event.body[::-1], more=False)
                self.fleet.request_finished(event.stream_id)

    def send(self, data: bytes, *, end: bool = True, stream_id: int | None = None) -> int:
        if stream_id is None:
            stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(stream_id, data, end_stream=end)
        return stream_id

    def request(self, path: str = ECHO, body: bytes = b"", **kwargs) -> int:
        return self.send(b"".join(frames.encode_request("POST", path, [], body, limits=LIMITS)), **kwargs)

    def response(self, stream_id: int) -> list:
        return frames.StreamDecoder("response", LIMITS).feed(bytes(self.responses.get(stream_id, b"")))

    def inject(self, stream_id: int, offset: int, data: bytes, fin: bool = False) -> None:
        """A STREAM frame as the server would parse it from a packet, at any offset."""
        buf = Buffer(capacity=len(data) + 32)
        buf.push_uint_var(stream_id)
        buf.push_uint_var(offset)
        buf.push_uint_var(len(data))
        buf.push_bytes(data)
        context = QuicReceiveContext(
            epoch=Epoch.ONE_RTT,
            host_cid=self.quic.host_cid,
            network_path=self.quic._network_paths[0],
            quic_logger_frames=None,
            time=self.now,
            version=self.quic._version,
        )
        try:
            self.quic._handle_stream_frame(context, 0x08 | 0x04 | 0x02 | int(fin), Buffer(data=buf.data))
        except StreamFinishedError:  # a stream aioquic discarded: its packet parser ignores the frame
            pass


def refused(fleet_events, code: ErrorCode | None = None) -> list[StreamRefused]:
    out = [e for e in fleet_events if isinstance(e, StreamRefused)]
    return [e for e in out if code is None or e.code == code]


def ran(fleet_events) -> list[RequestReceived]:
    return [e for e in fleet_events if isinstance(e, RequestReceived)]


# --- the basics -----------------------------------------------------------------------------


def test_requests_run_and_are_answered_in_memory(certs):
    pair = Pair(certs)
    ids = [pair.request(body=os.urandom(n)) for n in (0, 10, 100_000)]
    fleet_events = pair.pump()
    assert [e.stream_id for e in ran(fleet_events)] == ids
    for stream_id, event in zip(ids, ran(fleet_events)):
        head, *body, end = pair.response(stream_id)
        assert head.status == 200 and b"".join(b.data for b in body) == event.body[::-1]
    assert pair.fleet.open_streams == 0 and pair.account.held == 0 and pair.budget.used == 0


# --- defect 8: one request per stream -------------------------------------------------------


def test_a_second_request_on_the_same_stream_refuses_the_stream_and_runs_nothing(certs):
    pair = Pair(certs)
    two = b"".join(frames.encode_request("POST", ECHO, [], b"one")) + b"".join(
        frames.encode_request("POST", "/v1/fleet/push-messages", [], b"two")
    )
    stream_id = pair.send(two)
    fleet_events = pair.pump()
    assert ran(fleet_events) == []
    assert [e.code for e in refused(fleet_events)] == [ErrorCode.UNEXPECTED_FRAME]
    assert isinstance(pair.response(stream_id)[-1], frames.PeerError)


def test_a_request_sent_after_the_response_on_the_same_stream_is_never_run(certs):
    pair = Pair(certs)
    first = b"".join(frames.encode_request("POST", ECHO, [], b"first"))
    stream_id = pair.send(first, end=False)  # the stream stays open after END
    assert [e.body for e in ran(pair.pump())] == [b"first"]
    with pytest.raises(ValueError):  # the server sent STOP_SENDING: aioquic's client stops...
        pair.request(body=b"second", stream_id=stream_id)
    # ...a hostile one does not: the second request arrives on the answered stream anyway.
    pair.inject(stream_id, len(first), b"".join(frames.encode_request("POST", ECHO, [], b"second")), fin=True)
    assert pair.server_events() == [] and pair.fleet.open_streams == 0  # dropped, never run


# --- defect 9: exact paths ---------------------------------------------------------------------

BAD_PATHS = [
    "/v1/fleet/../control/stop-run",
    "/v1/fleet/./get-run",
    "/v1/fleet/%2e%2e/control/list-runs",
    "/v1/fleet/get%2Drun",
    "/v1/fleet//get-run",
    "//v1/fleet/get-run",
    "/v1/fleet/get-run/",
    "/v1/fleet/get-run?x=1",
    "/v1/fleet/get-run#frag",
    "/v1/fleet\\get-run",
    "/v1/fleet/",
    "/v1/fleet/unknown-rpc",
    "/v1/control/stop-run",
    "/v1/runtime/pull-task-input",
    "/V1/FLEET/GET-RUN",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_only_exact_fleet_paths_are_served(path):
    with pytest.raises(frames.FrameError) as err:
        check_path(path, FLEET_PATHS)
    assert err.value.code == ErrorCode.PATH_NOT_ALLOWED and "not served over QUIC" in err.value.message


def test_every_flower_fleet_path_is_served_and_bad_ones_never_reach_the_app(certs):
    for path in FLEET_PATHS:
        check_path(path, FLEET_PATHS)
    pair = Pair(certs)
    for path in BAD_PATHS:
        pair.request(path, b"x")
    fleet_events = pair.pump()
    assert ran(fleet_events) == []
    assert len(refused(fleet_events, ErrorCode.PATH_NOT_ALLOWED)) == len(BAD_PATHS)


# --- defects 3 and 5: one memory budget; partial frames and inflated bytes count ---------------


def _partial_body(size: int) -> bytes:
    """A request head and one raw BODY frame that declares `size` bytes and sends all but one."""
    return partial_body(size, ECHO)


def test_partly_received_frames_count_against_the_connection_cap(certs):
    """With a 256 KiB cap, no set of half-sent frames holds more (a 16 MiB cap held 26 MiB)."""
    cap = 256 << 10
    pair = Pair(certs, cap=cap)
    for _ in range(8):  # 8 x 60 KB, none complete
        pair.send(_partial_body(60_000), end=False)
    fleet_events = pair.pump()
    assert refused(fleet_events, ErrorCode.BODY_TOO_LARGE)
    assert pair.account.held <= cap
    assert pair.budget.used == pair.account.held + pair.quic.reassembly_bytes


def test_one_budget_across_connections_refuses_new_work_when_spent_and_recovers(certs):
    budget = MemoryBudget(300 << 10)
    hog, other = Pair(certs, budget=budget), Pair(certs, budget=budget)
    hog_streams = [hog.send(_partial_body(60_000), end=False) for _ in range(4)]  # ~240 KB held
    hog.pump()
    assert budget.used > 200 << 10
    stream_id = other.request(body=os.urandom(100_000))
    fleet_events = other.pump()
    assert [e.code for e in refused(fleet_events)] == [ErrorCode.UNAVAILABLE]
    assert "memory budget" in refused(fleet_events)[0].message
    assert isinstance(other.response(stream_id)[-1], frames.PeerError)
    for stream_id in hog_streams:  # the hog finishes its requests: memory comes back
        hog.send(b"\x01" + frames.encode_end(), stream_id=stream_id)
    assert len(ran(hog.pump())) == 4 and budget.used == 0
    other.request(body=os.urandom(100_000))
    assert len(ran(other.pump())) == 1


def test_lz4_is_charged_at_its_declared_size_before_inflating(certs, monkeypatch):
    budget = MemoryBudget(48 << 10)
    pair = Pair(certs, budget=budget)
    inflated = []
    real = lz4.block.decompress
    monkeypatch.setattr(lz4.block, "decompress", lambda *a, **k: inflated.append(k) or real(*a, **k))
    pair.send(frames.encode_request_head("POST", ECHO) + lz4_frame(os.urandom(2000) * 30) + frames.encode_end())
    fleet_events = pair.pump()
    assert [e.code for e in refused(fleet_events)] == [ErrorCode.UNAVAILABLE]
    assert inflated == [] and budget.used == 0  # refused on the declared 60 KB, nothing inflated


def test_lz4_frames_past_the_ratio_limit_are_refused_and_the_encoder_never_sends_them(certs):
    pair = Pair(certs)
    pair.send(frames.encode_request_head("POST", ECHO) + lz4_frame(b"\x00" * 60_000) + frames.encode_end())
    fleet_events = pair.pump()
    assert [e.code for e in refused(fleet_events)] == [ErrorCode.FRAME_TOO_LARGE]
    assert "limit 64x" in refused(fleet_events)[0].message
    # Our own client sends such a chunk uncompressed, so it is served.
    pair.request(body=b"\x00" * 60_000)
    assert [len(e.body) for e in ran(pair.pump())] == [60_000]
    chunk = frames.encode_body_chunk(os.urandom(2000) * 30, max_ratio=LIMITS.max_lz4_ratio)
    assert chunk[4] & frames.FLAG_LZ4  # data that compresses less than the limit still is


# --- defect 2: receive windows fixed; out-of-order data bounded and charged --------------------


def test_receive_windows_do_not_grow_past_the_settings(certs):
    pair = Pair(certs)
    for _ in range(12):  # 12 MB through a 4 MiB connection window, 2 MiB stream windows
        pair.request(body=os.urandom(1_000_000))
        assert len(ran(pair.pump())) == 1
    limit = pair.quic._local_max_data
    consumed = limit.used - pair.quic.reassembly_bytes
    assert consumed > 12_000_000
    assert limit.sent - consumed <= SETTINGS.max_data  # aioquic alone had doubled it to 32 MiB


def test_one_byte_at_a_high_offset_is_charged_and_bounded(certs):
    budget = MemoryBudget(64 << 20)
    pair = Pair(certs, budget=budget)
    stream_id = pair.request(body=b"x", end=False)
    pair.pump()
    high = SETTINGS.max_stream_data // REASSEMBLY_FRACTION - 1  # the most one connection may hold
    pair.inject(stream_id + 4, high, b"z")  # the gap below is zero-filled by aioquic...
    assert pair.quic.reassembly_bytes == high + 1 and budget.used == high + 1  # ...and charged
    with pytest.raises(QuicConnectionError, match="out-of-order"):  # past max_reassembly on this connection
        pair.inject(stream_id + 8, high, b"z")
    assert pair.quic.reassembly_bytes == high + 1


def test_out_of_order_data_from_many_connections_leaves_small_requests_served(certs):
    # 16 connections each send one byte near the end of the stream window: before, each held a
    # whole window (16 MiB under the defaults) and the budget was spent, refusing even heartbeats
    budget = MemoryBudget(SETTINGS.max_stream_data * 4, reserve=SETTINGS.max_stream_data // 2)
    attackers = [Pair(certs, budget=budget) for _ in range(16)]
    closed = 0
    for attacker in attackers:
        stream_id = attacker.request(body=b"x", end=False)
        attacker.pump()
        try:
            attacker.inject(stream_id + 4, SETTINGS.max_stream_data - 1, b"z")
        except QuicConnectionError as exc:
            assert "out-of-order" in exc.reason_phrase
            closed += 1
            attacker.fleet.release()
    assert closed == 16 and budget.used < SETTINGS.max_stream_data
    # one source (or several) filling everything outside the reserve still leaves small requests served
    hog = Pair(certs, budget=budget, cap=budget.limit)
    while budget.used < budget.limit - budget.reserve - 70_000:
        hog.send(_partial_body(60_000), end=False)
        hog.pump()
    legit = Pair(certs, budget=budget)
    legit.request(body=os.urandom(200_000))
    assert [e.code for e in refused(legit.pump())] == [ErrorCode.UNAVAILABLE]  # a large one waits
    legit.request(body=b"heartbeat")
    assert [e.body for e in ran(legit.pump())] == [b"heartbeat"] and budget.reserved == 0


def test_out_of_order_data_the_budget_cannot_hold_is_dropped_and_its_stream_refused(certs):
    budget = MemoryBudget(200 << 10)
    pair = Pair(certs, budget=budget)
    stream_id = pair.request(body=b"x")
    pair.pump()
    pair.inject(stream_id + 4, SETTINGS.max_stream_data // REASSEMBLY_FRACTION - 1, b"z")  # 256 KiB
    assert pair.quic.reassembly_bytes == 0 and budget.used == 0  # nothing was allocated
    fleet_events = pair.server_events()
    assert [(e.stream_id, e.code) for e in refused(fleet_events)] == [(stream_id + 4, ErrorCode.UNAVAILABLE)]


def test_too_many_out_of_order_fragments_close_the_connection(certs):
    pair = Pair(certs)
    stream_id = pair.request(body=b"x")
    pair.pump()
    with pytest.raises(QuicConnectionError, match="fragments"):
        for i in range(MAX_FRAGMENTS + 1):
            pair.inject(stream_id + 4, 10 + 2 * i, b"z")


# --- defect 10: refused streams are not remembered ---------------------------------------------


def test_refused_streams_leave_nothing_behind(certs):
    pair = Pair(certs)
    for _ in range(6):  # 600 refused streams, in waves within aioquic's stream limit
        for _ in range(100):
            pair.request("/v1/control/stop-run", b"")
        assert len(refused(pair.pump())) == 100
    assert pair.fleet.open_streams == 0
    assert len(pair.quic._streams) < 128 and pair.account.held == 0


def test_a_refused_streams_body_is_freed_without_the_cycle_collector(certs):
    # decoder._failed held the FrameError, whose traceback held _on_data's frame and the stream:
    # a cycle, so a refused stream's body lived until the cycle collector ran
    pair = Pair(certs, budget=MemoryBudget(256 << 10), cap=8 << 20)
    body = b"".join(frames.encode_body(os.urandom(400_000), chunk_size=60_000))
    request = frames.encode_request_head("POST", ECHO) + body
    stream_id = pair.send(request[:1000], end=False)
    pair.pump()
    stream = weakref.ref(pair.fleet._streams[stream_id])
    gc.disable()
    try:
        pair.send(request[1000:300_000], end=False, stream_id=stream_id)  # past the budget
        assert [e.code for e in refused(pair.pump())] == [ErrorCode.UNAVAILABLE]
        assert stream() is None and pair.account.held == 0  # freed at once, by reference counting
    finally:
        gc.enable()
    decoder = frames.StreamDecoder("request", LIMITS)
    with pytest.raises(frames.FrameError):
        decoder.feed(b"\xff" * 10)
    assert not isinstance(decoder._failed, BaseException)  # kept without its traceback
    with pytest.raises(frames.FrameError, match="MALFORMED|UNEXPECTED|FRAME"):
        decoder.feed(b"more")


# --- defect 7: migration used only once aioquic has validated the path ------------------------


def test_a_datagram_from_another_address_is_not_a_migration_until_validated(certs):
    pair = Pair(certs)
    pair.request(body=b"a")
    pair.pump()
    assert pair.fleet.peer_address == CLIENT
    # Spoofed: a live connection ID, garbage payload, from another address.
    short_header = bytes([0x40]) + pair.quic.host_cid + os.urandom(60)
    pair.quic.receive_datagram(short_header, OTHER, now=pair.now)
    # Replayed: a real packet of the client's, delivered again from another address.
    pair.request(body=b"b")
    captured = [data for data, _ in pair.client.datagrams_to_send(now=pair.now)]
    for data in captured:
        pair.quic.receive_datagram(data, CLIENT, now=pair.now)
        pair.quic.receive_datagram(data, OTHER, now=pair.now)
    fleet_events = pair.server_events()
    assert not [e for e in fleet_events if isinstance(e, PeerMigrated)]
    assert pair.fleet.peer_address == CLIENT


def test_a_real_migration_is_reported_once_the_new_path_is_validated(certs):
    pair = Pair(certs)
    pair.request(body=b"a")
    pair.pump()
    pair.client_addr = OTHER  # NAT rebinding: the client's packets now come from elsewhere
    pair.request(body=b"b")
    for data, _ in pair.client.datagrams_to_send(now=pair.now):
        pair.quic.receive_datagram(data, OTHER, now=pair.now)
    first = pair.server_events()
    assert not [e for e in first if isinstance(e, PeerMigrated)]  # aioquic challenges the path first
    assert pair.fleet.peer_address == CLIENT
    later = pair.pump()  # PATH_CHALLENGE / PATH_RESPONSE
    assert [(e.old, e.new) for e in later if isinstance(e, PeerMigrated)] == [(CLIENT, OTHER)]
    assert pair.fleet.peer_address == OTHER


# --- defect 4: state released on close -------------------------------------------------------


def test_a_closed_connection_gives_its_memory_back_and_is_collectable(certs):
    budget = MemoryBudget(64 << 20)
    pair = Pair(certs, budget=budget)
    running = pair.request(body=os.urandom(50_000))
    held = pair.send(_partial_body(60_000), end=False)
    fleet_events = pair.pump(serve=False)  # one request runs in "the app", one is half-sent
    assert [e.stream_id for e in ran(fleet_events)] == [running] and held
    assert budget.used > 100_000
    pair.client.close(reason_phrase="bye")
    pair.pump()
    pair.now += 10
    pair.quic.handle_timer(now=pair.now)  # draining ends
    closing = pair.server_events()
    assert RequestCancelled(running) in closing  # the app is told its peer is gone
    assert pair.fleet.closed and budget.used == 0 and pair.account.held == 0
    assert pair.quic._streams == {} and pair.fleet.open_streams == 0
    fleet_ref, quic_ref = weakref.ref(pair.fleet), weakref.ref(pair.quic)
    gc.disable()
    try:
        del pair, fleet_events, closing
        assert fleet_ref() is None  # no cycle through the Fleet layer: freed at once
    finally:
        gc.enable()
    gc.collect()  # aioquic's connection sits in its own cycle (bound frame handlers), holding nothing large
    assert quic_ref() is None
