"""aioquic's QuicConnection, with what a peer can make it buffer bounded (server side).

aioquic 1.7 doubles a receive window each time the peer has used half of it (MAX_DATA went
32 -> 256 MiB under test) and zero-fills the gap below out-of-order STREAM data, so one byte
sent at a high offset allocates everything under it, in no limit FLQ could see. Here:

- windows are fixed: a connection's credit never runs more than `max_data` past the bytes it
  has consumed, a stream's never more than `max_stream_data` past its delivered offset;
- out-of-order data (the reassembly buffers, gaps included) is checked before aioquic
  allocates it: past `max_reassembly` on one connection (default: 1/8 of the stream window) it
  is a connection error, and while the server's MemoryBudget cannot hold it the stream's input
  is dropped and the stream is reported `starved` (the Fleet layer refuses it); what is held
  is charged to the budget (never to its reserve for small requests);
- a stream holds at most MAX_FRAGMENTS out-of-order fragments (each costs a Python object);
- `discard_input` stops buffering a stream whose request was refused or answered;
- `release` frees what a closed connection holds: aioquic keeps itself in reference
  cycles (bound frame handlers), so without it the buffers wait for the cycle collector.
"""

from __future__ import annotations

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    QuicConnection,
    QuicConnectionError,
    QuicReceiveContext,
)
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream, QuicStreamReceiver

from .memory_budget import MemoryBudget

# Out-of-order bytes (gaps included) one connection may make the server hold: 1/8 of the stream
# window, 2 MiB with the default 16 MiB. A Fleet client sends in order, so a gap is only what
# was in flight past a lost or reordered packet: at most one congestion window, and 2 MiB is a
# full flight on a 170 Mbit/s x 100 ms path (jitter reorders a few hundred KB at most). The
# window itself is sized for bulk throughput, not for this; at 16 MiB one byte per connection
# let 16 connections from one address spend a 256 MiB budget.
REASSEMBLY_FRACTION = 8
MAX_FRAGMENTS = 1024  # out-of-order ranges on one stream; loss on a real path leaves far fewer
REFUSED_STREAM_ERROR = 0x100  # application error code for STOP_SENDING / RESET_STREAM on a refused stream


class _DiscardingReceiver(QuicStreamReceiver):
    """A receive side that still counts data for flow control but keeps none of it (set by
    `discard_input`; aioquic's own checks run, then `is_finished` makes it drop the bytes)."""


class BoundedQuicConnection(QuicConnection):
    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        budget: MemoryBudget | None = None,
        max_reassembly: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(configuration=configuration, **kwargs)
        self._window = configuration.max_data
        self._stream_window = configuration.max_stream_data
        if max_reassembly is None:
            max_reassembly = configuration.max_stream_data // REASSEMBLY_FRACTION
        self._max_reassembly = max_reassembly
        self._budget = budget
        self._reassembly = 0  # bytes in reassembly buffers, all streams; charged to the budget
        self._fragmented: set[QuicStream] = set()  # streams whose reassembly buffer is not empty
        self._starved: list[int] = []  # streams whose input was dropped for want of memory

    # --- what the Fleet layer asks -----------------------------------------------------

    @property
    def reassembly_bytes(self) -> int:
        return self._reassembly

    def accepts_input(self, stream_id: int) -> bool:
        """Whether data from this stream is still delivered (not discarded, not gone)."""
        stream = self._streams.get(stream_id)
        return stream is not None and not isinstance(stream.receiver, _DiscardingReceiver)

    def discard_input(self, stream_id: int, stop_code: int | None = None) -> None:
        """Keep no more of this stream's data (and, with `stop_code`, ask the peer to stop
        sending it: STOP_SENDING); aioquic forgets the stream once our side ends too."""
        stream = self._streams.get(stream_id)
        if stream is None or isinstance(stream.receiver, _DiscardingReceiver):
            return
        if stop_code is not None and not stream.receiver.is_finished:
            stream.receiver.stop(stop_code)
        self._drop_buffer(stream)
        stream.receiver.__class__ = _DiscardingReceiver
        stream.receiver.is_finished = True

    def take_starved(self) -> list[int]:
        starved, self._starved = self._starved, []
        return starved

    def release(self) -> None:
        """Drop everything a closed connection still holds and give its memory back."""
        for stream in list(self._fragmented):
            self._drop_buffer(stream)
        self._streams.clear()
        self._streams_queue.clear()
        self._streams_blocked_bidi.clear()
        self._streams_blocked_uni.clear()
        self._events.clear()
        self._starved.clear()

    # --- receiving ---------------------------------------------------------------------

    def _handle_stream_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        start = buf.tell()
        stream_id = buf.pull_uint_var()
        offset = buf.pull_uint_var() if frame_type & 4 else 0
        length = buf.pull_uint_var() if frame_type & 2 else buf.capacity - buf.tell()
        buf.seek(start)
        self._assert_stream_can_receive(frame_type, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None and not self._stream_is_discarded(stream_id):
            stream = self._get_or_create_stream(frame_type, stream_id)  # aioquic's checks, then ours
        if stream is None or offset + length > stream.max_stream_data_local:
            super()._handle_stream_frame(context, frame_type, buf)  # ignored, or aioquic's flow-control error
            return
        before = len(stream.receiver._buffer)
        growth = self._reassembly_growth(stream.receiver, offset, length)
        if growth:
            if self._reassembly + growth > self._max_reassembly:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.FLOW_CONTROL_ERROR,
                    frame_type=frame_type,
                    reason_phrase=f"more than {self._max_reassembly} bytes of out-of-order stream data",
                )
            if self._budget is not None and not self._budget.try_charge(growth):
                # memory is short: this stream is refused (by the Fleet layer), not buffered
                self.discard_input(stream_id, stop_code=REFUSED_STREAM_ERROR)
                self._starved.append(stream_id)
                before, growth = 0, 0
        try:
            super()._handle_stream_frame(context, frame_type, buf)
        finally:  # charge what the buffer really holds now, whether aioquic took the frame or not
            self._settle(stream, before, growth)
        if len(stream.receiver._ranges) > MAX_FRAGMENTS:
            raise QuicConnectionError(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=frame_type,
                reason_phrase=f"more than {MAX_FRAGMENTS} out-of-order fragments on stream {stream_id}",
            )

    def _handle_reset_stream_frame(self, context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
        start = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(start)
        super()._handle_reset_stream_frame(context, frame_type, buf)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._drop_buffer(stream)  # aioquic keeps a reset stream's buffer until the stream goes

    @staticmethod
    def _reassembly_growth(receiver: QuicStreamReceiver, offset: int, length: int) -> int:
        """How much this frame would grow the stream's reassembly buffer (0 for in-order data)."""
        if receiver.is_finished:
            return 0
        held = len(receiver._buffer)
        if not held and offset <= receiver.starting_offset():
            return 0  # aioquic's fast path delivers it without buffering
        return max(0, offset + length - receiver.starting_offset() - held)

    def _settle(self, stream: QuicStream, before: int, charged: int) -> None:
        after = len(stream.receiver._buffer)
        if after:
            self._fragmented.add(stream)
        else:
            self._fragmented.discard(stream)
        self._reassembly += after - before
        if self._budget is not None:
            grown = after - before
            if grown > charged:
                self._budget.charge(grown - charged)
            elif grown < charged:
                self._budget.release(charged - grown)

    def _drop_buffer(self, stream: QuicStream) -> None:
        receiver = stream.receiver
        held = len(receiver._buffer)
        receiver._buffer = bytearray()
        receiver._ranges = RangeSet()
        self._fragmented.discard(stream)
        self._reassembly -= held
        if self._budget is not None and held:
            self._budget.release(held)

    # --- granting credit: fixed windows --------------------------------------------------

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        limit = self._local_max_data
        consumed = limit.used - self._reassembly
        if limit.value - consumed < self._window // 2:  # the peer has used half its credit
            limit.value = consumed + self._window
        used, limit.used = limit.used, 0  # aioquic doubles `value` when used > value / 2: not here
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream) -> None:
        receiver = stream.receiver
        if not stream.max_stream_data_local or receiver.is_finished:
            return
        delivered = receiver.starting_offset()
        if stream.max_stream_data_local - delivered < self._stream_window // 2:
            stream.max_stream_data_local = delivered + self._stream_window
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            frame = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            frame.push_uint_var(stream.stream_id)
            frame.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
