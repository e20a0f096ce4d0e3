"""A small pure-Python federation for scheduler tests: three tiers, noisy clients, a deadline.

Not FLQ's virtual clock (flq/sim): a stand-in with the same shape of truth, so scheduler
tests need no simulator, Flower or torch. A client's round time on the clock is

    compute = steps * STEP_S[bits] * (batch + c) / (8 + c) * tier.compute_factor * slowness * noise
    transfer = 2 * rtt + rank * BYTES_PER_RANK * 8e-6 * (1/down + 1/up) / (1 - loss) * noise

(``slowness`` is a hidden per-client multiplier the tier prior does not know; step time does
not depend on rank; ``batch`` is the assignment's batch size, else the tier's 8, and a step's
time is proportional to it plus ``c``, the step's fixed cost in examples' worth, 0 by
default). Under the ``budget`` policy a client stops, as the ClientApp does, before its
compute plus its predicted transfers would pass its budget. The
global loss falls by a share of its distance to a floor that grows with the accepted clients'
steps and (logarithmically) their ranks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from flq.scheduler.base import Assignment, ClientInfo, ClientReport, RoundOutcome

STEP_S = {4: 3.0, 8: 2.6, 16: 2.2}  # reference seconds per local step, by bits
BYTES_PER_RANK = 200_000  # adapter bytes per rank unit, each way


@dataclass(frozen=True)
class StandInTier:
    """The attributes of flq.sim.tiers.TierProfile that schedulers read."""

    name: str
    compute_factor: float
    memory_limit_mb: float | None
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    loss: float = 0.0
    max_rank: int | None = None
    threads: int = 1
    batch_size: int = 8
    mixed_precision: bool = False


TIERS = {
    "gpu": StandInTier("gpu", 0.25, 24_000, 100.0, 200.0, 20.0, 0.0, 64),
    "cpu": StandInTier("cpu", 1.0, 8_000, 20.0, 50.0, 50.0, 0.0, 32),
    "edge": StandInTier("edge", 3.0, 4_000, 5.0, 10.0, 150.0, 0.02, 16),
}


@dataclass
class SimClient:
    node_id: int
    tier: str
    slowness: float = 1.0  # hidden truth the prior does not know
    fails: bool = False  # never replies


@dataclass
class SimulatedFederation:
    clients: list[SimClient]
    deadline_s: float
    policy: str = "drop"  # drop | budget
    tiers: Mapping[str, StandInTier] = field(default_factory=lambda: TIERS)
    noise: float = 0.05
    seed: int = 0
    loss: float = 2.0
    loss_floor: float = 0.2
    rank_max: int = 64
    local_steps: int = 8
    step_fixed_examples: float = 0.0  # c above

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def infos(self) -> list[ClientInfo]:
        return [ClientInfo(c.node_id, c.tier, c.node_id, self.tiers[c.tier].memory_limit_mb, 100) for c in self.clients]

    def step_s(self, client: SimClient, bits: int) -> float:
        return STEP_S[bits] * self.tiers[client.tier].compute_factor * client.slowness

    def transfer_s(self, client: SimClient, rank: int) -> float:
        tier = self.tiers[client.tier]
        megabits = rank * BYTES_PER_RANK * 8e-6
        return 2 * tier.rtt_ms / 1000 + megabits * (1 / tier.downlink_mbps + 1 / tier.uplink_mbps) / (1 - tier.loss)

    def _jitter(self) -> float:
        return math.exp(self.rng.gauss(0.0, self.noise))

    def report(self, client: SimClient, a: Assignment) -> ClientReport:
        if client.fails:
            return ClientReport(client.node_id, "failed", a.rank, a.bits, client.tier)
        batch = min(self.tiers[client.tier].batch_size, a.batch_size or self.tiers[client.tier].batch_size)
        c = self.step_fixed_examples
        per_step = self.step_s(client, a.bits) * (batch + c) / (8 + c) * self._jitter()
        steps = a.local_steps
        if self.policy == "budget" and a.budget_s is not None:
            # as the ClientApp does: stop before the next step would push compute plus the
            # predicted transfers past the budget; at least one step
            room = (a.budget_s - self.transfer_s(client, a.rank)) // per_step
            steps = max(1, min(steps, int(room)))
        compute = steps * per_step
        transfer = self.transfer_s(client, a.rank) * self._jitter()
        total = compute + transfer
        late = total > self.deadline_s
        return ClientReport(
            client.node_id,
            "late" if late else "ok",
            a.rank,
            a.bits,
            client.tier,
            steps=steps,
            num_examples=steps * batch,
            compute_s=compute,
            transfer_s=transfer,
            round_s=total,
            bytes_up=a.rank * BYTES_PER_RANK,
            bytes_down=a.rank * BYTES_PER_RANK,
            loss_before=self.loss,
            loss_after=self.loss * 0.97,
            on_time=not late,
        )

    def run_round(
        self, server_round: int, assignments: Mapping[int, Assignment]
    ) -> tuple[list[ClientReport], RoundOutcome]:
        reports = [self.report(c, assignments[c.node_id]) for c in self.clients]
        accepted = [r for r in reports if r.status == "ok"]
        round_s = self.deadline_s if len(accepted) < len(reports) else max(r.round_s for r in reports)
        before = self.loss
        work = sum(r.steps * math.log2(1 + r.rank) for r in accepted)
        full = len(reports) * self.local_steps * math.log2(1 + self.rank_max)
        self.loss = self.loss_floor + (before - self.loss_floor) * (1 - 0.3 * work / full)
        return reports, RoundOutcome(server_round, round_s, self.deadline_s, before, self.loss)


def on_time_share(reports: list[ClientReport]) -> float:
    return sum(r.status == "ok" for r in reports) / len(reports)


def three_tier_clients(per_tier: int, slowness: Mapping[str, float] | None = None) -> list[SimClient]:
    slowness = slowness or {}
    clients = []
    for t, tier in enumerate(("gpu", "cpu", "edge")):
        for i in range(per_tier):
            clients.append(SimClient(t * 100 + i, tier, slowness.get(tier, 1.0)))
    return clients
