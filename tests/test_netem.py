"""The link emulator: its per-packet decisions (pure), and real transfers through it (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from flq.netem.link import GilbertElliott, LinkDirection, LinkQueue
from harness.processes import free_port

MTU = 1500


def test_without_a_cap_packets_take_the_delay_and_keep_their_order():
    queue = LinkQueue(LinkDirection(delay_ms=30))
    assert [queue.admit(t, MTU) for t in (0.0, 0.001, 0.002)] == pytest.approx([0.03, 0.031, 0.032])


def test_a_rate_cap_serialises_packets_and_its_full_queue_drops_the_tail():
    # 12 Mb/s: a 1,500-byte packet takes 1 ms; the queue holds 5 ms of sending
    queue = LinkQueue(LinkDirection(rate_mbps=12.0, queue_ms=5.0))
    departures = [queue.admit(0.0, MTU) for _ in range(8)]
    assert departures[:6] == pytest.approx([0.001 * (i + 1) for i in range(6)])  # waits of 0..5 ms
    assert departures[6:] == [None, None] and queue.tail_dropped == 2
    assert queue.admit(0.0065, MTU) == pytest.approx(0.0075)  # the queue drained: sent at once


def test_jitter_reorders_packets_sent_closer_together_than_it():
    queue = LinkQueue(LinkDirection(delay_ms=50, jitter_ms=20), seed=3)
    sent = [i * 0.001 for i in range(200)]  # one packet per ms
    arrivals = [queue.admit(t, MTU) for t in sent]
    assert all(0.03 - 1e-9 <= a - t <= 0.07 + 1e-9 for a, t in zip(arrivals, sent, strict=True))
    overtaken = sum(later < earlier for earlier, later in zip(arrivals, arrivals[1:]))
    assert overtaken > 50  # about half of neighbours swap
    steady = LinkQueue(LinkDirection(delay_ms=50))
    in_order = [steady.admit(t, MTU) for t in sent]
    assert in_order == sorted(in_order)


def test_random_loss_has_its_rate_and_bursty_loss_its_rate_and_burst_length():
    import random

    independent = LinkQueue(LinkDirection(loss=0.05), seed=1)
    outcomes = [independent.admit(i * 1e-3, MTU) is None for i in range(20_000)]
    assert sum(outcomes) / len(outcomes) == pytest.approx(0.05, abs=0.01)

    burst = GilbertElliott(loss=0.05, mean_burst=4.0, rng=random.Random(2))
    lost = [burst.lost() for _ in range(100_000)]
    runs, run = [], 0
    for x in lost:
        if x:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert sum(lost) / len(lost) == pytest.approx(0.05, abs=0.01)
    assert sum(runs) / len(runs) == pytest.approx(4.0, rel=0.15)


def test_codel_drops_once_packets_wait_past_target_for_an_interval_then_ever_faster():
    from flq.netem.link import CoDel

    codel = CoDel(target_s=0.005, interval_s=0.1)
    assert not any(codel.drops(t * 0.001, 0.004, False) for t in range(500))  # below target: never
    drops = [t * 0.001 for t in range(500, 1500) if codel.drops(t * 0.001, 0.02, False)]
    assert drops[0] == pytest.approx(0.6, abs=0.002)  # one interval after the wait first passed target
    gaps = [b - a for a, b in zip(drops, drops[1:])]
    # the control law: the next drop interval / sqrt(count) later
    assert gaps[:3] == pytest.approx([0.1, 0.1 / 2**0.5, 0.1 / 3**0.5], abs=0.002)
    assert all(later <= earlier + 0.0011 for earlier, later in zip(gaps, gaps[1:]))  # 1 ms steps here
    assert not codel.drops(1.5, 0.001, False) and not codel.dropping  # the queue drained: it stops


def test_bad_link_settings_are_refused_with_what_is_wrong():
    with pytest.raises(ValueError, match="loss must be in"):
        LinkDirection(loss=1.5)
    with pytest.raises(ValueError, match="rate_mbps must be > 0"):
        LinkDirection(rate_mbps=0.0)
    with pytest.raises(ValueError, match="aqm must be one of"):
        LinkDirection(aqm="red")


# -- through real network namespaces -----------------------------------------------------------
needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None,
    reason="network namespaces and TUN devices need root, /dev/net/tun and iproute2",
)


@needs_netns
@pytest.mark.e2e
def test_a_real_quic_transfer_through_a_jittery_rate_capped_link_completes(tmp_path):
    from flq.netem.namespaces import EmulatedLink
    from flq.transport.certs import make_certificates

    certs = make_certificates(tmp_path / "certs")
    link_dir = LinkDirection(delay_ms=25, jitter_ms=10, loss=0.01, rate_mbps=20.0)
    port = free_port()
    size = 2_000_000
    with EmulatedLink(up=link_dir, down=link_dir) as link:
        server = subprocess.Popen(
            [
                *link.prefix("b"),
                sys.executable,
                "-m",
                "harness.quic_echo",
                "serve",
                "0.0.0.0",
                str(port),
                str(certs["server_cert"]),
                str(certs["server_key"]),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout.readline().strip() == "listening"
            sent = subprocess.run(
                [
                    *link.prefix("a"),
                    sys.executable,
                    "-m",
                    "harness.quic_echo",
                    "send",
                    link.address("b"),
                    str(port),
                    str(certs["ca_cert"]),
                    str(size),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            server.kill()
            server.wait()
        assert sent.returncode == 0, sent.stderr
        received, expected, _seconds = sent.stdout.split()
        assert received == expected  # every byte arrived, in order
        assert link.up.delivered > size / MTU and link.up.lost > 0  # it really went through the lossy link
