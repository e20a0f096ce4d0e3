"""The virtual clock: how long a client's round would have taken on its tier.

In simulation every client runs on the same machine, so wall time says nothing about tiers.
A client's time on the virtual clock is its measured compute seconds times its tier's compute
factor, plus the transfer time of the bytes it actually sent and received over its tier's
network, plus the tier's per-round start-up (a deployed client's message pickup, process start
and model load, which `flq calibrate` measures; 0 for tiers that do not give it). Only time is
modelled; everything learned comes from real training. The model is described by
``ClockModel.describe()``, which the ServerApp prints and stores in run.json; docs/clock.md
explains each term and its limits.

Everything here is a pure function on plain numbers (and ``TierProfile``s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..scheduler.spread import Spread, parse_factor_spread
from .tiers import REFERENCE_TIER, TierError, TierProfile

POLICIES = ("wait", "drop", "budget")  # what a round does with clients past its deadline
# Which clock a run keeps: auto = virtual in simulation, real in a deployment.
CLOCKS = ("auto", "virtual", "real")

# Round trips before the first request can go out on a NEW connection.
# TCP: SYN/SYN-ACK (1) + TLS 1.3 (1) or TLS 1.2 (2); QUIC folds transport and TLS 1.3 into one,
# and a resumed QUIC session sends its request in the first flight (0-RTT).
HANDSHAKE_RTTS: dict[str, int] = {
    "persistent": 0,  # connection kept open across rounds: no handshake
    "tcp": 1,
    "tcp+tls1.3": 2,
    "tcp+tls1.2": 3,
    "quic": 1,
    "quic-0rtt": 0,
}
DEFAULT_TRANSPORT = "tcp+tls1.3"  # Flower's stock Fleet API over TLS

# What a deployed round waits on besides start-up, work and transfer: Flower 1.41's polling (an idle
# SuperNode asks for a message every 3 s and sends a reply once its 0.5 s wait finds it:
# flwr/supernode/start_client_internal.py; its SuperExec looks for a ClientApp to start every 1 s:
# flwr/supercore/superexec/run_superexec.py) and the ServerApp's own reply poll (strategy/messages.py).
# On average a round waits half of each.
NODE_POLL_S = 3.0
NODE_REPLY_POLL_S = 0.5
SUPEREXEC_POLL_S = 1.0
SERVER_REPLY_POLL_S = 0.2
PICKUP_S = (NODE_POLL_S + NODE_REPLY_POLL_S + SUPEREXEC_POLL_S + SERVER_REPLY_POLL_S) / 2

MSS_BYTES = 1460  # TCP payload per packet on a 1500-byte MTU path
MATHIS_C = math.sqrt(1.5)  # Mathis et al. (1997) constant for periodic loss, no delayed ACKs


@dataclass(frozen=True)
class ClientTime:
    """One client's round on the clock."""

    compute_s: float
    comm_s: float  # transfer, handshakes included
    startup_s: float  # the tier's per-round start-up
    total_s: float


# -- network ------------------------------------------------------------------------------
def handshake_rtts_for(transport: str) -> int:
    try:
        return HANDSHAKE_RTTS[transport]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}; known: {', '.join(HANDSHAKE_RTTS)}") from None


def goodput_mbps(mbps: float, rtt_ms: float, loss: float, mss_bytes: int = MSS_BYTES) -> float:
    """Payload rate a loss-based congestion controller sustains on this link.

    Lost packets are resent (x (1 - loss)), and each loss halves the congestion window, which
    caps the rate at the Mathis bound MSS * C / (RTT * sqrt(loss)) whatever the bandwidth.
    QUIC's NewReno/CUBIC react to loss the same way, so the bound applies to both transports.
    """
    _check_link(mbps, rtt_ms, loss)
    rate = mbps * (1.0 - loss)
    if loss > 0 and rtt_ms > 0:
        mathis_mbps = mss_bytes * 8 * MATHIS_C / (rtt_ms / 1000.0 * math.sqrt(loss)) / 1e6
        rate = min(rate, mathis_mbps)
    return rate


def transfer_seconds(nbytes: int, mbps: float, rtt_ms: float, loss: float = 0.0, handshake_rtts: int = 0) -> float:
    """One request/response exchange carrying ``nbytes``, on a connection opened with
    ``handshake_rtts`` round trips (0: already open).

        (handshake_rtts + 1) * RTT + nbytes * 8 / goodput

    The ``+ 1`` is the exchange itself (request out, response back). Slow start and Flower's
    polling interval are not modelled (docs/clock.md, "Limits").
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    if handshake_rtts < 0:
        raise ValueError(f"handshake_rtts must be >= 0, got {handshake_rtts}")
    rate_bps = goodput_mbps(mbps, rtt_ms, loss) * 1e6
    return (handshake_rtts + 1) * rtt_ms / 1000.0 + nbytes * 8 / rate_bps


def _check_link(mbps: float, rtt_ms: float, loss: float) -> None:
    if not mbps > 0:
        raise ValueError(f"bandwidth must be > 0 Mb/s, got {mbps}")
    if not rtt_ms >= 0:
        raise ValueError(f"rtt_ms must be >= 0, got {rtt_ms}")
    if not 0.0 <= loss < 1.0:
        raise ValueError(f"loss must be in [0, 1), got {loss}")


# -- one client, one round ----------------------------------------------------------------
def compute_seconds(measured_compute_s: float, tier: TierProfile) -> float:
    """Measured compute on the reference machine, as the tier would have taken it."""
    if measured_compute_s < 0:
        raise ValueError(f"measured compute seconds must be >= 0, got {measured_compute_s}")
    return measured_compute_s * tier.compute_factor


def comm_seconds(tier: TierProfile, bytes_up: int, bytes_down: int, handshake_rtts: int) -> float:
    """The round's download (which opens the connection) plus its upload, on the tier's link."""
    down = transfer_seconds(bytes_down, tier.downlink_mbps, tier.rtt_ms, tier.loss, handshake_rtts)
    up = transfer_seconds(bytes_up, tier.uplink_mbps, tier.rtt_ms, tier.loss, 0)
    return down + up


def client_round_time(
    measured_compute_s: float, tier: TierProfile, bytes_up: int, bytes_down: int, handshake_rtts: int
) -> ClientTime:
    compute = compute_seconds(measured_compute_s, tier)
    comm = comm_seconds(tier, bytes_up, bytes_down, handshake_rtts)
    return ClientTime(compute_s=compute, comm_s=comm, startup_s=tier.startup_s, total_s=compute + comm + tier.startup_s)


def misfit_for(spread: Spread, partition_id: int | None, num_partitions: int | None, tier: str | None) -> float:
    """A client's ``compute-misfit`` value; a spread by partition needs the client's partition."""
    return float(spread.value_for(partition_id, num_partitions, tier))


# -- deadlines and straggler policies -----------------------------------------------------
def check_policy(policy: str, deadline_s: float | None) -> None:
    """``drop`` and ``budget`` need a positive deadline; ``wait`` has none."""
    if policy not in POLICIES:
        raise ValueError(f"unknown straggler policy {policy!r}; choose one of {POLICIES}")
    if policy != "wait" and (deadline_s is None or not deadline_s > 0):
        raise ValueError(f"policy {policy!r} needs a deadline > 0 s, got {deadline_s}")


def is_on_time(finish_s: float, deadline_s: float | None, policy: str) -> bool:
    """Whether a reply that finished at ``finish_s`` (on the clock) counts; ``wait`` takes everyone."""
    check_policy(policy, deadline_s)
    return policy == "wait" or finish_s <= deadline_s


def round_time(finish_times: Sequence[float | None], deadline_s: float | None, policy: str) -> float:
    """The round's length on the clock.

    ``finish_times`` holds, for every sampled client, when its reply reached the server (valid or
    not), or None if it never replied. The server closes the round when the last reply is in; under
    ``drop``/``budget`` it stops waiting at the deadline, so a late or silent client makes the round
    exactly the deadline. Under ``wait`` a silent client is not on the clock (the grid's timeout is
    wall time, not modelled): the round is the slowest reply.
    """
    check_policy(policy, deadline_s)
    arrived = [t for t in finish_times if t is not None]
    if policy == "wait":
        return float(max(arrived, default=0.0))
    if len(arrived) < len(finish_times) or any(t > deadline_s for t in arrived):
        return float(deadline_s)
    return float(max(arrived, default=0.0))


# -- the model, as run.json records it ----------------------------------------------------
NO_MISFIT = Spread("same", ("1",))


@dataclass(frozen=True)
class ClockModel:
    """The virtual clock of a simulated run: tiers plus the transport's handshake cost.

    ``compute_misfit`` (run config ``compute-misfit``) is each client's true compute over its
    tier's factor: what a throttled or mis-declared device really takes. Only the clock and the
    client's own budget stop know it; the schedulers plan from the tier, as they would in a
    deployment where a node's declared tier is wrong, and can only learn it from the times.
    """

    tiers: Mapping[str, TierProfile]
    handshake_rtts: int = HANDSHAKE_RTTS[DEFAULT_TRANSPORT]
    transport: str = DEFAULT_TRANSPORT
    compute_misfit: Spread = NO_MISFIT

    @classmethod
    def for_transport(
        cls, tiers: Mapping[str, TierProfile], transport: str = DEFAULT_TRANSPORT, compute_misfit: str = "1"
    ) -> ClockModel:
        return cls(
            tiers=dict(tiers),
            handshake_rtts=handshake_rtts_for(transport),
            transport=transport,
            compute_misfit=parse_factor_spread(compute_misfit, "compute-misfit"),
        )

    def misfit(self, partition_id: int | None, num_partitions: int | None, tier: str | None) -> float:
        """This client's true compute over its tier's factor (1: the tier is right)."""
        return misfit_for(self.compute_misfit, partition_id, num_partitions, tier)

    def tier(self, name: str | None) -> TierProfile:
        """The profile of ``name``; a client that names no tier is the reference machine."""
        key = REFERENCE_TIER if name is None else name
        if key not in self.tiers:
            raise TierError(f"tier {key!r} is not in the clock model; known: {sorted(self.tiers)}")
        return self.tiers[key]

    def client_time(
        self, tier: str | None, measured_compute_s: float, bytes_up: int, bytes_down: int, misfit: float = 1.0
    ) -> ClientTime:
        """One client's round; ``misfit`` (``self.misfit(...)``) scales its compute beyond its tier's factor."""
        return client_round_time(
            measured_compute_s * misfit, self.tier(tier), bytes_up, bytes_down, self.handshake_rtts
        )

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (for run.json)."""
        return {
            "name": "virtual",
            "compute": "measured compute seconds on the reference machine x the tier's compute_factor"
            + ("" if self.compute_misfit == NO_MISFIT else " x the client's compute_misfit (unknown to schedulers)"),
            "compute_misfit": str(self.compute_misfit),
            "transfer": (
                "download (opens the connection) + upload; each: (handshake_rtts + 1) x RTT + bytes x 8 / goodput, "
                f"goodput = min(bandwidth x (1 - loss), {MSS_BYTES} B x 8 x {MATHIS_C:.3f} / (RTT x sqrt(loss)))"
            ),
            "startup": "the tier's startup_s each round (message pickup, process start, model load; 0: not given)",
            "round": "slowest reply; under drop/budget capped at the deadline, which a late or silent client makes it",
            "transport": self.transport,
            "handshake_rtts": self.handshake_rtts,
            "calibration": "compute factors are estimates from public figures; see docs/clock.md",
            "tiers": {name: t.to_dict() for name, t in sorted(self.tiers.items())},
        }

    def describe_text(self) -> str:
        """A few lines for the log."""
        lines = [
            f"virtual clock: compute = measured s x tier factor; transfer = (handshakes {self.handshake_rtts} + 1) "
            f"x RTT + bytes / goodput (loss-capped); + the tier's start-up; transport {self.transport}",
        ]
        if self.compute_misfit != NO_MISFIT:
            lines.append(f"  compute misfit (true / tier compute, unknown to schedulers): {self.compute_misfit}")
        for name, t in sorted(self.tiers.items()):
            lines.append(
                f"  {name}: x{t.compute_factor:g} compute, up {t.uplink_mbps:g} / down {t.downlink_mbps:g} Mb/s, "
                f"RTT {t.rtt_ms:g} ms, loss {t.loss:g}" + (f", start-up {t.startup_s:g} s" if t.startup_s else "")
            )
        return "\n".join(lines)


def real_clock_description() -> dict[str, Any]:
    """What run.json records for a deployment, where the clock is the real one."""
    return {
        "name": "real",
        "compute": "seconds each client measured for its local work",
        "round": "wall time from sending the round's messages to closing it (the deadline is the grid's timeout)",
    }
