"""``tier``: rank and bits by tier, never adapting (HetLoRA-style static heterogeneity).

It observes nothing. It decides each client's rank from its tier: the run's tier table
(``SchedulerDefaults.tier_ranks``) when it names the tier, else the tier profile's
``max_rank``, else the run's rank, always within [rank_min, rank_max]; bits from
``tier_bits`` or the run's bits; the run's local steps; the deadline as budget. Cost per
round: O(n) dictionary look-ups, one Assignment per distinct tier; measured times per round:
benchmarks/results/scheduler_decision_time.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import Assignment, ClientInfo, RankScheduler, SchedulerDefaults
from .priors import REFERENCE_TIER


class TierScheduler(RankScheduler):
    name = "tier"

    def __init__(self, defaults: SchedulerDefaults, *, tiers: Mapping[str, Any] | None = None) -> None:
        if not 1 <= defaults.rank_min <= defaults.rank_max:
            raise ValueError(f"need 1 <= rank_min <= rank_max, got [{defaults.rank_min}, {defaults.rank_max}]")
        self.defaults = defaults
        self.tiers = dict(tiers or {})

    def rank_for(self, tier: str | None) -> int:
        d = self.defaults
        if tier in d.tier_ranks:
            rank = d.tier_ranks[tier]
        else:
            rank = getattr(self.tiers.get(tier, REFERENCE_TIER), "max_rank", None) or d.rank
        return max(d.rank_min, min(int(rank), d.rank_max))

    def bits_for(self, tier: str | None) -> int:
        return int(self.defaults.tier_bits.get(tier, self.defaults.bits))

    def assign(
        self, server_round: int, clients: Sequence[ClientInfo], deadline_s: float | None
    ) -> dict[int, Assignment]:
        by_tier: dict[str | None, Assignment] = {}
        out = {}
        for c in clients:
            assignment = by_tier.get(c.tier)
            if assignment is None:
                assignment = by_tier[c.tier] = Assignment(
                    self.rank_for(c.tier), self.bits_for(c.tier), self.defaults.local_steps, deadline_s
                )
            out[c.node_id] = assignment
        return out
