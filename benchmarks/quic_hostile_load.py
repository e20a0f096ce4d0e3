"""The QUIC Fleet server under hostile load (issue 23): each attack, one after another, against a real
`flq-superlink` on loopback while legitimate Fleet traffic runs; memory, CPU, latency, log volume.

What runs: one real `flq-superlink` started with the documented flags (harness.deployment's
`superlink_command`: TLS, runtime installs off, every `--quic-*` guard at its default), one real
`flq-supernode` that runs Fleet rounds without pause (benchmarks/apps/fleet_bench sending it a
0.1 MB adapter and getting one back, round after round), and a **probe**: Flower's own Fleet
client over QUIC (the FleetHttpClient subclass `flq-supernode` installs) for a node of its own,
registered and activated, sending `SendNodeHeartbeat` every 100 ms on one persistent connection,
and every 2 s one more on a brand-new connection (a full handshake). The probe gives the per-request
latencies (each one a real Fleet RPC through Flower's app, timed around the call); the SuperNode's
rounds show that a real federation keeps going. A probe request fails if it raises (Flower's
heartbeat timeout is 5 s).

Attackers run in their own process (`attack NAME`), from addresses of their own on loopback
(127.0.N.x, one N per attack: Linux routes all of 127/8 to lo), so that the per-address caps see
them as the outsiders they are; the SuperNode and the probe use 127.0.0.1. Each attack is bounded
in time and in count; the crafting helpers are harness/quic_attacks.py. Per attack: the server's
RSS (VmRSS of the flq-superlink process, checked to be the one that owns the UDP socket) before,
at its peak during and 60 s after; its CPU seconds during (utime + stime); the probe's latency p50 /
p99 during and in the 5 s after; failed legitimate requests; what the attacker saw refused; the
server's log lines.

    .venv/bin/python benchmarks/quic_hostile_load.py             # ~15 min -> results/quic_hostile_load.md
    .venv/bin/python benchmarks/quic_hostile_load.py --quick     # short attacks, 10 s after -> results/tmp/
    .venv/bin/python benchmarks/quic_hostile_load.py --attacks junk,traversal --duration 3 --after 5 \\
        --intensity 0.1 --out benchmarks/results/tmp/debug.md    # a few, gently (debugging)

Every process is started in its own session and stopped by its own pid (and group), also on
errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `harness` is not installed
from harness.deployment import superlink_command  # noqa: E402
from harness.processes import BIN, HarnessError, Proc, descendants, flower_env, free_port, wait_for  # noqa: E402

APP = ROOT / "benchmarks" / "apps" / "fleet_bench"
RESULTS = ROOT / "benchmarks" / "results"
HOST = "127.0.0.1"
HEARTBEAT = "/v1/fleet/send-node-heartbeat"
REGISTER = "/v1/fleet/register-node"
PUSH_OBJECT = "/v1/fleet/push-object"
MB = 1_000_000
MIB = 1 << 20
CEILING_MB = 512  # the issue's target: RSS below baseline + 512 MB under every attack
LEGIT_AFTER_S = 5.0  # legitimate requests must succeed during the attack and this long after it


@dataclass(frozen=True)
class Attack:
    key: str
    issue: str  # which defect of issue 23 it replays
    title: str
    octet: int  # attackers send from 127.0.<octet>.x
    duration: float = 15.0  # seconds, full run


ATTACKS = [
    Attack("junk", "1", "junk Initial packets (1,200 B, fresh connection IDs, garbage payload)", 1, 20.0),
    Attack("handshakes", "1", "unanswered real ClientHellos (half-open connections; Retry under load)", 2),
    Attack("ooo", "2", "out-of-order STREAM data at high offsets, many connections", 3),
    Attack("lz4", "3", "LZ4 amplification: legal frames of 1 MiB near the ratio limit, and of zeros", 4),
    Attack("churn", "4", "many connections opened, used and closed (memory after close)", 5),
    Attack("partial", "5", "partly received frames past the per-connection cap, one connection", 6),
    Attack("refused", "6, 10", "many refused streams (log volume)", 7),
    Attack("migration", "7", "spoofed migration: a live connection's ID from other addresses", 8),
    Attack("multi", "8", "several requests on one stream", 9),
    Attack("traversal", "9", "path traversal (/v1/fleet/../control/... and the like)", 10),
]
BY_KEY = {a.key: a for a in ATTACKS}


# ================================================================================================
# Attackers (subprocess: `attack NAME`)
# ================================================================================================


class Ctx:
    """What one attack knows and counts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port, self.cafile = args.port, args.cafile
        self.target = (HOST, args.port)
        self.intensity = args.intensity
        self.octet = BY_KEY[args.name].octet
        self.deadline = time.monotonic() + args.duration
        self.counts: Counter = Counter()
        self.outcomes: Counter = Counter()  # the server's answers to attack streams
        self.notes: list[str] = []
        self.extra: dict = {}

    def addr(self, i: int) -> str:
        return f"127.0.{self.octet}.{1 + i % 250}"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def scaled(self, n: float, least: int = 1) -> int:
        return max(least, int(n * self.intensity))

    async def connect(self, i: int = 0, timeout: float = 10.0, **kwargs):
        from harness.quic_attacks import open_connection

        try:
            conn = await open_connection(
                HOST, self.port, cafile=self.cafile, local_host=self.addr(i), timeout=timeout, **kwargs
            )
            self.counts["handshakes completed"] += 1
            return conn
        except Exception as exc:  # noqa: BLE001  (refused, dropped, timed out: counted)
            self.counts[f"handshakes failed ({type(exc).__name__})"] += 1
            return None


def _protobuf_headers() -> list[tuple[str, str]]:
    from flwr.supercore.protobuf.constants import PROTOBUF_MEDIA_TYPE

    return [("content-type", PROTOBUF_MEDIA_TYPE), ("accept", PROTOBUF_MEDIA_TYPE)]


def heartbeat_body(node_id: int = 1, pad: int = 0) -> bytes:
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.proto.node_pb2 import Node

    from harness.quic_attacks import with_unknown_field

    raw = SendNodeHeartbeatRequest(node=Node(node_id=node_id), heartbeat_interval=30).SerializeToString()
    return with_unknown_field(raw, pad) if pad else raw


class NodeKey:
    """A SuperNode identity as Flower's makes one: an EC key pair; requests carry a signed timestamp."""

    def __init__(self) -> None:
        from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

        self.private, public = generate_key_pairs()
        self.public = public_key_to_bytes(public)

    def headers(self) -> list[tuple[str, str]]:
        """Flower's NodeAuthHttpInterceptor headers, plus the protobuf content type."""
        from base64 import b64encode

        from flwr.common.constant import TIMESTAMP_HEADER
        from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
        from flwr.supercore.date import now
        from flwr.supercore.primitives.asymmetric import sign_message

        timestamp = now().isoformat()
        signature = sign_message(self.private, timestamp.encode("ascii"))
        return [
            *_protobuf_headers(),
            (FLEET_HTTP_PUBLIC_KEY_HEADER, b64encode(self.public).decode("ascii")),
            (TIMESTAMP_HEADER, timestamp),
            (FLEET_HTTP_SIGNATURE_HEADER, b64encode(signature).decode("ascii")),
        ]


def register_body(key: bytes) -> bytes:
    from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest

    return RegisterNodeFleetRequest(public_key=key).SerializeToString()


def register_request(key: NodeKey) -> bytes:
    """A signed register-node for `key`, as Flower's SuperNode sends it."""
    from harness.quic_attacks import request_bytes

    return request_bytes(REGISTER, register_body(key.public), key.headers())


async def attack_junk(ctx: Ctx) -> None:
    """Issue 23 item 1 as measured there: ~29 Mb/s of junk Initials; here 4,000 datagrams/s (38 Mb/s)."""
    from harness.quic_attacks import bind_udp, drain, junk_initial

    rate = 4000 * ctx.intensity
    cap = int(rate * (ctx.left() + 1))
    socks = [bind_udp(ctx.addr(i)) for i in range(8)]
    started, sent = time.monotonic(), 0
    try:
        while ctx.left() > 0 and sent < cap:
            due = min(cap, int((time.monotonic() - started) * rate))
            while sent < due:
                try:
                    socks[sent % len(socks)].sendto(junk_initial(), ctx.target)
                    ctx.counts["datagrams sent"] += 1
                except OSError:
                    ctx.counts["send errors"] += 1
                sent += 1
            for sock in socks:
                ctx.counts["datagrams the server answered"] += len(drain(sock))
            await asyncio.sleep(0.005)
    finally:
        for sock in socks:
            sock.close()
    ctx.extra["Mb/s"] = round(sent * 1200 * 8 / 1e6 / max(1e-9, time.monotonic() - started), 1)


async def attack_handshakes(ctx: Ctx) -> None:
    """Real ClientHellos from 32 addresses, never continued: half-open connections, then Retry."""
    from harness.quic_attacks import bind_udp, drain, is_retry, real_initial

    rate = 150 * ctx.intensity
    cap = int(rate * (ctx.left() + 1))
    socks = [bind_udp(ctx.addr(i)) for i in range(32)]
    started, sent = time.monotonic(), 0
    try:
        while ctx.left() > 0 and sent < cap:
            due = min(cap, int((time.monotonic() - started) * rate))
            while sent < due:
                socks[sent % len(socks)].sendto(real_initial(ctx.cafile, HOST, ctx.port), ctx.target)
                ctx.counts["ClientHellos sent"] += 1
                sent += 1
            for sock in socks:
                for reply in drain(sock):
                    ctx.counts["answered: Retry" if is_retry(reply) else "answered: handshake datagrams"] += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        for sock in socks:
            for reply in drain(sock):
                ctx.counts["answered: Retry" if is_retry(reply) else "answered: handshake datagrams"] += 1
    finally:
        for sock in socks:
            sock.close()


async def attack_ooo(ctx: Ctx) -> None:
    """Issue 23 item 2: each connection sends one byte just below its stream window (16 MiB), so the
    server would zero-fill 16 MiB; connections are replaced as the server closes or refuses them;
    one in four also tries a second such byte (past the per-connection reassembly cap)."""
    from flq.transport.quic_settings import QuicSettings
    from harness.quic_attacks import close_connection, outcome

    window = QuicSettings().max_stream_data
    want, budget = ctx.scaled(24, 2), ctx.scaled(120, 4)  # live holders; connections in all
    holders: list = []
    opened = 0

    async def one(i: int):
        conn = await ctx.connect(i)
        if conn is None:
            return None
        protocol, _ = conn
        sid = protocol.send_at(window - 1, b"z")
        ctx.counts["high-offset bytes sent"] += 1
        ctx.counts["gap bytes claimed (MiB)"] += window // MIB
        if i % 4 == 3:
            protocol.send_at(window - 1, b"z")
            ctx.counts["high-offset bytes sent"] += 1
        return [protocol, conn[1], sid, time.monotonic()]

    try:
        while ctx.left() > 0:
            holders = [h for h in holders if h is not None]
            for h in list(holders):
                protocol, transport, sid, since = h
                if protocol.terminated is not None:
                    ctx.counts[f"connections closed by the server ({protocol.terminated.reason_phrase[:60]})"] += 1
                    holders.remove(h)
                    transport.close()
                elif protocol.done[sid].done():
                    ctx.outcomes[outcome(protocol.answer(sid))] += 1
                    protocol.forget(sid)
                    h[2] = protocol.send_at(window - 1, b"z")  # refused: try again on a new stream
                    ctx.counts["high-offset bytes sent"] += 1
                elif time.monotonic() - since > 5:
                    protocol._quic.send_ping(0)
                    protocol.transmit()
                    h[3] = time.monotonic()
            new = [one(opened + i) for i in range(min(want - len(holders), budget - opened, 8))]
            opened += len(new)
            holders += await asyncio.gather(*new)
            await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(*(close_connection(h[0], h[1]) for h in holders if h is not None))


async def attack_lz4(ctx: Ctx) -> None:
    """Issue 23 item 3: requests that never end, each BODY frame 1 MiB inflated: most frames as
    compressible as the server's ratio limit allows (64x: ~16 kB on the wire), some all zeros
    (~4 kB, 255x: the issue's frames), over four connections; a refused stream is replaced."""
    from flq.transport import frames
    from harness.quic_attacks import close_connection, compressible, lz4_frame, outcome

    limit = frames.Limits().max_lz4_ratio
    legal = lz4_frame(compressible(MIB, limit))
    zeros = lz4_frame(bytes(MIB))
    ctx.extra["legal frame bytes on the wire"] = len(legal)
    ctx.extra["zero frame bytes on the wire"] = len(zeros)
    head = frames.encode_request_head("POST", PUSH_OBJECT)
    wire_cap = ctx.scaled(48 * MB)
    conns = [c for c in await asyncio.gather(*(ctx.connect(i) for i in range(ctx.scaled(4, 2)))) if c]
    streams: list[list] = []  # [protocol, stream id, frame, frames sent]

    def open_stream(protocol, frame):
        sid = protocol.send(head, end=False)
        streams.append([protocol, sid, frame, 0])

    for protocol, _ in conns:
        open_stream(protocol, legal)
        open_stream(protocol, legal)
        open_stream(protocol, zeros)
    try:
        while ctx.left() > 0 and ctx.counts["wire bytes"] < wire_cap and streams:
            for s in list(streams):
                protocol, sid, frame, sent = s
                if protocol.terminated is not None:
                    streams.remove(s)
                    continue
                if protocol.done[sid].done():
                    ctx.outcomes[outcome(protocol.answer(sid))] += 1
                    protocol.forget(sid)
                    streams.remove(s)
                    open_stream(protocol, frame)
                    continue
                buffered = len(protocol._quic._streams[sid].sender._buffer) if sid in protocol._quic._streams else 0
                if sent < 120 and buffered < 256 * 1024:
                    burst = 8 if frame is legal else 1
                    protocol.send(frame * burst, end=False, stream_id=sid)
                    s[3] += burst
                    ctx.counts["frames sent"] += burst
                    ctx.counts["inflated MiB offered"] += burst
                    ctx.counts["wire bytes"] += burst * len(frame)
            await asyncio.sleep(0.05)
        await asyncio.sleep(min(2.0, max(0.0, ctx.left())))
        for protocol, sid, _, _ in streams:
            if protocol.done[sid].done():
                ctx.outcomes[outcome(protocol.answer(sid))] += 1
            else:
                ctx.outcomes["held, unanswered (at the end)"] += 1
    finally:
        await asyncio.gather(*(close_connection(*c) for c in conns))


async def attack_churn(ctx: Ctx) -> None:
    """Issue 23 item 4: 300 connections opened from four addresses, 40 at a time, each sending one
    200 kB request (answered) and leaving a 1 MiB frame half-sent (held by the server), then closed."""
    from harness.quic_attacks import close_connection, outcome, partial_body, request_bytes

    total, width = ctx.scaled(300, 4), ctx.scaled(40, 2)
    served = request_bytes(HEARTBEAT, heartbeat_body(pad=200_000), _protobuf_headers())
    held = partial_body(MIB, HEARTBEAT, filler=os.urandom(MIB))
    left = iter(range(total))

    async def worker():
        for i in left:
            if ctx.left() <= 0:
                return
            conn = await ctx.connect(i % 4)
            if conn is None:
                continue
            protocol, transport = conn
            try:
                sid = protocol.send(served)
                await protocol.wait(sid, 10.0)
                ctx.outcomes[outcome(protocol.answer(sid))] += 1
                protocol.send(held, end=False)
                await asyncio.sleep(0.5)  # long enough for the 1 MiB to arrive
            finally:
                await close_connection(protocol, transport)
                ctx.counts["connections closed by the attacker"] += 1

    await asyncio.gather(*(worker() for _ in range(width)))


async def attack_partial(ctx: Ctx) -> None:
    """Issue 23 item 5: one connection, 100 streams, each with two complete 1 MiB BODY frames and a
    third that declares 1 MiB and sends all but its last byte: 300 MiB asked against a 256 MiB
    per-connection cap (2 x --quic-max-message-mib) and a 256 MiB server budget."""
    from flq.transport import frames
    from harness.quic_attacks import close_connection, outcome, partial_body

    filler = os.urandom(MIB)
    complete = frames.encode_frame(frames.FrameType.BODY, filler)
    stream_bytes = [
        frames.encode_request_head("POST", PUSH_OBJECT),
        complete,
        complete,
        partial_body(MIB)[-(MIB + 4) :],
    ]
    conn = await ctx.connect(0)
    if conn is None:
        return
    protocol, transport = conn
    todo = ctx.scaled(100)
    active: dict[int, int] = {}  # stream id -> parts sent
    try:
        while ctx.left() > 0 and (todo or active):
            if protocol.terminated is not None:
                ctx.notes.append(f"connection closed by the server: {protocol.terminated.reason_phrase}")
                break
            queued = sum(len(s.sender._buffer) for s in protocol._quic._streams.values())
            while todo and len(active) < 16:
                active[protocol.send(stream_bytes[0], end=False)] = 1
                todo -= 1
            for sid, parts in list(active.items()):
                if protocol.done[sid].done():
                    ctx.outcomes[outcome(protocol.answer(sid))] += 1
                    protocol.forget(sid)
                    del active[sid]
                elif parts < len(stream_bytes) and queued < 8 * MIB:
                    protocol.send(stream_bytes[parts], end=False, stream_id=sid)
                    ctx.counts["MiB sent"] += len(stream_bytes[parts]) / MIB
                    queued += len(stream_bytes[parts])
                    active[sid] = parts + 1
                elif parts == len(stream_bytes):
                    ctx.counts["streams left holding a partial frame"] += 1
                    del active[sid]
            await asyncio.sleep(0.02)
        await asyncio.sleep(min(2.0, max(0.0, ctx.left())))
        for sid in list(protocol.done):
            if protocol.done[sid].done():
                ctx.outcomes[outcome(protocol.answer(sid))] += 1
    finally:
        await close_connection(protocol, transport)
    ctx.counts["MiB sent"] = round(ctx.counts["MiB sent"])


async def attack_refused(ctx: Ctx) -> None:
    """Issue 23 items 6 and 10: 10,000 requests for a Control API path on one connection, 100 at a time."""
    from harness.quic_attacks import close_connection, outcome, request_bytes

    bad = request_bytes("/v1/control/stop-run")
    conn = await ctx.connect(0)
    if conn is None:
        return
    protocol, transport = conn
    left = ctx.scaled(10_000)
    try:
        while left > 0 and ctx.left() > 0 and protocol.terminated is None:
            wave = [protocol.send(bad) for _ in range(min(100, left))]
            left -= len(wave)
            ctx.counts["streams sent"] += len(wave)
            for sid in wave:
                await protocol.wait(sid, max(0.1, ctx.left() + 5))
                ctx.outcomes[outcome(protocol.answer(sid))] += 1
                protocol.forget(sid)
        ctx.extra["server streams left open (aioquic, client side view)"] = len(protocol._quic._streams)
    finally:
        await close_connection(protocol, transport)


async def attack_migration(ctx: Ctx) -> None:
    """Issue 23 item 7: from eight other addresses, garbage 1-RTT datagrams carrying a live
    connection's ID and replays of its real datagrams; its owner keeps sending requests."""
    from harness.quic_attacks import bind_udp, close_connection, drain, outcome, request_bytes, short_header

    conn = await ctx.connect(0)
    if conn is None:
        return
    protocol, transport = conn
    capture = protocol.start_capture(keep=32)
    spoofers = [bind_udp(ctx.addr(10 + i)) for i in range(8)]
    owner = NodeKey()  # the connection's owner is a node that registered itself
    sid = protocol.send(register_request(owner))
    await protocol.wait(sid, 5.0)
    node_id = _node_id(protocol.answer(sid))
    ctx.outcomes[f"owner's register-node: {outcome(protocol.answer(sid))}"] += 1
    latencies: list[float] = []
    next_request = 0.0
    rate = 400 * ctx.intensity  # spoofed datagrams per second
    started, sent = time.monotonic(), 0
    try:
        while ctx.left() > 0 and protocol.terminated is None:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                sock = random.choice(spoofers)
                if sent % 2 and capture.sent:
                    sock.sendto(random.choice(capture.sent), ctx.target)
                    ctx.counts["replayed datagrams sent"] += 1
                else:
                    sock.sendto(short_header(protocol.server_cid, 1200), ctx.target)
                    ctx.counts["garbage datagrams with the live ID sent"] += 1
                sent += 1
            for sock in spoofers:
                got = drain(sock)
                ctx.counts["datagrams the server sent to spoofed addresses"] += len(got)
                ctx.counts["bytes the server sent to spoofed addresses"] += sum(map(len, got))
            if time.monotonic() >= next_request:
                next_request = time.monotonic() + 0.5
                t0 = time.perf_counter()
                sid = protocol.send(request_bytes(HEARTBEAT, heartbeat_body(node_id), owner.headers()))
                how = await protocol.wait(sid, 5.0)
                result = outcome(protocol.answer(sid)) if how == "end" else how
                ctx.outcomes[f"owner's request: {result}"] += 1
                latencies.append(time.perf_counter() - t0)
                protocol.forget(sid)
            await asyncio.sleep(0.01)
    finally:
        for sock in spoofers:
            sock.close()
        await close_connection(protocol, transport)
    if protocol.terminated is not None and ctx.left() > 0:
        ctx.notes.append(f"the owner's connection was closed: {protocol.terminated.reason_phrase}")
    if latencies:
        ctx.extra["owner's request p50 / max ms"] = (
            f"{1000 * statistics.median(latencies):.0f} / {1000 * max(latencies):.0f}"
        )


def _node_id(answer: list) -> int:
    from flwr.proto.fleet_pb2 import RegisterNodeFleetResponse

    from flq.transport import frames

    body = b"".join(e.data for e in answer if isinstance(e, frames.BodyChunk))
    try:
        return RegisterNodeFleetResponse.FromString(body).node_id
    except Exception:  # noqa: BLE001  (refused: no node)
        return 0


async def attack_multi(ctx: Ctx) -> None:
    """Issue 23 item 8: a harmless request, then on the same stream a register-node with a fresh
    key (in the same write, or after the first answer). Afterwards each key is registered again on
    a clean stream: if the server had run the second request, that fails (key already in use). The
    client ignores the server's STOP_SENDING, so the second request does reach the server."""
    from harness.quic_attacks import DefiantQuicConnection, close_connection, outcome, request_bytes

    first = request_bytes(HEARTBEAT, heartbeat_body(), _protobuf_headers())  # unsigned: Flower answers 401
    conn = await ctx.connect(0, quic_class=DefiantQuicConnection)  # keeps sending after STOP_SENDING
    if conn is None:
        return
    protocol, transport = conn
    keys: list[NodeKey] = []
    total = ctx.scaled(200, 2)
    try:
        for i in range(total):
            if ctx.left() <= 0 or protocol.terminated is not None:
                break
            key = NodeKey()
            second = register_request(key)
            if i % 2 == 0:  # both in one write
                sid = protocol.send(first + second)
                ctx.counts["second requests sent in the same write"] += 1
                await protocol.wait(sid, 5.0)
                ctx.outcomes[f"same write: {outcome(protocol.answer(sid))}"] += 1
            else:  # the second after the first's answer
                sid = protocol.send(first, end=False)
                await protocol.wait(sid, 5.0)
                ctx.outcomes[f"after the answer, first: {outcome(protocol.answer(sid))}"] += 1
                protocol.send(second, stream_id=sid)
                ctx.counts["second requests sent after the answer"] += 1
            keys.append(key)
            protocol.forget(sid)
        await asyncio.sleep(1.0)
        executed = 0
        for key in keys[:100]:
            sid = protocol.send(register_request(key))
            await protocol.wait(sid, 5.0)
            result = outcome(protocol.answer(sid))
            ctx.outcomes[f"check, registering the key again: {result}"] += 1
            executed += result != "HTTP 200"
            protocol.forget(sid)
        ctx.extra["second requests run by the app (of keys checked)"] = f"{executed} of {min(100, len(keys))}"
        ctx.extra["second requests run"] = executed
    finally:
        await close_connection(protocol, transport)


async def attack_traversal(ctx: Ctx) -> None:
    """Issue 23 item 9: paths that reach for the Control and Runtime routes, 50 streams at a time."""
    from harness.quic_attacks import TRAVERSAL_PATHS, close_connection, outcome, request_bytes

    conn = await ctx.connect(0)
    if conn is None:
        return
    protocol, transport = conn
    headers = _protobuf_headers()
    left, reached = ctx.scaled(2000, len(TRAVERSAL_PATHS)), Counter()
    try:
        while left > 0 and ctx.left() > 0 and protocol.terminated is None:
            wave = {}
            for path in TRAVERSAL_PATHS[: min(left, len(TRAVERSAL_PATHS))]:
                wave[protocol.send(request_bytes(path, b"", headers))] = path
            left -= len(wave)
            for sid, path in wave.items():
                await protocol.wait(sid, 5.0)
                result = outcome(protocol.answer(sid))
                ctx.outcomes[result] += 1
                if result != "PATH_NOT_ALLOWED":
                    reached[f"{path} -> {result}"] += 1
                protocol.forget(sid)
        ctx.extra["requests that got past the path filter"] = sum(reached.values())
        if reached:
            ctx.notes.append("past the filter: " + "; ".join(f"{k} (x{v})" for k, v in reached.most_common()))
    finally:
        await close_connection(protocol, transport)


ATTACK_FUNCS = {
    "junk": attack_junk,
    "handshakes": attack_handshakes,
    "ooo": attack_ooo,
    "lz4": attack_lz4,
    "churn": attack_churn,
    "partial": attack_partial,
    "refused": attack_refused,
    "migration": attack_migration,
    "multi": attack_multi,
    "traversal": attack_traversal,
}


def attack_main(args: argparse.Namespace) -> None:
    ctx = Ctx(args)
    started = time.time()
    error = ""
    try:
        asyncio.run(asyncio.wait_for(ATTACK_FUNCS[args.name](ctx), args.duration + 30))
    except Exception as exc:  # noqa: BLE001  (reported with the result)
        error = f"{type(exc).__name__}: {exc}"
    result = {
        "name": args.name,
        "started_at": started,
        "ended_at": time.time(),
        "counts": dict(ctx.counts),
        "outcomes": dict(ctx.outcomes),
        "extra": ctx.extra,
        "notes": ctx.notes,
        "error": error,
    }
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(f"attack {args.name}: {started:.2f} - {result['ended_at']:.2f}", flush=True)


# ================================================================================================
# The probe (subprocess: `probe`): Flower's Fleet client over QUIC, a node of its own
# ================================================================================================


def probe_main(args: argparse.Namespace) -> None:
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, RegisterNodeFleetRequest
    from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
    from flwr.proto.node_pb2 import Node
    from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    from flq.transport.quic_settings import QuicSettings
    from flq.transport.supernode_quic import QuicClientOptions, make_quic_fleet_client_class

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cls = make_quic_fleet_client_class(QuicClientOptions(QuicSettings()))

    private, public = generate_key_pairs()
    key = public_key_to_bytes(public)

    def client():  # as Flower's SuperNode builds its Fleet client (fleet_http_connection.py)
        interceptors = [
            RuntimeVersionHttpInterceptor(component_name="SuperNode"),
            NodeAuthHttpInterceptor(private, public),
        ]
        return cls.from_server_address(f"{HOST}:{args.port}", False, args.cafile, interceptors)

    main = client()
    node_id = main.RegisterNode(RegisterNodeFleetRequest(public_key=key)).node_id
    main.ActivateNode(ActivateNodeRequest(public_key=key, heartbeat_interval=30))
    beat = SendNodeHeartbeatRequest(node=Node(node_id=node_id), heartbeat_interval=30)
    out = open(args.out, "a", buffering=1)
    next_new = time.monotonic() + args.new_every
    while True:
        fresh = None
        if time.monotonic() >= next_new:
            next_new += args.new_every
            fresh = client()
        at, t0 = time.time(), time.perf_counter()
        try:
            reply = (fresh or main).SendNodeHeartbeat(beat)
            ok, err = bool(reply.success), "" if reply.success else "heartbeat not acknowledged"
        except Exception as exc:  # noqa: BLE001  (a failed legitimate request: recorded)
            ok, err = False, f"{type(exc).__name__}: {exc}"[:300]
        dur = time.perf_counter() - t0
        out.write(json.dumps({"at": at, "dur": dur, "ok": ok, "kind": "new" if fresh else "persistent", "err": err}))
        out.write("\n")
        if fresh is not None:
            fresh._client.close()
        time.sleep(max(0.0, args.interval - dur))


# ================================================================================================
# The orchestrator
# ================================================================================================


def udp_socket_owner(port: int, candidates: list[int]) -> int | None:
    """Which of `candidates` holds the UDP socket bound to `port` (the process that serves QUIC)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    for pid in candidates:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


class Sampler(threading.Thread):
    """VmRSS and CPU seconds of one pid, every `interval` seconds, with wall-clock times."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float, float]] = []  # (time, rss MB, cpu s)
        self.logs: list[LogLines] = []  # polled at every sample, so each line gets a time within `interval`
        self.alive = True
        self._halt = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        if "\nState:\tZ" in status:
            return None
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
        return rss_kb * 1024 / MB, cpu

    def run(self) -> None:
        while not self._halt.is_set():
            value = self.read()
            if value is None:
                self.alive = False
                return
            self.samples.append((time.time(), *value))
            for log in list(self.logs):
                log.poll()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()

    def window(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if start <= s[0] <= end]

    def at(self, when: float) -> tuple[float, float, float] | None:
        """The last sample at or before `when`."""
        before = [s for s in self.samples if s[0] <= when]
        return before[-1] if before else None


class LogLines:
    """Lines a process appended to its log: counted between marks, by kind."""

    KINDS = {
        "refused": "refused:",
        "suppressed": "similar QUIC log lines suppressed",
        "dropped": "dropped:",
        "migration": "connection migration",
        "closed": "QUIC connection from",
        "error": "ERROR",
        "traceback": "Traceback",
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self._lock = threading.Lock()
        self.stamped: list[tuple[float, str]] = []  # (time read, line)

    def poll(self) -> None:
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
        except OSError:
            return
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        now = time.time()
        self.stamped += [(now, line) for line in data[:cut].decode(errors="replace").splitlines()]

    def between(self, start: float, end: float) -> list[str]:
        return [line for t, line in self.stamped if start <= t < end]

    @classmethod
    def kinds(cls, lines: list[str]) -> Counter:
        out = Counter()
        for line in lines:
            for kind, needle in cls.KINDS.items():
                if needle in line:
                    out[kind] += 1
        for line in lines:
            if cls.KINDS["suppressed"] in line:
                try:
                    out["suppressed (sum)"] += int(line.split("...")[1].split()[0])
                except (IndexError, ValueError):
                    pass
        return out


def _pct(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{1000 * statistics.median(values):.0f} / {1000 * _pct(values, 99):.0f}"


@dataclass
class Measured:
    attack: Attack
    result: dict
    start: float
    end: float
    after_s: float
    base_mb: float
    peak_mb: float
    after_mb: float | None
    back_after_s: float | None  # seconds after the attack until RSS was within 10% of the baseline
    cpu_during: float
    cpu_after: float
    log_during: Counter
    log_after: Counter
    lines_during: int
    lines_after: int
    probe_during: list[dict] = field(default_factory=list)
    probe_after: list[dict] = field(default_factory=list)
    rounds_ok: int = 0
    rounds_failed: int = 0
    round_s: list[float] = field(default_factory=list)
    supernode_warnings: int = 0
    alive: bool = True

    @property
    def legit_failed(self) -> int:
        return sum(not r["ok"] for r in self.probe_during + self.probe_after) + self.rounds_failed

    def targets(self) -> dict[str, bool]:
        return {
            "rss": self.peak_mb < self.base_mb + CEILING_MB,
            "legit": self.legit_failed == 0 and bool(self.probe_during) and bool(self.probe_after),
            "back": self.after_mb is not None and self.after_mb <= 1.1 * self.base_mb,
            "alive": self.alive,
        }


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.procs: list[Proc] = []
        self.env = flower_env(
            workdir / "flwr-home", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        self.port = free_port()
        self.sampler: Sampler | None = None
        self.server_log: LogLines | None = None
        self.node_log: LogLines | None = None
        self.probe_file = workdir / "probe.jsonl"
        self.result_file = workdir / "rounds.json"
        self.superlink: Proc | None = None
        self.flags: list[str] = []
        self.server_pid: int | None = None
        self.certs: dict = {}

    def start(self, name: str, cmd: list[str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, cmd, self.env, self.workdir / f"{name}.log", cwd=cwd)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.server_log is not None:  # each line with the time it was read (within 0.2 s of its writing)
            (self.workdir / "superlink-lines-timed.txt").write_text(
                "".join(f"{t:.2f} {line}\n" for t, line in self.server_log.stamped)
            )
        for proc in reversed(self.procs):
            try:
                proc.stop(grace=10.0)
            except Exception as exc:  # noqa: BLE001  (keep stopping the others)
                print(f"stopping {proc.name} (pid {proc.pid}): {exc}", file=sys.stderr)

    def setup(self) -> None:
        from flq.transport.certs import make_certificates

        home = self.workdir / "flwr-home"
        home.mkdir(parents=True)
        self.certs = make_certificates(self.workdir / "certs")
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "{HOST}:{self.port}"\nroot-certificates = "{self.certs["ca_cert"]}"\n'
        )
        cmd = superlink_command(self.certs, HOST, self.port)
        self.flags = [c if not c.startswith("/") else Path(c).name for c in cmd[1:]]
        self.superlink = self.start("superlink", cmd)
        self.superlink.wait_for_line("Fleet QUIC API on", timeout=180.0)
        pid = udp_socket_owner(self.port, [self.superlink.pid, *descendants(self.superlink.pid)])
        if pid is None:
            raise HarnessError(f"no process of flq-superlink (pid {self.superlink.pid}) holds UDP port {self.port}")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if "flq-superlink" not in cmdline:
            raise HarnessError(f"pid {pid} holding the QUIC socket is not flq-superlink: {cmdline}")
        self.server_pid = pid
        self.sampler = Sampler(pid)
        self.sampler.start()
        self.server_log = LogLines(self.superlink.log)
        self.sampler.logs.append(self.server_log)
        if not self.args.no_supernode:
            node = self.start(
                "supernode",
                [
                    str(BIN / "flq-supernode"),
                    "--superlink",
                    f"{HOST}:{self.port}",
                    "--root-certificates",
                    str(self.certs["ca_cert"]),
                    "--port",
                    str(free_port()),
                    "--node-config",
                    'label="legit"',
                ],
            )
            node.wait_for_line("SuperNode ID:", timeout=180.0)
            self.node_log = LogLines(node.log)
            self.sampler.logs.append(self.node_log)
            config = (
                f'sizes-bytes="100000" reps=1000000 min-nodes=1 round-timeout=30.0 result-file="{self.result_file}"'
            )
            self.start("flwr-run", [str(BIN / "flwr"), "run", str(APP), "bench", "--stream", "-c", config], cwd=APP)
            wait_for(lambda: len(self.rounds()) >= 2, "the first Fleet rounds", timeout=300.0, proc=self.superlink)
        probe = self.start(
            "probe",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "probe",
                "--port",
                str(self.port),
                "--cafile",
                str(self.certs["ca_cert"]),
                "--out",
                str(self.probe_file),
            ],
        )
        wait_for(lambda: len(self.probe()) >= 20, "the probe's first requests", timeout=120.0, proc=probe)

    def rounds(self) -> list[dict]:
        try:
            return json.loads(self.result_file.read_text())["rounds"]
        except (OSError, ValueError, KeyError):
            return []

    def probe(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.probe_file.read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            return []

    def poll_logs(self) -> None:
        for log in (self.server_log, self.node_log):
            if log is not None:
                log.poll()

    def sleep(self, seconds: float) -> None:
        """Wait, reading the logs as they grow (so each line gets a time)."""
        end = time.time() + seconds
        while time.time() < end:
            self.poll_logs()
            if self.sampler is not None and not self.sampler.alive:
                return
            time.sleep(min(0.5, max(0.0, end - time.time())))
        self.poll_logs()

    def run_attack(self, attack: Attack, duration: float, after: float) -> Measured:
        before = time.time()
        self.sleep(0.0)
        out = self.workdir / f"attack-{attack.key}.json"
        proc = self.start(
            f"attack-{attack.key}",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "attack",
                attack.key,
                "--port",
                str(self.port),
                "--cafile",
                str(self.certs["ca_cert"]),
                "--duration",
                str(duration),
                "--intensity",
                str(self.args.intensity),
                "--out",
                str(out),
            ],
        )
        deadline = time.time() + duration + 90
        while proc.alive() and time.time() < deadline:
            self.sleep(0.5)
        proc.stop(grace=5.0)
        self.procs.remove(proc)
        try:
            result = json.loads(out.read_text())
        except (OSError, ValueError):
            result = {"started_at": before, "ended_at": time.time(), "error": f"no result; see {proc.log}"}
        start, end = result["started_at"], result["ended_at"]
        self.sleep(max(0.0, end + after - time.time()))
        samples = self.sampler.samples
        base = [s[1] for s in samples if start - 3.0 <= s[0] < start] or [s[1] for s in samples if s[0] < start][-1:]
        base_mb = statistics.median(base) if base else float("nan")
        during = self.sampler.window(start, end + 1.0)
        peak_mb = max((s[1] for s in during), default=float("nan"))
        last = self.sampler.at(end + after)
        alive = self.sampler.alive and self.superlink.alive()
        after_mb = last[1] if last is not None and alive and last[0] >= end + after - 2.0 else None
        back = next((s[0] - end for s in self.sampler.window(end, end + after) if s[1] <= 1.1 * base_mb), None)
        first, at_end, at_after = self.sampler.at(start), self.sampler.at(end), self.sampler.at(end + after)
        cpu_during = at_end[2] - first[2] if first and at_end else float("nan")
        cpu_after = at_after[2] - at_end[2] if at_after and at_end else float("nan")
        lines_during = self.server_log.between(start, end)
        lines_after = self.server_log.between(end, end + after)
        probe = self.probe()
        rounds = [r for r in self.rounds() if start <= r.get("at", 0) < end + LEGIT_AFTER_S]
        node_lines = self.node_log.between(start, end + LEGIT_AFTER_S) if self.node_log else []
        return Measured(
            attack=attack,
            result=result,
            start=start,
            end=end,
            after_s=after,
            base_mb=base_mb,
            peak_mb=peak_mb,
            after_mb=after_mb,
            back_after_s=back,
            cpu_during=cpu_during,
            cpu_after=cpu_after,
            log_during=LogLines.kinds(lines_during),
            log_after=LogLines.kinds(lines_after),
            lines_during=len(lines_during),
            lines_after=len(lines_after),
            probe_during=[r for r in probe if start <= r["at"] < end],
            probe_after=[r for r in probe if end <= r["at"] < end + LEGIT_AFTER_S],
            rounds_ok=sum(bool(r["ok"]) for r in rounds),
            rounds_failed=sum(not r["ok"] for r in rounds),
            round_s=[r["server_seconds"] for r in rounds if r["ok"]],
            supernode_warnings=sum(("WARNING" in line or "ERROR" in line) for line in node_lines),
            alive=alive,
        )


# --- report ------------------------------------------------------------------------------------


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory = f", {mem / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        memory = ""
    return f"{os.cpu_count()} CPUs ({model}){memory}, Linux {platform.release()}"


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _refusals(m: Measured) -> str:
    seen = {k: v for k, v in m.result.get("outcomes", {}).items()}
    parts = [f"{k}: {v}" for k, v in sorted(seen.items(), key=lambda kv: -kv[1])]
    return "; ".join(parts) if parts else "-"


def _logged(c: Counter) -> str:
    keys = [
        k for k in ("refused", "dropped", "migration", "suppressed", "suppressed (sum)", "error", "traceback") if c[k]
    ]
    return ", ".join(f"{k} {c[k]}" for k in keys) or "-"


def _check(m: Measured) -> str:
    """What shows that this attack's own defect is gone (from the attacker's view and the server log)."""
    c, o, x = m.result.get("counts", {}), m.result.get("outcomes", {}), m.result.get("extra", {})
    key = m.attack.key
    if key == "junk":
        return f"{c.get('datagrams the server answered', 0)} of {c.get('datagrams sent', 0)} junk datagrams answered"
    if key == "handshakes":
        return (
            f"{c.get('ClientHellos sent', 0)} ClientHellos: {c.get('answered: Retry', 0)} Retry packets, "
            f"{c.get('answered: handshake datagrams', 0)} handshake datagrams back"
        )
    if key == "migration":
        owner = ", ".join(f"{k.split(': ', 1)[1]} x{v}" for k, v in o.items() if k.startswith("owner's request"))
        return f"{(m.log_during + m.log_after)['migration']} migrations logged; owner's requests: {owner or '-'}"
    if key == "multi":
        return f"second requests run by the app: {x.get('second requests run by the app (of keys checked)', '?')}"
    if key == "traversal":
        return f"{x.get('requests that got past the path filter', '?')} of {sum(o.values())} past the path filter"
    if key == "refused":
        lines = m.lines_during + m.lines_after
        return f"{sum(o.values())} streams refused; {lines} server log lines during and after"
    refused = {k: v for k, v in o.items() if not k.startswith("HTTP")}
    return "refused: " + (", ".join(f"{k} {v}" for k, v in refused.items()) or "none")


def report(
    results: list[Measured], bench: Bench, command: str, started: float, loads: tuple, idle: dict, finished: bool
) -> str:
    import aioquic
    import flwr

    args = bench.args
    lines = [
        "# The QUIC Fleet server under hostile load (issue 23)",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))} "
        f"({'complete' if finished else 'PARTIAL: the run did not finish'}; wall time "
        f"{(time.time() - started) / 60:.1f} min). Machine: {_machine()}; Python {platform.python_version()}, "
        f"flwr {flwr.__version__}, aioquic {aioquic.__version__}. Load average (1/5/15 min) at the start "
        f"{loads[0][0]:.2f}/{loads[0][1]:.2f}/{loads[0][2]:.2f}, at the end "
        f"{loads[1][0]:.2f}/{loads[1][1]:.2f}/{loads[1][2]:.2f} (this machine is shared: the attackers, the "
        "SuperNode, its ClientApp processes and the probe share its CPUs with the server).",
        "",
        f"Server: `flq-superlink {' '.join(bench.flags)}` (the documented flags; every `--quic-*` guard at its "
        f"default: memory budget 256 MiB, 128 half-open, 32 per address, 1024 connections, Retry auto). "
        f"RSS is VmRSS of pid {bench.server_pid}, the flq-superlink process that holds the QUIC UDP socket; CPU "
        f"is its utime + stime. Before the first attack (idle with legitimate traffic): RSS {idle['rss']:.0f} MB, "
        f"CPU {idle['cpu']:.0%} of one core, {idle['lines']:.1f} log lines/s.",
        "",
        "Legitimate traffic: "
        + (
            "one real `flq-supernode` running Fleet rounds of benchmarks/apps/fleet_bench back to back (0.1 MB "
            "adapter down, 0.1 MB up); "
            if not args.no_supernode
            else "(no SuperNode: `--no-supernode`, a debugging run); "
        )
        + "the **probe**, Flower's Fleet client over QUIC (what `flq-supernode` uses) for a registered and "
        "activated node of its own, sends `SendNodeHeartbeat` every 100 ms on one connection and every 2 s one on "
        "a new connection (full handshake): its latencies are the per-request figures below (timed around each "
        "call; a request fails if it raises, the heartbeat timeout being 5 s). Attackers send from 127.0.N.x, "
        "the legitimate side from 127.0.0.1.",
        "",
        f"Each attack runs for at most its duration (and count, below), then {args.after:g} s pass before the "
        f"next; 'during' is the attack, 'after' the next {LEGIT_AFTER_S:g} s (latency) or {args.after:g} s "
        "(RSS, CPU, log lines). Baseline = median RSS over the 3 s before the attack.",
        "",
        "## Targets",
        "",
        f"RSS below baseline + {CEILING_MB} MB; legitimate requests (probe and SuperNode rounds) all succeed "
        f"during the attack and within {LEGIT_AFTER_S:g} s after; RSS back within 10% of baseline "
        f"{args.after:g} s after; no crash.",
        "",
        f"| # | attack | RSS < base + {CEILING_MB} MB | legitimate requests succeed | RSS within 10% "
        f"after {args.after:g} s | no crash | the attack's own check |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in results:
        t = m.targets()
        lines.append(
            f"| {m.attack.issue} | {m.attack.key} | {_mark(t['rss'])} | {_mark(t['legit'])} | {_mark(t['back'])} "
            f"| {_mark(t['alive'])} | {_check(m)} |"
        )
    met = sum(all(m.targets().values()) for m in results)
    lines += ["", f"All four targets met under {met} of {len(results)} attacks."]
    if results and bench.sampler is not None and bench.sampler.samples:
        first, last = results[0].base_mb, bench.sampler.samples[-1][1]
        lines.append(
            f"RSS before the first attack {first:.0f} MB, after the last one's {args.after:g} s {last:.0f} MB "
            f"({100 * (last / first - 1):+.0f}%)."
        )
    lines.append("")
    lines += [
        "## Server resources",
        "",
        f"| # | attack | s | RSS base MB | peak MB (+) | after {args.after:g} s MB (vs base) | within 10% after "
        "| CPU s during | CPU s after | log lines during / after | of which (during) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        after = f"{m.after_mb:.0f} ({100 * (m.after_mb / m.base_mb - 1):+.0f}%)" if m.after_mb is not None else "-"
        back = f"{m.back_after_s:.1f} s" if m.back_after_s is not None else "no"
        lines.append(
            f"| {m.attack.issue} | {m.attack.key} | {m.end - m.start:.0f} | {m.base_mb:.0f} | "
            f"{m.peak_mb:.0f} (+{m.peak_mb - m.base_mb:.0f}) | {after} | {back} | {m.cpu_during:.1f} | "
            f"{m.cpu_after:.1f} | {m.lines_during} / {m.lines_after} | {_logged(m.log_during)} |"
        )
    lines += [
        "",
        "## Legitimate traffic",
        "",
        f"| # | attack | probe requests during (failed) | p50 / p99 ms during | after {LEGIT_AFTER_S:g} s (failed) "
        f"| p50 / p99 ms after | new-connection p50 / max ms | SuperNode rounds ok / failed | round s p50 "
        "| SuperNode warnings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        during = [r["dur"] for r in m.probe_during if r["ok"]]
        after = [r["dur"] for r in m.probe_after if r["ok"]]
        new = [r["dur"] for r in m.probe_during + m.probe_after if r["kind"] == "new" and r["ok"]]
        failed_during = sum(not r["ok"] for r in m.probe_during)
        failed_after = sum(not r["ok"] for r in m.probe_after)
        new_txt = f"{1000 * statistics.median(new):.0f} / {1000 * max(new):.0f}" if new else "-"
        rounds = f"{m.rounds_ok} / {m.rounds_failed}" if not args.no_supernode else "-"
        round_s = f"{statistics.median(m.round_s):.2f}" if m.round_s else "-"
        lines.append(
            f"| {m.attack.issue} | {m.attack.key} | {len(m.probe_during)} ({failed_during}) | {_ms(during)} | "
            f"{len(m.probe_after)} ({failed_after}) | {_ms(after)} | {new_txt} | {rounds} | {round_s} | "
            f"{m.supernode_warnings} |"
        )
    errors = Counter(
        (m.attack.key, " ".join(r["err"].split()))
        for m in results
        for r in m.probe_during + m.probe_after
        if not r["ok"] and r["err"]
    )
    if errors:
        lines += ["", "Failed probe requests: " + "; ".join(f"{k}: {n} x {e}" for (k, e), n in errors.most_common(10))]
    lines += ["", "## What each attack sent and what it got back", ""]
    for m in results:
        r = m.result
        doc = " ".join((ATTACK_FUNCS[m.attack.key].__doc__ or "").split())
        lines.append(f"- **{m.attack.issue}. {m.attack.key}**: {m.attack.title}. {doc}")
        lines.append(f"  - sent / seen: {', '.join(f'{k} {v}' for k, v in r.get('counts', {}).items()) or '-'}")
        lines.append(f"  - the server's answers to attack streams: {_refusals(m)}")
        if r.get("extra"):
            lines.append(f"  - {', '.join(f'{k}: {v}' for k, v in r['extra'].items())}")
        for note in r.get("notes", []):
            lines.append(f"  - note: {note}")
        if r.get("error"):
            lines.append(f"  - attacker error: {r['error']}")
        log_all = m.log_during + m.log_after
        lines.append(f"  - server log: {m.lines_during} lines during, {m.lines_after} after ({_logged(log_all)})")
    lines += [
        "",
        "Attack parameters are in benchmarks/quic_hostile_load.py (`attack_*`), the crafting helpers in "
        f"harness/quic_attacks.py; intensity {args.intensity:g} (1 = the counts and rates above). Processes' logs: "
        f"{bench.workdir.relative_to(ROOT) if bench.workdir.is_relative_to(ROOT) else bench.workdir}.",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, command: str) -> Path:
    keys = [k.strip() for k in args.attacks.split(",") if k.strip()] if args.attacks else [a.key for a in ATTACKS]
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        sys.exit(f"unknown attacks {unknown}; known: {', '.join(BY_KEY)}")
    out = Path(args.out) if args.out else RESULTS / ("tmp" if args.quick else "") / "quic_hostile_load.md"
    workdir = RESULTS / "tmp" / ("quic-hostile-quick" if args.quick else "quic-hostile")
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started, load0 = time.time(), os.getloadavg()
    bench = Bench(args, workdir)
    results: list[Measured] = []
    finished = False

    def write() -> None:
        try:
            text = report(results, bench, command, started, (load0, os.getloadavg()), idle, finished)
        except Exception as exc:  # noqa: BLE001  (a report bug must not hide the run's own error)
            print(f"could not write the report: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)

    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    idle = {"rss": float("nan"), "cpu": float("nan"), "lines": float("nan")}
    try:
        bench.setup()
        print(f"flq-superlink pid {bench.server_pid} on port {bench.port}; settling", flush=True)
        bench.poll_logs()
        t0 = time.time()
        bench.sleep(args.settle)
        s0, s1 = bench.sampler.at(t0), bench.sampler.at(time.time())
        idle = {
            "rss": s1[1],
            "cpu": (s1[2] - s0[2]) / max(1e-9, s1[0] - s0[0]),
            "lines": len(bench.server_log.between(t0, time.time())) / max(1e-9, time.time() - t0),
        }
        for key in keys:
            attack = BY_KEY[key]
            duration = args.duration if args.duration is not None else (3.0 if args.quick else attack.duration)
            print(f"== {attack.issue}. {key}: {attack.title} ({duration:g} s, then {args.after:g} s)", flush=True)
            measured = bench.run_attack(attack, duration, args.after)
            results.append(measured)
            t = measured.targets()
            print(
                f"   RSS {measured.base_mb:.0f} -> peak {measured.peak_mb:.0f} -> {measured.after_mb or float('nan'):.0f} MB,"
                f" CPU {measured.cpu_during:.1f} s, probe {len(measured.probe_during)} during "
                f"({sum(not r['ok'] for r in measured.probe_during)} failed), targets "
                + ", ".join(f"{k} {'ok' if v else 'NOT MET'}" for k, v in t.items()),
                flush=True,
            )
            write()
            if not measured.alive:
                print("flq-superlink is gone: stopping here", flush=True)
                break
        finished = True
    except KeyboardInterrupt:
        print("interrupted: stopping every process", flush=True)
    finally:
        bench.stop_all()
        write()
    if out.exists():
        print(out.read_text())
        print(f"written to {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    attack = sub.add_parser("attack", help="(internal) run one attack against a server")
    attack.add_argument("name", choices=list(ATTACK_FUNCS))
    probe = sub.add_parser("probe", help="(internal) the legitimate probe")
    for p in (attack, probe):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--cafile", required=True)
        p.add_argument("--out", required=True)
    attack.add_argument("--duration", type=float, required=True)
    attack.add_argument("--intensity", type=float, default=1.0)
    probe.add_argument("--interval", type=float, default=0.1)
    probe.add_argument("--new-every", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="3 s attacks, 10 s after each, results/tmp/")
    parser.add_argument("--attacks", default=None, help="comma list of " + ", ".join(BY_KEY) + " (default: all)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per attack (default: each attack's)")
    parser.add_argument("--after", type=float, default=None, help="seconds after each attack (default 60; quick 10)")
    parser.add_argument("--settle", type=float, default=None, help="quiet seconds before the first attack (10)")
    parser.add_argument("--intensity", type=float, default=1.0, help="scales every attack's rates and counts")
    parser.add_argument("--no-supernode", action="store_true", help="debugging: only the probe as legitimate traffic")
    parser.add_argument("--out", default=None, help="markdown output (default results/quic_hostile_load.md)")
    args = parser.parse_args()
    if args.command == "attack":
        attack_main(args)
    elif args.command == "probe":
        probe_main(args)
    else:
        if args.after is None:
            args.after = 10.0 if args.quick else 60.0
        if args.settle is None:
            args.settle = 5.0 if args.quick else 10.0
        here = Path.cwd()
        python = os.path.relpath(sys.executable, here) if Path(sys.executable).is_relative_to(here) else sys.executable
        command = shlex.join([python, os.path.relpath(Path(sys.argv[0]).resolve(), here), *sys.argv[1:]])
        run(args, command)


if __name__ == "__main__":
    main()
