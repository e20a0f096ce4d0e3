"""The Fleet protocol on one QUIC connection, sans I/O (as aioquic's H3Connection).

`FleetConnection.handle_event` takes aioquic's events and returns Fleet events: a complete
request to run (`RequestReceived`), a stream refused (`StreamRefused`, its ERROR frame already
queued on the QUIC connection), a running request the peer gave up (`RequestCancelled`), and
so on; `after_datagrams` reports what is learnt once a batch of datagrams was processed (a
validated migration, streams starved of memory). The asyncio layer runs the requests and
calls `send_head` / `send_body` / `request_finished`; it does no Fleet policy itself.

Policy, all here: one request per stream (anything after a request's END refuses the stream,
and once answered the stream's input is discarded); an exact allowlist of POST paths, with
dot segments, percent-encoding, empty segments and query strings refused, never normalised;
every byte held (partial frames, LZ4 output at its declared size before inflating, bodies
until the app is done) charged to the connection's `Account`; early (0-RTT) requests whose
replay could do harm held until the handshake completes; the peer's address taken only from
a path aioquic has validated. A refused or finished stream leaves nothing behind here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aioquic.quic import events

from . import frames
from .bounded_quic import REFUSED_STREAM_ERROR as QUIC_APP_ERROR
from .bounded_quic import BoundedQuicConnection
from .flower_pins import FLEET_PATHS
from .memory_budget import SMALL_REQUEST, Account

# Fleet RPCs run at once even when they arrive as 0-RTT data, because executing a replayed
# copy harms nothing: reads, idempotent writes (push-object is content-addressed, activate
# and confirm are idempotent), and pull-messages, whose replay can at worst hide a message
# from its node, which an on-path attacker able to replay can do anyway by dropping packets.
# Everything else (push-messages, register/unregister/deactivate-node) waits for the handshake.
FLEET_EARLY_SAFE_PATHS = frozenset(
    {
        "/v1/fleet/send-node-heartbeat",
        "/v1/fleet/get-run",
        "/v1/fleet/get-fab",
        "/v1/fleet/pull-object",
        "/v1/fleet/push-object",
        "/v1/fleet/pull-messages",
        "/v1/fleet/confirm-message-received",
        "/v1/fleet/activate-node",
    }
)

BUDGET_SPENT = "the server's memory budget is spent; retry later"
Address = tuple  # as aioquic gives it: (host, port) or (host, port, flowinfo, scope_id)


@dataclass(frozen=True)
class FleetPolicy:
    allowed_paths: frozenset[str] = FLEET_PATHS
    early_safe_paths: frozenset[str] = FLEET_EARLY_SAFE_PATHS
    limits: frames.Limits = field(default_factory=frames.Limits)


# --- Fleet events -------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestReceived:
    stream_id: int
    method: str
    path: str
    headers: frames.Headers
    body: bytes
    early: bool  # arrived as 0-RTT data


@dataclass(frozen=True)
class RequestCancelled:
    """The app runs this stream's request, but the peer went away or broke the stream."""

    stream_id: int


@dataclass(frozen=True)
class StreamRefused:
    stream_id: int
    code: frames.ErrorCode
    message: str


@dataclass(frozen=True)
class HandshakeDone:
    resumed: bool
    early_data_accepted: bool


@dataclass(frozen=True)
class PeerMigrated:
    old: Address
    new: Address


@dataclass(frozen=True)
class ConnectionClosed:
    reason: str


FleetEvent = RequestReceived | RequestCancelled | StreamRefused | HandshakeDone | PeerMigrated | ConnectionClosed


# --- paths ----------------------------------------------------------------------------------


def check_path(path: str, allowed: frozenset[str]) -> None:
    """Accept exactly an allowed path; say why anything else is refused."""
    if path in allowed:
        return
    segments = path.split("/")[1:]
    if "?" in path or "#" in path:
        why = "query strings are not part of a Fleet path"
    elif "%" in path:
        why = "percent-encoded paths are refused"
    elif any(s in (".", "..") for s in segments):
        why = "dot segments are refused"
    elif "" in segments[:-1] or "\\" in path:
        why = "empty segments and backslashes are refused"
    else:
        why = "only the Fleet API's own RPCs are"
    raise frames.FrameError(frames.ErrorCode.PATH_NOT_ALLOWED, f"path {path[:200]} is not served over QUIC ({why})")


# --- the connection -----------------------------------------------------------------------


class _Stream:
    __slots__ = (
        "decoder",
        "head",
        "body",
        "body_held",
        "charged",
        "complete",
        "running",
        "responded",
        "early",
        "request",
        "__weakref__",
    )

    def __init__(self, limits: frames.Limits, early: bool) -> None:
        self.decoder = frames.StreamDecoder("request", limits)
        self.head: frames.RequestHead | None = None
        self.body = bytearray()
        self.body_held = 0  # size of the complete body handed over (or waiting), charged until released
        self.charged = 0  # bytes this stream has charged to the account
        self.complete = False  # END received: anything more on this stream is refused
        self.running = False  # handed to the app
        self.responded = False  # the response's END (or an ERROR) was sent
        self.early = early
        self.request: RequestReceived | None = None  # complete, waiting for the handshake


class FleetConnection:
    def __init__(self, quic: BoundedQuicConnection, policy: FleetPolicy, account: Account) -> None:
        self._quic = quic
        self._policy = policy
        self._account = account
        self._streams: dict[int, _Stream] = {}
        self._waiting: list[int] = []  # early requests held until the handshake completes
        self._handshake_done = False
        self._opened_from: Address | None = None
        self._validated: Address | None = None
        self.closed = False

    @property
    def peer_address(self) -> Address | None:
        """The last validated address of the peer (before any: the one it connected from)."""
        return self._validated or self._opened_from

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # --- input -------------------------------------------------------------------------

    def handle_event(self, event: events.QuicEvent) -> list[FleetEvent]:
        if self.closed:
            return []
        if isinstance(event, events.StreamDataReceived):
            return self._on_data(event)
        if isinstance(event, (events.StreamReset, events.StopSendingReceived)):
            return self._on_abort(event.stream_id)
        if isinstance(event, events.HandshakeCompleted):
            return self._on_handshake(event)
        if isinstance(event, events.ConnectionTerminated):
            out: list[FleetEvent] = [RequestCancelled(sid) for sid, s in self._streams.items() if s.running]
            out.append(ConnectionClosed(event.reason_phrase or "idle or peer closed"))
            self.release()
            return out
        return []

    def after_datagrams(self) -> list[FleetEvent]:
        """What a processed batch of datagrams changed: memory-starved streams, a validated new path."""
        if self.closed:
            return []
        out: list[FleetEvent] = []
        for stream_id in self._quic.take_starved():
            out += self._refuse(stream_id, frames.ErrorCode.UNAVAILABLE, BUDGET_SPENT)
        paths = self._quic._network_paths  # aioquic 1.7: the active path first
        if paths:
            if self._opened_from is None:
                self._opened_from = paths[0].addr
            if paths[0].is_validated and paths[0].addr != self._validated:
                old, self._validated = self._validated, paths[0].addr
                if old is not None:
                    out.append(PeerMigrated(old, paths[0].addr))
        return out

    def _on_data(self, event: events.StreamDataReceived) -> list[FleetEvent]:
        stream_id = event.stream_id
        if stream_id % 4 != 0:  # only client-initiated bidirectional streams carry requests
            if stream_id % 4 == 2:
                self._quic.discard_input(stream_id, stop_code=QUIC_APP_ERROR)
            return []
        stream = self._streams.get(stream_id)
        if stream is None:
            if not self._quic.accepts_input(stream_id):
                return []  # refused or answered already: its input is dropped
            stream = self._streams[stream_id] = _Stream(self._policy.limits, early=not self._handshake_done)
        try:
            if stream.complete:
                if event.data:
                    raise frames.FrameError(
                        frames.ErrorCode.UNEXPECTED_FRAME, "data after the end of the request (one request per stream)"
                    )
                return []
            self._charge(stream, len(event.data))
            out: list[FleetEvent] = []
            for item in stream.decoder.feed(event.data, reserve=lambda n: self._charge(stream, n)):
                out += self._on_frame(stream_id, stream, item)
            if stream_id not in self._streams:  # the client gave up on it (an ERROR frame)
                return out
            if event.end_stream:
                stream.decoder.end_of_stream()
            self._settle(stream)
            return out
        except frames.FrameError as exc:
            return self._refuse(stream_id, exc.code, exc.message)

    def _on_frame(self, stream_id: int, stream: _Stream, item: frames.Event) -> list[FleetEvent]:
        if isinstance(item, frames.RequestHead):
            if item.method != "POST":
                raise frames.FrameError(frames.ErrorCode.METHOD_NOT_ALLOWED, f"method {item.method} not allowed")
            check_path(item.path, self._policy.allowed_paths)
            stream.head = item
        elif isinstance(item, frames.BodyChunk):
            stream.body += item.data
        elif isinstance(item, frames.MessageEnd):
            head = stream.head
            assert head is not None  # the decoder puts a head first
            body, stream.body = bytes(stream.body), bytearray()
            stream.body_held = len(body)
            stream.complete = True
            request = RequestReceived(stream_id, head.method, head.path, head.headers, body, stream.early)
            if self._handshake_done or head.path in self._policy.early_safe_paths:
                stream.running = True
                return [request]
            stream.request = request  # possibly a replay: runs only once the handshake completes
            self._waiting.append(stream_id)
        elif isinstance(item, frames.PeerError):  # the client gave up on this request
            self._forget(stream_id, reset=True)
        return []

    def _on_abort(self, stream_id: int) -> list[FleetEvent]:
        stream = self._streams.get(stream_id)
        if stream is None:
            return []
        running = stream.running
        self._forget(stream_id, reset=True)
        return [RequestCancelled(stream_id)] if running else []

    def _on_handshake(self, event: events.HandshakeCompleted) -> list[FleetEvent]:
        self._handshake_done = True
        out: list[FleetEvent] = [HandshakeDone(event.session_resumed, event.early_data_accepted)]
        for stream_id in self._waiting:
            stream = self._streams.get(stream_id)
            if stream is not None and stream.request is not None:
                stream.running = True
                out.append(stream.request)
                stream.request = None
        self._waiting.clear()
        return out

    # --- output ------------------------------------------------------------------------

    def send_head(self, stream_id: int, status: int, headers: list[tuple[str, str]]) -> bool:
        limits = self._policy.limits
        # HTTP/1-only hop headers mean nothing on a QUIC stream.
        kept = [(k.lower(), v) for k, v in headers if k.lower() not in ("connection", "transfer-encoding")]
        return self._send(stream_id, frames.encode_response_head(status, kept[: limits.max_headers], limits))

    def send_body(self, stream_id: int, data: bytes, more: bool) -> bool:
        chunk_size = min(frames.DEFAULT_CHUNK_SIZE, self._policy.limits.max_frame_payload)
        out = frames.encode_body(data, chunk_size=chunk_size)
        if not more:
            out.append(frames.encode_end())
        return self._send(stream_id, b"".join(out), end=not more)

    def request_finished(self, stream_id: int) -> None:
        """The app is done with this request: its body is released and the stream forgotten."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream.running:
            self._forget(stream_id, reset=not stream.responded, stop=True)  # STOP_SENDING if still open

    def release(self) -> None:
        """Drop all state and give all memory back (the connection is closed or discarded)."""
        self.closed = True
        self._streams.clear()
        self._waiting.clear()
        self._account.close()
        self._quic.release()

    def _send(self, stream_id: int, data: bytes, end: bool = False) -> bool:
        stream = self._streams.get(stream_id)
        if stream is None or not stream.running or stream.responded:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end)
        except Exception:  # the peer reset or stopped the stream meanwhile
            return False
        stream.responded = end
        return True

    # --- refusing and forgetting ---------------------------------------------------------

    def _refuse(self, stream_id: int, code: frames.ErrorCode, message: str) -> list[FleetEvent]:
        stream = self._streams.get(stream_id)
        out: list[FleetEvent] = [StreamRefused(stream_id, code, message)]
        if stream is not None and stream.running:
            out.append(RequestCancelled(stream_id))
        if stream is None or not stream.responded:
            try:
                self._quic.send_stream_data(stream_id, frames.encode_error(code, message), end_stream=True)
            except Exception:  # our side of the stream is already gone
                pass
        self._forget(stream_id, reset=False, stop=True)
        return out

    def _forget(self, stream_id: int, *, reset: bool, stop: bool = False) -> None:
        """Nothing of this stream stays here; aioquic drops its further input, and, with
        `reset`, our sending side ends too, so aioquic can discard the stream."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._account.release(stream.charged)
            stream.charged = 0
            stream.request = None
            stream.body = bytearray()  # freed now, whoever still holds the stream object
            stream.decoder.discard()
        self._quic.discard_input(stream_id, stop_code=QUIC_APP_ERROR if stop or reset else None)
        if reset:
            try:
                self._quic.reset_stream(stream_id, QUIC_APP_ERROR)
            except Exception:  # already finished or gone
                pass

    # --- memory ---------------------------------------------------------------------------

    def _charge(self, stream: _Stream, n: int) -> None:
        why = self._account.try_charge(n, small=stream.charged + n <= SMALL_REQUEST)
        if why == "connection":
            raise frames.FrameError(
                frames.ErrorCode.BODY_TOO_LARGE, "too many request bytes buffered on this connection"
            )
        if why == "server":
            raise frames.FrameError(frames.ErrorCode.UNAVAILABLE, BUDGET_SPENT)
        stream.charged += n

    def _settle(self, stream: _Stream) -> None:
        """Charge exactly what the stream holds now: its partial frame and its body (the
        complete body stays charged while it waits for the handshake or the app holds it)."""
        held = stream.decoder.buffered + len(stream.body) + stream.body_held
        if held < stream.charged:
            self._account.release(stream.charged - held)
            stream.charged = held
