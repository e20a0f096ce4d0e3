"""The loss-tolerant congestion controller, driven with synthetic packets (pure logic, no network)."""

from __future__ import annotations

from aioquic.quic.congestion.base import K_MINIMUM_WINDOW, create_congestion_control
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from flq.transport import congestion  # noqa: F401  (registers "westwood")
from flq.transport.congestion import WestwoodCongestionControl

MDS = 1200


def packet(number: int, sent: float, size: int = MDS) -> QuicSentPacket:
    return QuicSentPacket(epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
                          packet_number=number, packet_type=QuicPacketType.ONE_RTT, sent_time=sent, sent_bytes=size)


def warmed(rtt_min: float, rtt_now: float, window_packets: int = 50, rounds: int = 6) -> WestwoodCongestionControl:
    """A controller that has sent `rounds` full windows over a path with the given RTTs."""
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    assert isinstance(cc, WestwoodCongestionControl)
    cc.congestion_window = window_packets * MDS
    cc.ssthresh = cc.congestion_window  # congestion avoidance, so growth is slow and predictable
    cc.on_rtt_measurement(now=0.0, rtt=rtt_min)
    now, number = 0.0, 0
    for _ in range(rounds):
        sent = [packet(number + i, now) for i in range(window_packets)]
        number += window_packets
        for p in sent:
            cc.on_packet_sent(packet=p)
        now += rtt_now
        for p in sent:
            cc.on_packet_acked(now=now, packet=p)
        for _ in range(8):  # enough samples to move the smoothed RTT
            cc.on_rtt_measurement(now=now, rtt=rtt_now)
    return cc


def lose_one(cc: WestwoodCongestionControl, now: float = 100.0) -> None:
    lost = packet(10_000, now - 0.01)
    cc.on_packet_sent(packet=lost)
    cc.on_packets_lost(now=now, packets=[lost])


def test_random_loss_keeps_the_window():
    cc = warmed(rtt_min=0.05, rtt_now=0.05)  # no queueing delay
    before = cc.congestion_window
    lose_one(cc)
    assert cc.congestion_window == before and cc.random_losses == 1
    assert cc.bytes_in_flight == 0


def test_loss_with_queueing_falls_to_the_measured_pipe():
    cc = warmed(rtt_min=0.05, rtt_now=0.1)  # the RTT doubled: a queue is building
    before = cc.congestion_window
    pipe = cc.pipe_size()
    assert 0 < pipe < before  # delivered ~window/RTT_now, so the pipe at RTT_min is about half
    lose_one(cc)
    assert cc.random_losses == 0
    assert cc.congestion_window == max(pipe, K_MINIMUM_WINDOW * MDS) == cc.ssthresh


def test_one_congestion_event_per_recovery_period():
    cc = warmed(rtt_min=0.05, rtt_now=0.1)
    lose_one(cc, now=100.0)
    after_first = cc.congestion_window
    old = packet(20_000, 99.0)  # sent before recovery started: same event
    cc.on_packet_sent(packet=old)
    cc.on_packets_lost(now=100.05, packets=[old])
    assert cc.congestion_window == after_first


def fill_window(cc: WestwoodCongestionControl, now: float) -> None:
    """Put a whole window in flight (the sender is not application-limited)."""
    for i in range(cc.congestion_window // MDS):
        cc.on_packet_sent(packet=packet(5_000 + i, now))


def test_without_an_estimate_it_halves_like_reno():
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    before = cc.congestion_window
    fill_window(cc, now=0.9)
    lose_one(cc, now=1.0)
    assert cc.congestion_window == max(before // 2, K_MINIMUM_WINDOW * MDS)


def test_slow_start_then_persistent_congestion():
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    start = cc.congestion_window
    p = packet(1, 0.01)
    cc.on_packet_sent(packet=p)
    cc.on_packet_acked(now=0.05, packet=p)
    assert cc.congestion_window == start + MDS  # slow start: +1 datagram per datagram acked
    cc.on_persistent_congestion()
    assert cc.congestion_window == K_MINIMUM_WINDOW * MDS


def send_polls(cc: WestwoodCongestionControl, count: int, rtt) -> None:
    """One small request per second, each acknowledged 50 ms later; `rtt(i)` is measured if not None."""
    for i in range(count):
        poll = packet(i, float(i), size=200)
        cc.on_packet_sent(packet=poll)
        if rtt(i) is not None:
            cc.on_rtt_measurement(now=i + 0.05, rtt=rtt(i))
        cc.on_packet_acked(now=i + 0.05, packet=poll)


def test_polls_on_an_idle_connection_do_not_set_the_rate():
    """Small requests far apart deliver little: that is the application's pace, not the path's.

    A window cut to that rate times the RTT would leave a fresh connection crawling for seconds
    (measured at 50 ms / 1% loss: a 4 MB upload took 4.5 s instead of 0.8 s).
    """
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    cc.on_rtt_measurement(now=0.0, rtt=0.05)
    send_polls(cc, 12, rtt=lambda i: None)
    assert cc.app_limited() and cc.bandwidth == 0.0  # no sample from the polls
    for _ in range(8):
        cc.on_rtt_measurement(now=12.0, rtt=0.15)  # the RTT grew: a full window's loss would be congestion
    before = cc.congestion_window
    lose_one(cc, now=13.0)  # a poll lost: the window was never used, so it is kept
    assert cc.congestion_window == before and cc.ssthresh is None and cc.random_losses == 1
    fill_window(cc, now=13.5)
    lose_one(cc, now=14.0)  # now the window is in use: congestion, and Reno's answer, not the poll rate
    assert cc.random_losses == 1
    assert cc.congestion_window == max(before // 2, K_MINIMUM_WINDOW * MDS) == cc.ssthresh


def test_a_window_kept_full_still_measures_the_path():
    cc = warmed(rtt_min=0.05, rtt_now=0.1)
    assert not cc.app_limited() and cc.bandwidth > 0


def test_rtt_jitter_on_polls_does_not_end_slow_start_but_a_queue_under_load_does():
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    send_polls(cc, 20, rtt=lambda i: 0.05 + 0.01 * i)  # RTT grows with host load, window not in use
    assert cc.ssthresh is None  # still in slow start
    fill_window(cc, now=30.0)
    for i in range(20):  # a full window and a growing RTT: a queue, HyStart ends slow start
        cc.on_rtt_measurement(now=30.0 + 0.01 * (i + 1), rtt=0.05 + 0.01 * i)
    assert cc.ssthresh == cc.congestion_window
