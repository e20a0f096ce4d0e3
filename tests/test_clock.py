"""The virtual clock on hand-computed cases and the straggler policies."""

import dataclasses
import json
import math

import pytest

from flq.scheduler.spread import SpreadError
from flq.sim.clock import (
    HANDSHAKE_RTTS,
    ClientTime,
    ClockModel,
    client_round_time,
    goodput_mbps,
    handshake_rtts_for,
    is_on_time,
    round_time,
    transfer_seconds,
)
from flq.sim.tiers import TierError, TierProfile, load_tiers

EDGE = TierProfile("edge", compute_factor=4.0, uplink_mbps=5.0, downlink_mbps=20.0, rtt_ms=60.0)


# -- transfers ----------------------------------------------------------------------------
def test_transfer_is_one_exchange_plus_serialisation():
    # 1 MB over 8 Mb/s: 8e6 bits / 8e6 b/s = 1.0 s; plus one RTT of 50 ms for the exchange.
    assert transfer_seconds(1_000_000, 8.0, 50.0) == pytest.approx(1.05)


def test_handshakes_add_whole_round_trips():
    # TCP+TLS 1.3: 2 handshake RTTs + 1 for the exchange = 3 x 50 ms, plus 1.0 s of payload.
    assert transfer_seconds(1_000_000, 8.0, 50.0, 0.0, handshake_rtts=2) == pytest.approx(1.15)
    # QUIC 0-RTT resumption: the request goes in the first flight, only the exchange's RTT is paid.
    zero_rtt = HANDSHAKE_RTTS["quic-0rtt"]
    assert transfer_seconds(1_000_000, 8.0, 50.0, 0.0, handshake_rtts=zero_rtt) == pytest.approx(1.05)


def test_loss_resends_packets_when_the_window_is_not_the_limit():
    # No RTT, so no Mathis cap: goodput = 10 Mb/s x (1 - 0.2) = 8 Mb/s -> 1 MB takes 1.0 s.
    assert goodput_mbps(10.0, 0.0, 0.2) == pytest.approx(8.0)
    assert transfer_seconds(1_000_000, 10.0, 0.0, 0.2) == pytest.approx(1.0)


def test_loss_caps_the_rate_at_the_mathis_bound():
    # 1460 B x 8 x sqrt(1.5) / (0.1 s x sqrt(0.01)) = 11680 x 1.2247449 / 0.01 = 1,430,502 b/s = 1.4305 Mb/s,
    # far below 100 Mb/s x 0.99. 1 MB: 8e6 / 1.430502e6 = 5.5925 s, plus 100 ms for the exchange.
    mathis = 1460 * 8 * math.sqrt(1.5) / (0.1 * math.sqrt(0.01)) / 1e6
    assert mathis == pytest.approx(1.430502, rel=1e-6)
    assert goodput_mbps(100.0, 100.0, 0.01) == pytest.approx(mathis)
    assert transfer_seconds(1_000_000, 100.0, 100.0, 0.01) == pytest.approx(0.1 + 8e6 / (mathis * 1e6))
    # On a slow, short link the bandwidth binds instead: Mathis at 10 ms is 14.3 Mb/s > 1 x 0.99.
    assert goodput_mbps(1.0, 10.0, 0.01) == pytest.approx(0.99)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 8.0, 50.0), "nbytes"),
        ((1, 0.0, 50.0), "bandwidth"),
        ((1, 8.0, -1.0), "rtt_ms"),
        ((1, 8.0, 50.0, 1.0), "loss"),
        ((1, 8.0, 50.0, 0.0, -1), "handshake_rtts"),
    ],
)
def test_transfer_rejects_impossible_links(args, message):
    with pytest.raises(ValueError, match=message):
        transfer_seconds(*args)


def test_transports_map_to_handshake_round_trips():
    assert handshake_rtts_for("tcp+tls1.3") == 2 and handshake_rtts_for("tcp+tls1.2") == 3
    assert handshake_rtts_for("quic") == 1 and handshake_rtts_for("quic-0rtt") == 0
    with pytest.raises(ValueError, match="unknown transport 'sctp'"):
        handshake_rtts_for("sctp")


# -- one client ---------------------------------------------------------------------------
def test_client_round_time_scales_compute_and_adds_both_transfers():
    # compute: 10 s measured x 4 = 40 s.
    # down: 2.5 MB = 20 Mbit over 20 Mb/s = 1.0 s, + (2 handshake + 1) x 60 ms = 1.18 s.
    # up: 1.25 MB = 10 Mbit over 5 Mb/s = 2.0 s, + 1 x 60 ms = 2.06 s. comm = 3.24 s, total 43.24 s.
    t = client_round_time(10.0, EDGE, bytes_up=1_250_000, bytes_down=2_500_000, handshake_rtts=2)
    assert t.compute_s == pytest.approx(40.0)
    assert t.comm_s == pytest.approx(3.24)
    assert t.total_s == pytest.approx(43.24)


def test_a_tiers_start_up_is_paid_every_round_beside_compute_and_transfer():
    slow_start = dataclasses.replace(EDGE, startup_s=12.5)
    t = client_round_time(10.0, slow_start, bytes_up=1_250_000, bytes_down=2_500_000, handshake_rtts=2)
    assert (t.compute_s, t.comm_s, t.startup_s) == (pytest.approx(40.0), pytest.approx(3.24), 12.5)
    assert t.total_s == pytest.approx(43.24 + 12.5)
    model = ClockModel.for_transport({"edge": slow_start})
    assert "start-up 12.5 s" in model.describe_text() and model.describe()["tiers"]["edge"]["startup_s"] == 12.5


def test_a_gpu_tier_shrinks_compute():
    gpu = TierProfile("gpu", compute_factor=0.025, uplink_mbps=100.0, downlink_mbps=100.0, rtt_ms=0.0)
    # 2.2 s/step x 8 steps = 17.6 s measured -> 0.44 s; no bytes, no RTT -> no comm.
    assert client_round_time(17.6, gpu, 0, 0, 0) == ClientTime(pytest.approx(0.44), 0.0, 0.0, pytest.approx(0.44))


def test_clock_model_looks_up_tiers_and_uses_the_transport():
    model = ClockModel.for_transport({"edge": EDGE, "reference": load_tiers()["reference"]}, "quic")
    assert model.handshake_rtts == 1
    # Same case as above with 1 handshake RTT instead of 2: comm = 3.24 - 0.06 = 3.18 s.
    assert model.client_time("edge", 10.0, 1_250_000, 2_500_000).comm_s == pytest.approx(3.18)
    assert model.tier(None).name == "reference"  # a client that names no tier is the reference machine
    with pytest.raises(TierError, match="tier 'tpu' is not in the clock model"):
        model.client_time("tpu", 1.0, 0, 0)


def test_clock_model_description_is_json_and_names_its_parts():
    model = ClockModel.for_transport(load_tiers(), "tcp+tls1.3")
    described = json.loads(json.dumps(model.describe()))
    assert described["name"] == "virtual" and described["handshake_rtts"] == 2
    assert described["tiers"]["cpu-edge"]["compute_factor"] == load_tiers()["cpu-edge"].compute_factor
    text = model.describe_text()
    assert "tcp+tls1.3" in text and "jetson-nano: x6 compute" in text


# -- straggler policies -------------------------------------------------------------------
def test_wait_takes_every_reply_however_late():
    assert is_on_time(1e9, None, "wait") and is_on_time(1e9, 10.0, "wait")


@pytest.mark.parametrize("policy", ["drop", "budget"])
def test_drop_and_budget_accept_replies_up_to_the_deadline(policy):
    assert is_on_time(10.0, 10.0, policy)
    assert not is_on_time(10.01, 10.0, policy)


@pytest.mark.parametrize(("policy", "deadline"), [("drop", None), ("budget", 0.0), ("hurry", 10.0)])
def test_policies_are_checked(policy, deadline):
    with pytest.raises(ValueError, match="deadline|unknown straggler policy"):
        is_on_time(1.0, deadline, policy)


def test_wait_round_is_the_slowest_reply_and_ignores_silent_clients():
    assert round_time([3.0, 7.0, None], None, "wait") == 7.0
    assert round_time([], None, "wait") == 0.0


@pytest.mark.parametrize("policy", ["drop", "budget"])
def test_deadline_rounds_end_with_the_slowest_or_at_the_deadline(policy):
    assert round_time([3.0, 7.0], 10.0, policy) == 7.0  # everyone on time
    assert round_time([3.0, 12.0], 10.0, policy) == 10.0  # a late client: the server stopped waiting
    assert round_time([3.0, None], 10.0, policy) == 10.0  # a silent client: the same
    assert round_time([10.0], 10.0, policy) == 10.0  # exactly at the deadline is on time


def test_a_round_record_counts_the_start_up_outside_training_on_either_clock():
    from flq.strategy.accounting import RoundAccounting

    model = ClockModel.for_transport({"edge": dataclasses.replace(EDGE, startup_s=12.5)}, "quic")
    from flq.strategy.roster import NodeProfile

    node = NodeProfile(node_id=1, partition_id=0, tier="edge", num_partitions=2)
    virtual = RoundAccounting(model, "virtual", None, "wait", 8)
    assert virtual.client_times(node, 10.0, 1_250_000, 2_500_000, None) == (
        pytest.approx(40.0),
        pytest.approx(3.18 + 12.5),
    )
    real = RoundAccounting(model, "real", None, "wait", 8)  # what the client really spent is in its arrival
    assert real.client_times(node, 10.0, 1_250_000, 2_500_000, arrived_s=31.0) == (10.0, 21.0)


# -- compute misfit: true speed the schedulers are not told ------------------------------
def test_a_misfit_client_is_charged_its_true_compute_and_a_fitting_one_its_tiers():
    from flq.strategy.accounting import RoundAccounting
    from flq.strategy.roster import NodeProfile

    model = ClockModel.for_transport({"edge": EDGE}, "quic", compute_misfit="cycle:1,3")
    accounting = RoundAccounting(model, "virtual", None, "wait", 8)
    fitting = NodeProfile(node_id=1, partition_id=0, tier="edge", num_partitions=4)
    throttled = NodeProfile(node_id=2, partition_id=1, tier="edge", num_partitions=4)
    # EDGE's factor is 4: 10 measured s are 40 s on its tier, 120 s at three times slower; transfer is unchanged
    assert accounting.client_times(fitting, 10.0, 1_250_000, 2_500_000, None) == (
        pytest.approx(40.0),
        pytest.approx(3.18),
    )
    assert accounting.client_times(throttled, 10.0, 1_250_000, 2_500_000, None) == (
        pytest.approx(120.0),
        pytest.approx(3.18),
    )
    real = RoundAccounting(model, "real", None, "wait", 8)  # a deployment's clock is what really happened
    assert real.client_times(throttled, 10.0, 0, 0, arrived_s=12.0) == (10.0, 2.0)


def test_a_misfit_can_go_by_tier_and_is_described_only_when_set():
    model = ClockModel.for_transport({"edge": EDGE}, "quic", compute_misfit="tier:edge=0.5,*=1")
    assert model.misfit(None, None, "edge") == 0.5 and model.misfit(None, None, "gpu") == 1.0
    assert "compute_misfit" in model.describe()["compute"] and "tier:edge=0.5,*=1" in model.describe_text()
    plain = ClockModel.for_transport({"edge": EDGE}, "quic")
    assert "misfit" not in plain.describe()["compute"] and "misfit" not in plain.describe_text()


@pytest.mark.parametrize("spec", ["0", "-1", "cycle:1,fast", "inf", "cycle:"])
def test_a_misfit_must_be_positive_finite_factors(spec):
    with pytest.raises(SpreadError, match="compute-misfit|empty"):
        ClockModel.for_transport({"edge": EDGE}, "quic", compute_misfit=spec)
