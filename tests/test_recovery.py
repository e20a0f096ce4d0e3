"""Loss detection that learns reordering (flq.transport.recovery): synthetic packets, then real
aioquic connections over an emulated link on a virtual clock (harness.quic_link)."""

from __future__ import annotations

import inspect

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import K_PACKET_THRESHOLD, K_TIME_THRESHOLD, QuicPacketRecovery, QuicPacketSpace

from flq.netem.link import LinkDirection
from flq.transport import recovery as rec
from flq.transport.quic_settings import QuicSettings
from harness.quic_link import upload
from tests.test_congestion import MDS, packet

RTT = 0.1


class Path:
    """A recovery with one packet space, an RTT already measured, and Reno's answer to loss."""

    def __init__(self, adaptive: bool = True) -> None:
        self.loss = QuicPacketRecovery(
            congestion_control_algorithm="reno",
            initial_rtt=RTT,
            max_datagram_size=MDS,
            peer_completed_address_validation=True,
            send_probe=lambda: None,
        )
        if adaptive:
            self.loss.__class__ = rec.ReorderingTolerantRecovery
            self.loss.init_reordering()
        self.space = QuicPacketSpace(is_application_data=True)
        self.loss.spaces = [self.space]
        self.next_number = 0
        self.lost: list[int] = []
        self.send(1, now=0.0)
        self.ack([0], now=RTT)

    def send(self, count: int, now: float) -> list[int]:
        numbers = list(range(self.next_number, self.next_number + count))
        for n in numbers:
            p = packet(n, now)
            p.delivery_handlers = [(self._on_delivery, (n,))]
            self.loss.on_packet_sent(packet=p, space=self.space)
        self.next_number += count
        return numbers

    def _on_delivery(self, state, number) -> None:
        if state.name == "LOST":
            self.lost.append(number)

    def ack(self, numbers: list[int], now: float) -> None:
        ranges = RangeSet()
        for n in numbers:
            ranges.add(n)
        self.loss.on_ack_received(ack_rangeset=ranges, ack_delay=0.0, now=now, space=self.space)


def reordered_flight(path: Path, now: float) -> list[int]:
    """Ten packets sent together; the first two arrive after the other eight (reordering)."""
    numbers = path.send(10, now)
    path.ack(numbers[2:], now=now + RTT)
    path.ack(numbers[:2], now=now + RTT + 0.005)
    return numbers


def test_rfc9002_thresholds_take_reordering_for_loss():
    path = Path(adaptive=False)
    window = path.loss.congestion_window
    numbers = reordered_flight(path, now=1.0)
    assert path.lost == numbers[:2]  # declared lost, though both arrived 5 ms later
    assert path.loss.congestion_window < window  # and the window paid for it


def test_a_spurious_loss_raises_the_thresholds_and_is_undone():
    path = Path()
    window = path.loss.congestion_window
    numbers = reordered_flight(path, now=1.0)
    assert path.lost == numbers[:2]  # the first time, the reordering is not known yet
    assert path.loss.spurious_losses == 2 and path.loss.undone == 1
    # the flight's first packet was declared lost when the one 9 after it was acknowledged
    assert path.loss.packet_threshold == 10
    # undone, as everything it lost was delivered: the window is what slow start made of it
    # with the 8 packets acknowledged in order
    assert path.loss.congestion_window == window + 8 * MDS
    path.lost.clear()
    reordered_flight(path, now=2.0)  # the same reordering again
    assert path.lost == [] and path.loss.congestion_window >= window


def test_late_packets_open_a_reordering_window_up_to_its_cap():
    path = Path()
    numbers = path.send(2, now=1.0)
    path.ack([numbers[1]], now=1.0 + RTT)
    path.loss.on_loss_detection_timeout(now=1.0 + RTT * K_TIME_THRESHOLD + 1e-3)
    assert path.lost == [numbers[0]]
    path.ack([numbers[0]], now=1.0 + 1.5 * RTT)  # it was 0.5 RTT later than the RTT
    assert path.loss.reorder_window_s == pytest.approx(0.5 * RTT * (1 + rec.WINDOW_MARGIN), rel=0.05)
    # now a packet as late is not declared lost
    path.lost.clear()
    numbers = path.send(2, now=2.0)
    path.ack([numbers[1]], now=2.0 + RTT)
    assert path.space.loss_time == pytest.approx(2.0 + RTT + path.loss.reorder_window_s, rel=1e-6)
    path.ack([numbers[0]], now=2.0 + 1.5 * RTT)
    assert path.lost == []
    # far later than any jitter: a real loss first; acknowledged after all, it opens the window to the cap
    numbers = path.send(2, now=3.0)
    path.ack([numbers[1]], now=3.0 + RTT)
    path.loss.on_loss_detection_timeout(now=path.space.loss_time)
    assert numbers[0] in path.lost
    path.ack([numbers[0]], now=3.0 + RTT + 0.9)
    assert path.loss.reorder_window_s == rec.MAX_REORDER_WINDOW_S


def test_a_real_loss_is_still_detected_and_not_undone():
    path = Path()
    reordered_flight(path, now=1.0)  # learns a reordering of 9 packets
    path.lost.clear()
    window = path.loss.congestion_window
    numbers = path.send(8, now=2.0)
    path.ack(numbers[1:], now=2.0 + RTT)  # packet 0 never arrives
    loss_time = path.space.loss_time
    assert path.lost == [] and loss_time is not None  # not by count: its time threshold is armed
    path.loss.on_loss_detection_timeout(now=loss_time)
    assert path.lost == [numbers[0]] and path.loss.congestion_window < window
    path.loss.on_ack_received(
        ack_rangeset=RangeSet([range(numbers[-1], numbers[-1] + 1)]),
        ack_delay=0.0,
        now=loss_time + 10 * RTT,
        space=path.space,
    )
    assert path.loss.undone == 1 and path.loss.congestion_window < window  # only the first event was undone


def test_the_memory_of_declared_losses_is_bounded():
    path = Path()
    numbers = path.send(rec.MAX_REMEMBERED + 100, now=1.0)
    path.ack([numbers[-1]], now=1.0 + RTT)  # all the others: lost by count
    path.ack([numbers[-1] + 0], now=1.0 + RTT + 1e-3)  # any later ack trims the memory
    assert len(path.loss._declared[id(path.space)]) <= rec.MAX_REMEMBERED


def test_pinned_aioquic_internals():
    """flq.transport.recovery replaces the class of QuicConnection._loss and overrides two of its methods."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    assert type(quic._loss) is QuicPacketRecovery
    assert K_PACKET_THRESHOLD == 3 and K_TIME_THRESHOLD == 9 / 8
    assert list(inspect.signature(QuicPacketRecovery._detect_loss).parameters) == ["self", "now", "space"]
    assert set(inspect.signature(QuicPacketRecovery._on_packets_lost).parameters) == {
        "self",
        "congestion_event",
        "now",
        "packets",
        "persistent_congestion",
        "space",
    }
    recovery = rec.tolerate_reordering(quic)
    assert quic._loss is recovery and recovery.packet_threshold == K_PACKET_THRESHOLD


# -- real connections over an emulated link (virtual clock: deterministic, no wall time) -------------
JITTERY = LinkDirection(delay_ms=50, jitter_ms=20, loss=0.03)  # +-20 ms per packet: packets reorder
STEADY = LinkDirection(delay_ms=50, loss=0.03)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return tmp_path_factory.mktemp("quic-link-certs")


def test_on_a_reordering_link_reordering_is_not_loss(certs):
    fixed = upload(1_000_000, JITTERY, JITTERY, certs, settings=QuicSettings(adaptive_reordering=False))
    adaptive = upload(1_000_000, JITTERY, JITTERY, certs)
    steady = upload(1_000_000, STEADY, STEADY, certs)
    learned = adaptive.client._loss
    assert learned.spurious_losses > 0 and learned.packet_threshold > K_PACKET_THRESHOLD
    # RFC 9002's thresholds retransmit much of what was only late; the adaptive ones about as
    # little as on the same link without jitter.
    assert fixed.up.delivered > 1.5 * steady.up.delivered
    assert adaptive.up.delivered < 1.2 * steady.up.delivered
    assert adaptive.seconds < fixed.seconds


def test_a_bandwidth_limited_path_converges_to_its_rate(certs):
    rate_mbps, size = 20.0, 4_000_000
    capped = LinkDirection(delay_ms=25, rate_mbps=rate_mbps, queue_ms=100)
    transfer = upload(size, capped, LinkDirection(delay_ms=25), certs)
    at_rate_s = size * 8 / (rate_mbps * 1e6)
    # slow start from 10 datagrams takes a few RTTs; after it the link must stay busy, and the
    # sender must not keep overrunning the queue (a loss at a standing queue is congestion)
    assert transfer.seconds < at_rate_s + 0.5
    assert transfer.up.tail_dropped < 0.05 * transfer.up.delivered


def test_a_persistent_connection_keeps_its_pace_round_after_round_on_a_jittery_link(certs):
    """What a connection learns (thresholds, window, RTT floor, jitter) must not slow later rounds:
    one-way delays anywhere in 0-20 ms, 1 % loss, 20 Mb/s, four 2 MB uploads 3 s apart."""
    link = LinkDirection(delay_ms=10, jitter_ms=10, loss=0.01, rate_mbps=20.0)
    transfer = upload(2_000_000, link, link, certs, rounds=4)
    at_rate_s = 2_000_000 * 8 / 20e6
    assert len(transfer.rounds_s) == 4
    assert max(transfer.rounds_s) < 1.5 * at_rate_s
