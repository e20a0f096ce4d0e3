"""``lite``: FedRankLite-SLM's rank rule, reproduced as a baseline (its flaws included).

It observes, per client, the loss drop, samples per second and time per rank unit of its
last report (exponential averages, factor 0.3) and whether it missed the deadline; it
decides only ranks: score = 0.6 * EMA(loss drop) + 0.4 * EMA(samples/s), halved after a
miss, ranks proportional to score within a budget of r_bar * n, rounded, clamped to
[r_min, r_max], corrected greedily to the budget, then each capped so that
EMA(time per rank unit) * rank fits the deadline. Bits, local steps and budget are the
run's (like ``fixed``). Cost per round: O(n log n) (a stable sort for the budget correction),
no solver; measured times per round: benchmarks/results/scheduler_decision_time.md.

Faithful to FedRankLite-SLM (github.com/81wallace18/fedranklite-slm, ``src/schedulers/lite.py``):

* the weights 0.6/0.4, EMA ``a * new + (1 - a) * old`` with a = 0.3 seeded by the first
  value, the raw (unnormalised) sum of loss drop and samples/s, gain = max(drop, 0);
* a client with no history scores 1.0; with no history at all, everyone gets r_bar;
* the halving applies to the allocation right after a miss (the latest report's flag);
* Python ``round`` (half to even), the budget correction in score order (descending when
  ranks must grow, ascending when they must shrink, ties in client order);
* the deadline cap from time per rank unit (time / rank used), which assumes a client's
  time grows in proportion to its rank: measured step times do not (DESIGN.md), so this
  cap starves slow clients of rank without saving their compute. Kept on purpose.

Mapped onto FLQ: its ``train_time`` (the time its deadline judged) is the report's
``round_s``; ``n_samples`` is ``num_examples``. Its deadline cap divided an already scaled
time by the tier's compute factor a second time; FLQ's times are already on the run's
clock, so the cap uses them as they are.

Defects deliberately NOT reproduced: late, failed and out-of-memory clients reach
``observe`` (in the FedRankLite run described in DESIGN.md dropped clients never reached the
history, so the slowest kept high ranks); a client with no measurement this round (failed,
oom) keeps its averages and counts as having missed the deadline (FedRankLite's engine had no
such clients, and its rule would fail on their missing losses). FLQ's hard ceilings also
apply: a tier's ``max_rank`` (when tiers are given), never below the run's rank_min.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

import numpy as np

from .base import Assignment, ClientInfo, ClientReport, RankScheduler, RoundOutcome, SchedulerDefaults
from .client_table import FAILED, LATE, OOM, ClientTable, ReportColumns, assignments_by_node
from .priors import by_tier, tier_profile, tier_rank_ceiling

GAIN_WEIGHT = 0.6
THROUGHPUT_WEIGHT = 0.4
EMA_FACTOR = 0.3
MISS_PENALTY = 0.5
NEW_CLIENT_SCORE = 1.0
MIN_SCORE = 1e-8


class LiteScheduler(RankScheduler):
    """FedRankLite-SLM's allocation (see the module docstring). ``r_bar``: the average rank
    budget (default: the run's rank)."""

    name = "lite"

    def __init__(
        self,
        defaults: SchedulerDefaults,
        *,
        tiers: Mapping[str, Any] | None = None,
        r_bar: int | None = None,
    ) -> None:
        self.defaults = defaults
        self.tiers = tiers
        self.r_bar = int(r_bar if r_bar is not None else defaults.rank)
        if not 1 <= self.r_bar <= defaults.rank_max:
            raise ValueError(f"r_bar {self.r_bar} must be in [1, rank_max={defaults.rank_max}]")
        # seen: 0 until a client's first measurement seeds its averages
        self.table = ClientTable(
            {"seen": 0.0, "ema_gain": 0.0, "ema_throughput": 0.0, "ema_time_per_rank": 0.0, "missed": 0.0}
        )

    # -- observe ----------------------------------------------------------------------
    def observe(self, server_round: int, reports: Sequence[ClientReport], outcome: RoundOutcome | None = None) -> None:
        columns = ReportColumns(reports)
        if not len(columns):
            return
        rows = self.table.rows(columns.node_ids)
        status = columns.status
        self.table["missed"][rows] = ((status == LATE) | (status == FAILED) | (status == OOM)).astype(np.float64)
        measured = columns.timed & (columns.round_s > 0)
        if measured.any():
            self._fold(rows[measured], *self._signals(columns, measured))

    @staticmethod
    def _signals(columns: ReportColumns, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Loss drop, samples per second, time per rank unit: FedRankLite's three signals."""
        time_s = columns.round_s[measured]
        before, after = columns.loss_before[measured], columns.loss_after[measured]
        known = np.isfinite(before) & np.isfinite(after)
        gain = np.zeros(known.size)
        gain[known] = np.maximum(before[known] - after[known], 0.0)
        throughput = columns.num_examples[measured] / np.maximum(time_s, 1e-6)
        time_per_rank = time_s / np.maximum(columns.rank[measured], 1)
        return gain, throughput, time_per_rank

    def _fold(self, rows: np.ndarray, gain: np.ndarray, throughput: np.ndarray, time_per_rank: np.ndarray) -> None:
        seen = self.table["seen"][rows] > 0
        for name, value in (("ema_gain", gain), ("ema_throughput", throughput), ("ema_time_per_rank", time_per_rank)):
            column = self.table[name]
            column[rows] = np.where(seen, EMA_FACTOR * value + (1 - EMA_FACTOR) * column[rows], value)
        self.table["seen"][rows] = 1.0

    # -- assign -----------------------------------------------------------------------
    def assign(
        self, server_round: int, clients: Sequence[ClientInfo], deadline_s: float | None
    ) -> dict[int, Assignment]:
        if not clients:
            return {}
        d = self.defaults
        node_ids = list(map(attrgetter("node_id"), clients))
        rows = self.table.rows(node_ids)
        n = len(rows)
        if not (self.table["seen"] > 0).any():  # no telemetry yet: everyone r_bar
            ranks = np.full(n, min(max(self.r_bar, d.rank_min), d.rank_max), dtype=np.int64)
        else:
            scores = self.scores(rows)
            ranks = self._ranks_within_budget(scores, self.r_bar * n)
            if deadline_s:
                ranks = self._cap_to_deadline(rows, ranks, float(deadline_s))
        tiers = list(map(attrgetter("tier"), clients))
        if self.tiers is not None:
            ceilings = by_tier(tiers, lambda t: tier_rank_ceiling(tier_profile(self.tiers, t), d.rank_max))
            ranks = np.maximum(np.minimum(ranks, ceilings), d.rank_min)  # the run's floor wins over a tier hint
        bits = by_tier(tiers, lambda t: d.tier_bits.get(t, d.bits))
        steps = np.full(n, d.local_steps, dtype=np.int64)
        budgets = None if not deadline_s else np.full(n, float(deadline_s))
        return assignments_by_node(node_ids, ranks, bits, steps, budgets)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """0.6 * EMA(gain) + 0.4 * EMA(throughput), halved after a miss; 1.0 for the unseen."""
        t = self.table
        score = GAIN_WEIGHT * t["ema_gain"][rows] + THROUGHPUT_WEIGHT * t["ema_throughput"][rows]
        score = np.where(t["missed"][rows] > 0, score * MISS_PENALTY, score)
        score = np.where(t["seen"][rows] > 0, np.maximum(score, MIN_SCORE), NEW_CLIENT_SCORE)
        return score

    def _ranks_within_budget(self, scores: np.ndarray, budget: int) -> np.ndarray:
        """Proportional share of the budget, rounded and clamped, then corrected to the budget."""
        d = self.defaults
        raw = scores / scores.sum() * budget
        ranks = np.clip(np.round(raw), d.rank_min, d.rank_max).astype(np.int64)
        diff = budget - int(ranks.sum())
        if diff == 0:
            return ranks
        # FedRankLite walks clients by score (descending to add, ascending to remove),
        # moving each as far as its bound allows until the difference is used up.
        order = np.argsort(-scores if diff > 0 else scores, kind="stable")
        room = (d.rank_max - ranks if diff > 0 else ranks - d.rank_min)[order]
        used_before = np.cumsum(room) - room
        moved = np.clip(abs(diff) - used_before, 0, room)
        ranks[order] += moved if diff > 0 else -moved
        return ranks

    def _cap_to_deadline(self, rows: np.ndarray, ranks: np.ndarray, deadline_s: float) -> np.ndarray:
        """Lower each rank until time-per-rank * rank fits the deadline (not below r_min)."""
        d = self.defaults
        per_rank = self.table["ema_time_per_rank"][rows]
        known = per_rank > 0
        with np.errstate(over="ignore"):  # a vanishing time per rank fits any rank
            ratio = np.minimum(deadline_s / np.where(known, per_rank, 1.0), d.rank_max + 1)
        fitting = np.floor(ratio).astype(np.int64)
        fitting -= np.where(known, per_rank, 0.0) * fitting > deadline_s  # float rounding
        return np.where(known, np.maximum(np.minimum(ranks, fitting), d.rank_min), ranks)

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"clients": self.table.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.table.load_state_dict(state["clients"])
