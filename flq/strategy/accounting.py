"""A round's accounting, on plain data: client times on the run's clock, the deadline policy,
each sampled client's record and the round's time. No Flower: the strategy hands it numbers.

Virtual clock: a client's compute is what it measured times its tier's factor, its transfers
are modelled from the bytes it sent and received (``flq.sim.clock``). Real clock: its time is
when its reply arrived after the send; what is not compute is transfer or wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from .. import wire
from ..adapter import AdapterState
from ..logs import log
from ..metrics.records import ClientRoundRecord
from ..scheduler.base import Assignment, ClientReport, RoundOutcome
from ..scheduler.priors import own_batch_size
from ..sim.clock import ClockModel, round_time
from ..sim.tiers import REFERENCE_TIER, TierError, TierProfile
from ..status import ClientStatus
from .roster import NodeProfile


@dataclass(frozen=True)
class ClientPlan:
    """What one sampled node was asked to do, and what it was sent."""

    node_id: int
    assignment: Assignment
    sent: AdapterState  # what the node received (the global truncated to its rank)
    bytes_down: int
    budget_s: float | None = None  # the time budget it was sent (budget policy), on the run's clock


@dataclass
class RoundResult:
    """What one training round produced: the records, the scheduler's reports, the new global."""

    server_round: int
    clients: list[ClientRoundRecord] = field(default_factory=list)
    reports: list[ClientReport] = field(default_factory=list)
    round_s: float = 0.0
    train_loss: float | None = None
    global_state: AdapterState | None = None  # None: no update accepted, the global is unchanged
    num_accepted: int = 0


@dataclass(frozen=True)
class ResumePoint:
    """Where a checkpointed run continues."""

    start_round: int
    clock_s: float
    rng_state: list | None = None
    optimizer_state: Mapping[str, np.ndarray] | None = None  # the server optimizer's moments
    control_state: Mapping[str, np.ndarray] | None = None  # SCAFFOLD's server control variate


class RoundAccounting:
    """Per-client times, the deadline policy and the records of one run's rounds."""

    def __init__(
        self, clock_model: ClockModel, clock: str, deadline_s: float | None, policy: str, batch_size: int
    ) -> None:
        self.clock_model = clock_model
        self.clock = clock
        self.deadline_s = deadline_s if policy != "wait" else None
        self.policy = policy
        self.batch_size = batch_size  # the run's examples per step (a tier may have its own)
        self._warned_tiers: set[str | None] = set()

    def tier_profile(self, name: str | None) -> TierProfile | None:
        try:
            return self.clock_model.tier(name)
        except TierError:
            if name not in self._warned_tiers:
                self._warned_tiers.add(name)
                log.warning("tier %r is not in the server's tier profiles: timed as the reference machine", name)
            return self.clock_model.tiers.get(REFERENCE_TIER)

    def within_tier_ceiling(self, tier: str | None, a: Assignment) -> Assignment:
        """A tier's rank ceiling (e.g. a Jetson's) is a device limit no scheduler may exceed."""
        profile = self.tier_profile(tier)
        if profile is None or profile.max_rank is None or a.rank <= profile.max_rank:
            return a
        return replace(a, rank=profile.max_rank)

    def batch_scale(self, plan: ClientPlan, tier: str | None) -> float:
        """The client's own batch over the smaller one its assignment gave (1 if none)."""
        asked = plan.assignment.batch_size
        if not asked:
            return 1.0
        own = own_batch_size(self.tier_profile(tier), self.batch_size)
        return own / min(asked, own)

    def client_times(
        self, node: NodeProfile, measured: float, bytes_up: int, bytes_down: int, arrived_s: float | None
    ) -> tuple[float, float]:
        """(compute s, the rest) on the run's clock; ``arrived_s``: the reply's arrival after the send.

        The rest is what the round took outside training: transfer and, on the real clock what
        the client really spent starting, on the virtual clock the tier's ``startup_s``.
        """
        if self.clock == "real":
            return (measured, 0.0) if arrived_s is None else (measured, max(0.0, arrived_s - measured))
        profile = self.tier_profile(node.tier)
        if profile is None or profile.name not in self.clock_model.tiers:
            return measured, 0.0
        misfit = self.clock_model.misfit(node.partition_id, node.num_partitions, node.tier)
        times = self.clock_model.client_time(profile.name, measured, bytes_up, bytes_down, misfit)
        return times.compute_s, times.comm_s + times.startup_s

    def client_record(
        self,
        plan: ClientPlan,
        profile: NodeProfile,
        status: ClientStatus,
        metrics: Mapping | None = None,
        bytes_up: int = 0,
        reason: str = "",
        arrived_s: float | None = None,
    ) -> ClientRoundRecord:
        metrics = metrics or {}
        measured = float(metrics.get(wire.COMPUTE_S, 0.0))
        compute_s, comm_s = self.client_times(profile, measured, bytes_up, plan.bytes_down, arrived_s)
        return ClientRoundRecord(
            node_id=plan.node_id,
            status=status,
            partition_id=profile.partition_id,
            tier=profile.tier,
            rank=plan.assignment.rank,
            bits=plan.assignment.bits,
            steps=int(metrics.get(wire.STEPS, 0)),
            planned_steps=plan.assignment.local_steps,
            budget_s=plan.budget_s,
            num_examples=int(metrics.get(wire.NUM_EXAMPLES, 0)),
            batch_size=int(plan.assignment.batch_size or 0),
            loss_before=_opt_float(metrics.get(wire.LOSS_BEFORE)),
            loss_after=_opt_float(metrics.get(wire.LOSS_AFTER)),
            compute_s=compute_s,
            measured_compute_s=measured,
            comm_s=comm_s,
            round_s=compute_s + comm_s,
            bytes_up=bytes_up,
            bytes_down=plan.bytes_down,
            peak_mem_mb=float(metrics.get(wire.PEAK_MEM_MB, 0.0)),
            threads=int(metrics.get(wire.TORCH_THREADS, 0)),
            on_time=True,
            reason=reason,
        )

    def apply_deadline(self, record: ClientRoundRecord) -> None:
        """Past the deadline (on the run's clock): late, and under drop/budget discarded."""
        if self.deadline_s is None or record.round_s <= self.deadline_s:
            return
        record.on_time = False
        if record.status == ClientStatus.OK:
            record.status = ClientStatus.LATE
            record.reason = f"finished at {record.round_s:.1f}s > deadline {self.deadline_s:.1f}s"

    def silent_record(self, plan: ClientPlan, profile: NodeProfile) -> ClientRoundRecord:
        """A sampled node that sent nothing before the Grid stopped waiting.

        On the real clock with a deadline the Grid's timeout IS the deadline: the node missed it,
        so it is late (dropped by the policy), with no times (none were measured). Otherwise the
        timeout is only a hang guard and a silent node has failed.
        """
        if self.clock == "real" and self.deadline_s is not None:
            record = self.client_record(
                plan, profile, ClientStatus.LATE, reason=f"no reply by the deadline ({self.deadline_s:.1f}s)"
            )
            record.on_time = False
            return record
        return self.client_record(plan, profile, ClientStatus.FAILED, reason="no reply before the timeout")

    def round_time(self, clients: list[ClientRoundRecord], replied: set[int]) -> float:
        """The slowest reply; under drop/budget capped at the deadline a late or silent client causes."""
        finish = [None if c.status == ClientStatus.FAILED or c.node_id not in replied else c.round_s for c in clients]
        return round_time(finish, self.deadline_s, self.policy)


def scheduler_report(r: ClientRoundRecord) -> ClientReport:
    """A client's round as the scheduler observes it."""
    return ClientReport(
        node_id=r.node_id,
        status=r.status,
        rank=r.rank,
        bits=r.bits,
        tier=r.tier,
        steps=r.steps,
        num_examples=r.num_examples,
        compute_s=r.compute_s,
        transfer_s=r.comm_s,
        round_s=r.round_s,
        bytes_up=r.bytes_up,
        bytes_down=r.bytes_down,
        loss_before=r.loss_before,
        loss_after=r.loss_after,
        on_time=r.on_time,
    )


def round_outcome(
    server_round: int,
    round_s: float,
    deadline_s: float | None,
    before: Mapping[str, float] | None,
    after: Mapping[str, float] | None,
) -> RoundOutcome:
    """The round as the scheduler observes it: its time, and the server's evaluation before and after."""
    return RoundOutcome(
        server_round, round_s, deadline_s, _metric(before, "loss"), _metric(after, "loss"), _metric(after, "score")
    )


def _metric(record: Mapping[str, float] | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    return float(record[key])


def clock_budget_spent(clock_s: float, clock_budget_s: float | None) -> bool:
    """Whether a run whose clock stands at ``clock_s`` may start no further round."""
    return clock_budget_s is not None and clock_s >= clock_budget_s


def _opt_float(value) -> float | None:
    return None if value is None else float(value)
