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
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=sent,
        sent_bytes=size,
    )


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
    # The RTT's floor forgets rtt_min only after two sample periods, and until then the window
    # grew as on a path without a queue: give the tests the window they reason about.
    cc.congestion_window = window_packets * MDS
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


def put_window_in_flight(cc: WestwoodCongestionControl, now: float) -> None:
    """Put a whole window in flight (the sender is not application-limited)."""
    for i in range(cc.congestion_window // MDS):
        cc.on_packet_sent(packet=packet(5_000 + i, now))


def test_without_an_estimate_it_halves_like_reno():
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    before = cc.congestion_window
    put_window_in_flight(cc, now=0.9)
    lose_one(cc, now=1.0)
    assert cc.congestion_window == max(before // 2, K_MINIMUM_WINDOW * MDS)


def test_slow_start_then_persistent_congestion():
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    start = cc.congestion_window
    put_window_in_flight(cc, now=0.01)
    cc.on_packet_acked(now=0.05, packet=packet(0, 0.01))
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
    for _ in range(congestion.RTT_FLOOR_MIN_SAMPLES):  # the RTT grew, floor included:
        cc.on_rtt_measurement(now=12.0, rtt=0.15)  # a full window's loss would be congestion
    before = cc.congestion_window
    lose_one(cc, now=13.0)  # a poll lost: the window was never used, so it is kept
    assert cc.congestion_window == before and cc.ssthresh is None and cc.random_losses == 1
    put_window_in_flight(cc, now=13.5)
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
    put_window_in_flight(cc, now=30.0)
    for i in range(20):  # a full window and a growing RTT: a queue, HyStart ends slow start
        cc.on_rtt_measurement(now=30.0 + 0.01 * (i + 1), rtt=0.05 + 0.01 * i)
    assert cc.ssthresh == cc.congestion_window


# --- careful resumption: a new connection starts from the pipe last measured to its peer -------


def fresh(memories: congestion.PathMemories, peer: str = "10.0.0.2") -> WestwoodCongestionControl:
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    cc.memories, cc.peer_host = memories, peer
    return cc


def fill_window(cc: WestwoodCongestionControl, start: int = 0, now: float = 0.0) -> int:
    """Send until the window holds the sender back; returns how many packets went out."""
    sent = 0
    while cc.bytes_in_flight < cc.congestion_window:
        cc.on_packet_sent(packet=packet(start + sent, now))
        sent += 1
    return sent


def test_a_used_window_is_remembered_and_a_new_connection_jumps_to_half_of_it():
    memories = congestion.PathMemories()
    first = warmed(rtt_min=0.05, rtt_now=0.05)
    first.memories, first.peer_host = memories, "10.0.0.2"
    first_pipe_before = first.pipe_size()
    sent = fill_window(first, now=1.0)  # one more full window, now with a peer to remember
    for i in range(sent):
        first.on_packet_acked(now=1.05 + i * 1e-4, packet=packet(i, 1.0))
    memory = memories.recall("10.0.0.2", now=2.0)
    assert memory is not None and memory.pipe >= first_pipe_before > 0 and memory.min_rtt == 0.05

    second = fresh(memories)
    initial = second.congestion_window
    second.on_rtt_measurement(now=2.0, rtt=0.06)  # the same kind of path
    assert second.congestion_window == initial  # no jump before the window limits the sender
    fill_window(second, now=2.0)
    assert second.congestion_window == memory.pipe // 2 > initial
    assert second.resumed_from == memory.pipe // 2


def test_no_jump_on_another_path_another_host_or_an_old_memory():
    memories = congestion.PathMemories()
    memories.remember("10.0.0.2", congestion.PathMemory(pipe=500 * MDS, min_rtt=0.05, saved_at=0.0))
    for peer, rtt, now in [
        ("10.0.0.2", 0.6, 1.0),  # 12x the remembered RTT: another path
        ("10.0.0.2", 0.02, 1.0),  # under half of it: another path
        ("10.0.0.3", 0.05, 1.0),  # another host
        ("10.0.0.2", 0.05, congestion.RESUME_LIFETIME_S + 1),
    ]:  # too old
        cc = fresh(memories, peer)
        initial = cc.congestion_window
        cc.on_rtt_measurement(now=now, rtt=rtt)
        fill_window(cc, now=now)
        assert cc.congestion_window == initial and cc.resumed_from is None, (peer, rtt, now)


def test_without_a_peer_nothing_is_remembered():
    memories = congestion.PathMemories()
    cc = warmed(rtt_min=0.05, rtt_now=0.05)
    cc.memories = memories
    assert cc.peer_host is None and memories.recall("10.0.0.2", now=1.0) is None


def test_a_congestion_loss_after_the_jump_falls_back_to_this_connections_pipe():
    memories = congestion.PathMemories()
    memories.remember("10.0.0.2", congestion.PathMemory(pipe=400 * MDS, min_rtt=0.05, saved_at=0.0))
    cc = fresh(memories)
    cc.on_rtt_measurement(now=1.0, rtt=0.05)
    sent = fill_window(cc, now=1.0)
    assert cc.congestion_window == 200 * MDS
    # The path is narrower than remembered: acks come back at 500 packets/s, the RTT doubles,
    # and the sender keeps its window full (for three RTTs: the RTT's floor shows the queue
    # once a whole sample period has seen it).
    for i in range(150):
        now = 1.1 + i * 2e-3
        cc.on_packet_acked(now=now, packet=packet(i, 1.0))
        cc.on_rtt_measurement(now=now, rtt=0.1)
        sent += fill_window(cc, start=sent, now=now)
    cc.on_packets_lost(now=1.41, packets=[packet(i, 1.0) for i in range(150, 160)])
    assert cc.random_losses == 0
    # delivered ~600 KB/s x 0.05 s minimum RTT: a ~25-packet pipe, far below the jump
    assert K_MINIMUM_WINDOW * MDS <= cc.congestion_window <= 40 * MDS


def test_remember_paths_reaches_aioquics_controller():
    """Pins aioquic's private QuicConnection._loss._cc, through which the peer is set."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    config = QuicConfiguration(is_client=True, congestion_control_algorithm="westwood")
    quic = QuicConnection(configuration=config)
    assert congestion.remember_paths(quic, "10.0.0.2")
    assert quic._loss._cc.peer_host == "10.0.0.2"
    reno = QuicConnection(configuration=QuicConfiguration(is_client=True, congestion_control_algorithm="reno"))
    assert not congestion.remember_paths(reno, "10.0.0.2")


def test_an_unused_window_does_not_grow():
    cc = create_congestion_control("westwood", max_datagram_size=MDS)
    start = cc.congestion_window
    send_polls(cc, 200, rtt=lambda i: 0.05)
    assert cc.congestion_window == start


def test_after_a_congestion_loss_growth_is_reno_with_a_queue_and_slow_start_without():
    by_rtt = {}
    for rtt_now in (0.05, 0.1):  # RTT at its minimum (no queue) / doubled (a queue)
        cc = warmed(rtt_min=0.05, rtt_now=0.1)
        lose_one(cc)  # a congestion loss: window to the measured pipe, congestion avoidance
        assert cc.random_losses == 0 and cc.ssthresh is not None
        for _ in range(20):  # the smoothed RTT settles
            cc.on_rtt_measurement(now=101.0, rtt=rtt_now)
        window = cc.congestion_window
        sent = fill_window(cc, start=20_000, now=101.0)
        for i in range(sent):
            cc.on_packet_acked(now=101.0 + rtt_now, packet=packet(20_000 + i, 101.0))
        by_rtt[rtt_now] = cc.congestion_window - window
    assert by_rtt[0.1] <= 2 * MDS  # about one datagram per window acknowledged (plus what was stashed)
    assert by_rtt[0.05] > 10 * MDS  # a datagram per datagram acknowledged: agile probing


def test_on_a_jittery_path_the_pipe_is_not_one_lucky_packets():
    """Westwood's pipe is rate x minimum RTT; one packet that met no jitter makes that minimum
    far below the typical RTT. FLQ takes the RTT halfway between the minimum and the floor."""
    cc = warmed(rtt_min=0.05, rtt_now=0.05)
    cc.on_rtt_measurement(now=50.0, rtt=0.01)  # one lucky packet
    for i in range(congestion.RTT_FLOOR_MIN_SAMPLES):
        cc.on_rtt_measurement(now=60.0 + i * 1e-3, rtt=0.05 + 0.01 * (i % 3))  # the usual, jittery RTT
    assert cc.rtt_floor() == 0.05
    assert cc.pipe_size() == int(cc.bandwidth * (0.01 + 0.05) / 2)


def test_where_jitter_is_as_large_as_the_rtt_a_loss_without_a_queue_is_random():
    """One-way delays anywhere in 0-20 ms: the minimum RTT is a rare packet that met no jitter,
    and even the floor of many samples sits far above it, with no queue at all."""
    import random

    rng = random.Random(5)
    cc = warmed(rtt_min=0.02, rtt_now=0.02)
    for i in range(400):
        cc.on_rtt_measurement(now=100.0 + i * 1e-3, rtt=rng.uniform(0.0, 0.02) + rng.uniform(0.0, 0.02))
    assert cc.rtt_floor() > congestion.QUEUEING_RTT * cc._min_rtt  # the ratio alone would see a queue
    before = cc.congestion_window
    lose_one(cc, now=100.5)
    assert cc.random_losses == 1 and cc.congestion_window == before
    # the same jitter on top of a standing queue of 50 ms is still a queue
    for i in range(400):
        cc.on_rtt_measurement(now=101.0 + i * 1e-3, rtt=0.05 + rng.uniform(0.0, 0.02) + rng.uniform(0.0, 0.02))
    put_window_in_flight(cc, now=101.5)
    lose_one(cc, now=102.0)
    assert cc.random_losses == 1  # congestion: the window is set from the measured pipe
    assert cc.ssthresh == max(cc.pipe_size(), K_MINIMUM_WINDOW * MDS)
