"""A loss-tolerant congestion controller for aioquic: Reno's growth, Westwood's and Veno's answer to loss.

Reno halves its window on every loss. On the links FLQ targets (Wi-Fi, cellular, long paths)
much loss is random, not congestion, and halving on each one keeps the window tiny: on
emulated lossy links aioquic's Reno and Cubic moved an adapter far slower than this controller
does (measured: docs/deployment.md, "How it works" and "Performance, measured"). This
controller keeps Reno's growth, except as below, and changes the answer to a loss:

* a loss while the RTT's floor sits near its minimum had no queue behind it (TCP Veno's test):
  it is taken as random and the window is kept; slow start still ends when the RTT starts to
  grow (HyStart), i.e. when a queue does build. The floor is the lowest RTT of the last half
  smoothed RTT, not the smoothed RTT itself: jitter (radio links) raises the
  average RTT of every packet without any queue, but a standing queue raises every packet's RTT,
  its floor included (as TCP Vegas and BBR read a queue from RTT minima). Judged by the smoothed
  RTT, every random loss on a jittery link was taken for congestion;
* any other loss is congestion: the window falls to the delivery rate measured times an RTT
  halfway between the minimum and the floor, the pipe it really had (TCP Westwood takes the
  minimum RTT, which on a jittery path is one lucky packet), not blindly to half. The rate is the
  best of the last few per-RTT samples (as BBR filters it): Westwood+'s slow average lags a
  window growing in slow start and would collapse it for good. With no estimate yet, a
  congestion loss halves the window, as Reno does;
* after a congestion loss the window grows by one datagram per RTT only while the RTT shows a
  queue; once the queue is gone it grows as in slow start again (TCP Westwood's agile probing).
  The rate behind the window it fell to was limited by that window, so Reno's creep kept it
  there: a persistent connection on a lossy link sat at that window round after round
  (measured: docs/deployment.md, "How it works").

A Fleet connection idles between rounds and carries small polls, so while the sender keeps less
than half its window in flight (application-limited, RFC 9002 section 7.8) nothing it sees is
about the path: the window neither grows nor shrinks, the delivery rate is not sampled, and
HyStart ignores the RTT. Without this rule, one lost poll (Reno's halving), a delivery-rate
sample from polls, or poll RTT jitter read as a queue each left a connection in congestion
avoidance from a tiny window, and its next adapter took several times as long (measured:
docs/deployment.md, "How it works"; tests/test_congestion.py holds these cases).

Under congestion the delivery rate stops at the bottleneck and the RTT grows, so the window
falls back to the bottleneck's pipe and drains the queue.

A node that reconnects every round would pay a fresh slow start per round on each side
(about five RTTs to reach a 500 KB pipe from 10 datagrams). As careful resumption
(draft-ietf-tsvwg-careful-resume) does, each process remembers per peer host the pipe
(``pipe_size``) it measured while the window was in use. A new connection to
that host starts in slow start; once its first RTT sample shows the same kind of path (0.5x to
10x the remembered minimum RTT) and the sender is held back by its window, the window jumps
to half the remembered pipe, once. Pacing spreads the jump over an RTT, and a loss with a
queue behind it falls back to the pipe measured on this connection, as above.

Measured on the emulated links of benchmarks/transport_throughput.py (results:
benchmarks/results/transport_throughput.md); registered with aioquic as ``"westwood"`` on import.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from aioquic.quic.congestion.base import (
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    QuicRttMonitor,
    register_congestion_control,
)
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicSentPacket

QUEUEING_RTT = 1.25  # the RTT's recent floor above this x min RTT: a queue stands, a loss is congestion
MIN_SAMPLE_INTERVAL = 0.02  # s; shorter samples on fast links are mostly noise
SAMPLES = 10  # the rate is the best of this many recent per-RTT samples
RTT_FLOOR_WINDOW = 0.5  # smoothed RTTs: the RTT's floor is the lowest RTT measured this recently
RTT_FLOOR_SAMPLES = 4096  # at most this many RTT samples kept for it
RTT_FLOOR_MIN_SAMPLES = 16  # and at least the last this many, however long ago
JITTER_ALLOWANCE = 2.0  # the floor may sit this many times the RTT's jitter above the minimum with no queue
NAME = "westwood"
RESUME_LIFETIME_S = 3600.0  # a remembered pipe older than this is not used
RESUME_RTT_RANGE = (0.5, 10.0)  # the new path's first RTT over the remembered minimum RTT: the same path


@dataclass(frozen=True)
class PathMemory:
    pipe: int  # bytes: ``pipe_size`` while the window was in use
    min_rtt: float  # s
    saved_at: float  # s, on the event loop's clock (the ``now`` aioquic passes)


class PathMemories:
    """What this process last measured of the path to each peer host (thread-safe: a SuperNode's
    Fleet client and a SuperLink's server each run their own event loop thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str, PathMemory] = {}

    def remember(self, host: str, memory: PathMemory) -> None:
        with self._lock:
            self._by_host[host] = memory

    def recall(self, host: str, now: float) -> PathMemory | None:
        with self._lock:
            memory = self._by_host.get(host)
            if memory is not None and not 0.0 <= now - memory.saved_at <= RESUME_LIFETIME_S:
                del self._by_host[host]
                return None
            return memory

    def clear(self) -> None:
        with self._lock:
            self._by_host.clear()


PATHS = PathMemories()


class WestwoodCongestionControl(QuicCongestionControl):
    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._mds = max_datagram_size
        self._recovery_start = 0.0
        self._stash = 0
        self._rtt_monitor = QuicRttMonitor()
        self._min_rtt = math.inf
        self._srtt: float | None = None
        self._recent_rtts: deque[tuple[float, float]] = deque(maxlen=RTT_FLOOR_SAMPLES)  # (time, RTT), RTT increasing
        self._last_rtts: deque[float] = deque(maxlen=RTT_FLOOR_MIN_SAMPLES)
        self._jitter = 0.0  # RFC 3550's estimate: mean |difference| of consecutive RTT samples
        self._acked = 0
        self._sample_start: float | None = None
        self._sample_max_in_flight = 0  # the most bytes in flight during the current sample
        self._samples: deque[float] = deque(maxlen=SAMPLES)
        self.random_losses = 0
        self.peer_host: str | None = None  # set by ``remember_paths``: this connection resumes and feeds PATHS
        self.memories = PATHS
        self._resume_window = 0  # bytes to jump to once the window limits the sender (0: no jump pending)
        self.resumed_from: int | None = None  # the window it jumped to, if it did

    @property
    def bandwidth(self) -> float:
        """Delivery rate in bytes/s: the best recent per-RTT sample (0 before the first)."""
        return max(self._samples, default=0.0)

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self._sample_bandwidth(now, packet.sent_bytes)
        if packet.sent_time <= self._recovery_start or self.app_limited():
            return  # no growth during recovery, nor for a window the sender does not use (RFC 9002 7.8)
        if self.ssthresh is None or self.congestion_window < self.ssthresh or self.path_unqueued():
            # slow start; and, as TCP Westwood's agile probing, again whenever the RTT shows no
            # queue: a window set from a rate the window itself limited would otherwise creep
            # back up by one datagram per RTT
            self.congestion_window += packet.sent_bytes
        else:  # congestion avoidance with a queue: one datagram per window acknowledged
            self._stash += packet.sent_bytes
            count = self._stash // self.congestion_window
            if count:
                self._stash -= count * self.congestion_window
                self.congestion_window += count * self._mds

    def _sample_bandwidth(self, now: float, acked: int) -> None:
        if self._sample_start is None:
            self._sample_start = now
            return
        self._acked += acked
        elapsed = now - self._sample_start
        if elapsed >= max(self._srtt or 0.0, MIN_SAMPLE_INTERVAL):
            if not self.app_limited():
                self._samples.append(self._acked / elapsed)
                if self.peer_host is not None:
                    self.memories.remember(self.peer_host, PathMemory(self.pipe_size(), self._min_rtt, now))
            self._acked = 0
            self._sample_start = now
            self._sample_max_in_flight = self.bytes_in_flight

    def app_limited(self) -> bool:
        """Whether the current sample's sender kept less than half its window in flight."""
        return 2 * self._sample_max_in_flight < self.congestion_window

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes
        self._sample_max_in_flight = max(self._sample_max_in_flight, self.bytes_in_flight)
        if self._resume_window and self.bytes_in_flight >= self.congestion_window:
            # The window now holds the sender back: use the remembered pipe (once).
            self.congestion_window = max(self.congestion_window, self._resume_window)
            self.resumed_from = self.congestion_window
            self._resume_window = 0

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def pipe_size(self) -> int:
        """Estimated bandwidth x the RTT halfway between its minimum and its recent floor, in
        bytes (0 before any estimate).

        Westwood multiplies by the minimum RTT, which drains a standing queue; on a jittery path
        the minimum is one lucky packet far below the typical RTT, and a window sized from it
        kept the sender at a fraction of the rate. The floor alone would never drain a queue;
        halfway drains half of one and holds most of a jittery pipe (both measured on the link
        grid: benchmarks/results/quic_link_sim.md).
        """
        if not self.bandwidth or math.isinf(self._min_rtt):
            return 0
        return int(self.bandwidth * (self._min_rtt + self.rtt_floor()) / 2)

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        largest_sent = 0.0
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            largest_sent = packet.sent_time
        if largest_sent <= self._recovery_start:
            return  # part of a congestion event already handled
        self._recovery_start = now
        if self.app_limited() or self.loss_looks_random():
            self.random_losses += 1
            return  # window unused, or no queue behind the loss: keep it (HyStart still ends slow start on delay)
        floor = K_MINIMUM_WINDOW * self._mds
        pipe = self.pipe_size() or self.congestion_window // 2  # no estimate yet: Reno's answer
        self.ssthresh = max(floor, pipe)
        self.congestion_window = max(floor, min(self.congestion_window, self.ssthresh))

    def loss_looks_random(self) -> bool:
        """A loss while the RTT's floor sits at its minimum came from no queue (as TCP Veno tells
        them apart); from the first RTT sample on, so a loss in the first flights does not halve."""
        return self.path_unqueued()

    def path_unqueued(self) -> bool:
        """Whether the RTT's recent floor sits near its minimum: no queue is standing on the path.

        "Near" is QUEUEING_RTT x the minimum, or the minimum plus JITTER_ALLOWANCE x the RTT's
        jitter if that is more: where the jitter is as large as the RTT itself, the minimum is
        a rare packet that met none, and even the floor of many samples sits well above it
        with no queue at all. A standing queue moves the floor but not the jitter (RFC 3550's:
        the mean difference between consecutive samples), so the two stay apart."""
        if self._srtt is None or math.isinf(self._min_rtt):
            return False
        near = max(QUEUEING_RTT * self._min_rtt, self._min_rtt + JITTER_ALLOWANCE * self._jitter)
        return self.rtt_floor() <= near

    def rtt_floor(self) -> float:
        """The lowest RTT measured in the last RTT_FLOOR_WINDOW smoothed RTTs or among the last
        RTT_FLOOR_MIN_SAMPLES samples, whichever saw more (the smoothed RTT if none).

        The sample count matters for a small window: a few samples of a jittery RTT rarely
        include a low one, so the floor would read as a queue, the window would stay small,
        and the samples stay few."""
        if not self._recent_rtts:
            return self._srtt or math.inf
        return min(self._recent_rtts[0][1], min(self._last_rtts))

    def on_persistent_congestion(self) -> None:
        self.congestion_window = K_MINIMUM_WINDOW * self._mds
        self._recovery_start = 0.0

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        if self._srtt is None and self.peer_host is not None:
            self._plan_resume(now, rtt)
        self._min_rtt = min(self._min_rtt, rtt)
        self._srtt = rtt if self._srtt is None else 0.875 * self._srtt + 0.125 * rtt
        # A sliding-window minimum: drop samples the new one makes irrelevant, then the old ones.
        recent = self._recent_rtts
        while recent and recent[-1][1] >= rtt:
            recent.pop()
        if self._last_rtts:
            self._jitter += (abs(rtt - self._last_rtts[-1]) - self._jitter) / 16
        recent.append((now, rtt))
        self._last_rtts.append(rtt)
        while recent[0][0] < now - RTT_FLOOR_WINDOW * self._srtt:
            recent.popleft()
        # HyStart: leave slow start as the RTT grows, but only while the window is in use: the
        # RTTs of polls on an idle connection jitter with the hosts' load, not with a queue
        # (without this check slow start ended before the first adapter was sent: docs/deployment.md).
        if self.ssthresh is None and not self.app_limited() and self._rtt_monitor.is_rtt_increasing(now=now, rtt=rtt):
            self.ssthresh = self.congestion_window

    def _plan_resume(self, now: float, first_rtt: float) -> None:
        """On the first RTT sample: jump later to half the remembered pipe if the path looks the same."""
        memory = self.memories.recall(self.peer_host, now)
        if memory is None or not memory.pipe or math.isinf(memory.min_rtt):
            return
        low, high = RESUME_RTT_RANGE
        if low * memory.min_rtt <= first_rtt <= high * memory.min_rtt and memory.pipe // 2 > self.congestion_window:
            self._resume_window = memory.pipe // 2


def remember_paths(quic: QuicConnection, peer_host: str) -> bool:
    """Let ``quic``'s controller resume from, and record into, what this process measured of the
    path to ``peer_host``. False when the connection does not use this controller."""
    controller = getattr(getattr(quic, "_loss", None), "_cc", None)  # aioquic 1.x: QuicPacketRecovery._cc
    if not isinstance(controller, WestwoodCongestionControl):
        return False
    controller.peer_host = peer_host
    return True


register_congestion_control(NAME, WestwoodCongestionControl)
