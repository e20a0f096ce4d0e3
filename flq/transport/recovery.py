"""Loss detection that learns the path's reordering, and undoes what a spurious loss cost.

RFC 9002 declares a packet lost when a packet sent 3 later (``kPacketThreshold``) is
acknowledged, or when it is 9/8 RTT old (``kTimeThreshold``) and a later one is acknowledged.
On a path that reorders (radio links, jitter, multipath) both fire for packets that are only
late: aioquic then retransmits them and the congestion controller shrinks its window, again and
again; on a jittery link QUIC moved an adapter many times slower than TCP
(benchmarks/results/transport_links.md). TCP survives reordering because Linux's RACK-TLP
(RFC 8985) learns it, and mature QUIC stacks do the same (quiche raises its packet threshold to
the reordering it saw and its time threshold to 5/4; msquic and picoquic adapt theirs). FLQ does:

* a packet declared lost and then acknowledged was not lost (a spurious loss): the reordering
  it shows sets the thresholds, the packet threshold to its distance + 1 (no cap: the time
  threshold still bounds how long a real loss waits) and a reordering window to how much later
  than the RTT it was acknowledged, plus 1/8 (RFC 8985's reo_wnd); a packet is then lost by time
  once it is older than the RTT plus that window (and never sooner than RFC 9002's 9/8 RTT). The
  window is in seconds, not in RTTs, and capped at ``MAX_REORDER_WINDOW_S``: under reordering
  aioquic samples the RTT from the largest packet acknowledged, which is the one that overtook
  the others, so the RTT it estimates is biased low exactly where the window matters (RFC 8985
  caps its window at one RTT; a cap in RTTs learned nothing on links whose jitter is as large
  as their RTT);
* if every packet of a congestion event turns out to have been delivered, the window and slow
  start threshold go back to what they were before it (TCP's undo, RFC 3522/RFC 8985 7.4);
* declared-lost packets are remembered for ``MEMORY_S`` (at most ``MAX_REMEMBERED`` per packet
  space): an acknowledgement later than that is not a reordering worth adapting to, and the
  memory stays bounded.

The thresholds never come down on a connection (RACK decays its window after 16 recoveries;
FLQ's connections are short or idle between rounds, and a new connection starts from RFC 9002's).

Installed per connection by ``tolerate_reordering(quic)``; it replaces the class of aioquic's
``QuicConnection._loss`` (pinned: aioquic 1.7, tests/test_recovery.py checks the pin).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import K_PACKET_THRESHOLD, K_TIME_THRESHOLD, QuicPacketRecovery, QuicPacketSpace

MAX_REORDER_WINDOW_S = 0.5  # the most a packet may be later than the RTT and still count as reordered
WINDOW_MARGIN = 1 / 8  # added above the lateness a spurious loss really had
MEMORY_S = 1.0  # declared-lost packets acknowledged later than this were lost
MAX_REMEMBERED = 4096  # declared-lost packets remembered per packet space


@dataclass(frozen=True)
class DeclaredLoss:
    sent_time: float
    largest_acked: int  # the largest acknowledged packet number when it was declared lost
    declared_at: float
    rtt: float  # the RTT its time threshold was a multiple of


@dataclass
class UndoPoint:
    """The window before a congestion event, and its lost packets not yet known to be delivered."""

    congestion_window: int
    ssthresh: int | None
    pending: set[int] = field(default_factory=set)


class ReorderingTolerantRecovery(QuicPacketRecovery):
    """aioquic's recovery with adaptive reordering thresholds and spurious-loss undo (module docstring)."""

    def init_reordering(self) -> None:
        self.packet_threshold = K_PACKET_THRESHOLD
        self.reorder_window_s = 0.0
        self.spurious_losses = 0
        self.undone = 0  # congestion events undone
        self._declared: dict[int, OrderedDict[int, DeclaredLoss]] = {}  # id(space) -> packet number -> loss
        self._undo: UndoPoint | None = None

    # -- acknowledgements ---------------------------------------------------------------
    def on_ack_received(self, *, ack_rangeset: RangeSet, ack_delay: float, now: float, space: QuicPacketSpace) -> None:
        declared = self._declared.get(id(space))
        if declared:
            self._forget_old(declared, now)
            for packet_number in [pn for pn in declared if pn in ack_rangeset]:
                self._on_spurious_loss(packet_number, declared.pop(packet_number), now)
        super().on_ack_received(ack_rangeset=ack_rangeset, ack_delay=ack_delay, now=now, space=space)

    def _forget_old(self, declared: OrderedDict[int, DeclaredLoss], now: float) -> None:
        horizon = now - MEMORY_S
        while declared:
            packet_number, loss = next(iter(declared.items()))
            if loss.declared_at >= horizon and len(declared) <= MAX_REMEMBERED:
                break
            del declared[packet_number]
            if self._undo is not None and packet_number in self._undo.pending:
                self._undo = None  # really lost: the congestion event stands

    def _on_spurious_loss(self, packet_number: int, loss: DeclaredLoss, now: float) -> None:
        self.spurious_losses += 1
        self.packet_threshold = max(self.packet_threshold, loss.largest_acked - packet_number + 1)
        lateness = (now - loss.sent_time) - loss.rtt
        self.reorder_window_s = min(MAX_REORDER_WINDOW_S, max(self.reorder_window_s, lateness * (1 + WINDOW_MARGIN)))
        undo = self._undo
        if undo is not None and packet_number in undo.pending:
            undo.pending.discard(packet_number)
            if not undo.pending:
                self._cc.congestion_window = max(self._cc.congestion_window, undo.congestion_window)
                self._cc.ssthresh = undo.ssthresh
                self._undo = None
                self.undone += 1
                self._pacer.update_rate(congestion_window=self._cc.congestion_window, smoothed_rtt=self._rtt_smoothed)

    # -- loss detection (RFC 9002 6.1, with this connection's thresholds) -----------------
    def _detect_loss(self, *, now: float, space: QuicPacketSpace) -> None:
        rtt = max(self._rtt_latest, self._rtt_smoothed) if self._rtt_initialized else self._rtt_initial
        loss_delay = max(K_TIME_THRESHOLD * rtt, rtt + self.reorder_window_s)
        packet_threshold = space.largest_acked_packet - self.packet_threshold
        time_threshold = now - loss_delay

        lost_packets = []
        space.loss_time = None
        for packet_number, packet in space.sent_packets.items():
            if packet_number > space.largest_acked_packet:
                break
            if packet_number <= packet_threshold or packet.sent_time <= time_threshold:
                lost_packets.append(packet)
            else:
                packet_loss_time = packet.sent_time + loss_delay
                if space.loss_time is None or space.loss_time > packet_loss_time:
                    space.loss_time = packet_loss_time

        if lost_packets:
            declared = self._declared.setdefault(id(space), OrderedDict())
            for packet in lost_packets:
                declared[packet.packet_number] = DeclaredLoss(packet.sent_time, space.largest_acked_packet, now, rtt)
        self._on_packets_lost(
            now=now,
            packets=lost_packets,
            persistent_congestion=self._in_persistent_congestion(packets=lost_packets),
            space=space,
        )

    def _on_packets_lost(
        self,
        *,
        congestion_event: bool = True,
        now: float,
        packets: Iterable[QuicSentPacket],
        persistent_congestion: bool = False,
        space: QuicPacketSpace,
    ) -> None:
        packets = list(packets)
        before = (self._cc.congestion_window, self._cc.ssthresh)
        super()._on_packets_lost(
            congestion_event=congestion_event,
            now=now,
            packets=packets,
            persistent_congestion=persistent_congestion,
            space=space,
        )
        if not congestion_event:
            return
        lost = {p.packet_number for p in packets if p.in_flight}
        if self._cc.congestion_window < before[0]:
            if self._undo is None:
                self._undo = UndoPoint(before[0], before[1])
            self._undo.pending |= lost
        elif self._undo is not None:
            self._undo.pending |= lost  # lost within the event being undone: it must be spurious too


def tolerate_reordering(quic: QuicConnection) -> ReorderingTolerantRecovery:
    """Give ``quic`` the reordering-tolerant loss detection (before it sends anything)."""
    recovery = quic._loss  # aioquic 1.x: QuicConnection._loss, a QuicPacketRecovery
    if not isinstance(recovery, QuicPacketRecovery):
        raise TypeError(f"aioquic's QuicConnection._loss is {type(recovery).__name__}, not QuicPacketRecovery")
    recovery.__class__ = ReorderingTolerantRecovery
    recovery.init_reordering()
    return recovery
