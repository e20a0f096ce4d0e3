"""The rank-scheduler interface: pure Python data in, plain decisions out.

A scheduler is asked, once per round, what every sampled client gets (``assign``), and is
told afterwards what happened (``observe``). It never sees Flower or torch objects, and its
whole state is a JSON-serialisable dict so a restarted server resumes where it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a client before assigning it work."""

    node_id: int
    tier: str | None = None  # tier preset name, if the client reported one
    partition_id: int | None = None
    memory_limit_mb: float | None = None
    num_examples: int | None = None  # size of its training split, if known
    num_partitions: int | None = None


@dataclass(frozen=True)
class Assignment:
    """What one client is told to do this round."""

    rank: int
    bits: int
    local_steps: int  # step cap; with a budget the client may stop earlier
    budget_s: float | None = None  # time budget on the run's clock (None: no budget)
    codec: str | None = None  # update codec for this client (None: the run's)
    batch_size: int | None = None  # examples per step, below the client's own (None: its own)


@dataclass(frozen=True)
class ClientReport:
    """What a client measured in a round (or why it produced nothing).

    ``status`` is one of: ``ok`` (accepted and on time), ``late`` (missed the deadline and
    was dropped), ``rejected`` (the reply failed validation), ``failed`` (no reply / error),
    ``oom`` (its memory limit cannot hold the assignment).
    """

    node_id: int
    status: str
    rank: int
    bits: int
    tier: str | None = None
    steps: int = 0
    num_examples: int = 0
    compute_s: float = 0.0  # on the run's clock (scaled by the tier in simulation)
    transfer_s: float = 0.0  # on the run's clock
    round_s: float = 0.0  # compute_s + transfer_s (+ handshakes)
    bytes_up: int = 0
    bytes_down: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    on_time: bool = True


@dataclass(frozen=True)
class RoundOutcome:
    """Round-level signal: what the global model gained for the time the round took."""

    server_round: int
    round_s: float  # the round's length on the run's clock
    deadline_s: float | None
    global_loss_before: float | None
    global_loss_after: float | None
    score: float | None = None


class RankScheduler(ABC):
    """Decides (rank, bits, local work) per client per round."""

    name: str = "base"

    @abstractmethod
    def assign(
        self, server_round: int, clients: Sequence[ClientInfo], deadline_s: float | None
    ) -> dict[int, Assignment]:
        """Return an assignment for every client in ``clients``, keyed by node id."""

    def observe(  # noqa: B027 - a no-op by design: static schedulers learn nothing
        self,
        server_round: int,
        reports: Sequence[ClientReport],
        outcome: RoundOutcome | None = None,
    ) -> None:
        """Learn from a finished round. Static schedulers ignore it."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (for checkpoints)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - stateless by default
        """Restore what ``state_dict`` returned."""


@dataclass
class SchedulerDefaults:
    """Run-config values every scheduler starts from."""

    rank: int  # the homogeneous rank (``fixed``)
    rank_max: int  # the global adapter rank: nobody gets more
    rank_min: int = 1
    bits: int = 16
    local_steps: int = 8
    batch_size: int = 8  # the run's examples per step (a tier may have its own)
    # A step's fixed cost in examples' worth: a step of b examples costs as much as b + this many
    # would without it (framework and kernel overheads; large for small convolutional models).
    step_fixed_examples: float = 0.0
    tier_ranks: dict[str, int] = field(default_factory=dict)
    tier_bits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FixedRankScheduler(RankScheduler):
    """Every client the same rank and bits, every round (the usual baseline)."""

    name = "fixed"

    def __init__(self, defaults: SchedulerDefaults) -> None:
        if not 1 <= defaults.rank <= defaults.rank_max:
            raise ValueError(f"rank {defaults.rank} must be in [1, rank_max={defaults.rank_max}]")
        self.defaults = defaults

    def assign(
        self, server_round: int, clients: Sequence[ClientInfo], deadline_s: float | None
    ) -> dict[int, Assignment]:
        d = self.defaults
        # One frozen Assignment shared by all: building one per client costs ~1 us each.
        same = Assignment(rank=d.rank, bits=d.bits, local_steps=d.local_steps, budget_s=deadline_s)
        return dict.fromkeys((c.node_id for c in clients), same)


class TableScheduler(RankScheduler):
    """A fixed table: rank and bits by partition id or by tier (HetLoRA-style static ranks).

    The tables are per-client value specs (``flq.scheduler.spread``): e.g. ranks
    ``cycle:2,4,8,16`` and bits ``groups:4,8,16`` (the FAH-QLoRA thirds).
    """

    name = "table"

    def __init__(self, defaults: SchedulerDefaults, ranks: str = "", bits: str = "") -> None:
        from .spread import parse_int_spread

        self.defaults = defaults
        self.ranks = parse_int_spread(ranks or str(defaults.rank), "client-ranks", low=1, high=defaults.rank_max)
        self.bits = parse_int_spread(bits or str(defaults.bits), "client-bits", allowed=(4, 8, 16, 32))

    def assign(
        self, server_round: int, clients: Sequence[ClientInfo], deadline_s: float | None
    ) -> dict[int, Assignment]:
        out = {}
        for c in clients:
            rank = int(self.ranks.value_for(c.partition_id, c.num_partitions, c.tier))
            bits = int(self.bits.value_for(c.partition_id, c.num_partitions, c.tier))
            out[c.node_id] = Assignment(
                rank=rank, bits=bits, local_steps=self.defaults.local_steps, budget_s=deadline_s
            )
        return out
