"""``bandit``: FLQ's own scheduler: online, solver-free, two levels (rank aim, then per-client work).

It observes every report, including late, failed and out-of-memory clients (their times,
steps, ranks, bits and losses) and the round's outcome (global loss before and after, round
length). It decides, per round, an average rank to aim for (a discounted-UCB bandit over a
few arms, rewarded by the relative global-loss decrease per second of round time) and, per
client, the rank, backbone bits, local steps and time budget that its own learned time
model (Bayesian linear regressions of compute seconds on steps and of transfer seconds on
rank, seeded by its tier's prior, forgetting old rounds; the compute prior is re-centred on
how far the step estimate has proved off for its tier, ``PriorScale``, until the client's own
first report) predicts to finish before the
deadline with high probability (the round's miss probability, 5% by default, shared among
the clients the deadline binds, since a round is on time only if all of them are); ranks
are then water-filled so the round's mean meets the aim where the deadline allows. A
compute-bound client loses work, not just rank: first examples per step (a smaller batch for
the round, so it keeps the step cap), then steps once its batch is at the floor, unless fewer
steps of its own batch would train more examples (a step's fixed cost, ``step_fixed_examples``);
a client that misses a deadline or fails is pushed down at once and recovers over on-time rounds.
Cost per round, n clients: O(n log n), no solver: whole-column numpy work (about 16
evaluations of the time models inside binary searches over steps and rank, a histogram
water-fill) plus one sort that groups identical assignments; at many clients most of observe's
time goes to reading the report objects, one attribute at a time. Measured times per round
(assign and observe, against ``solver`` and the other schedulers):
benchmarks/results/scheduler_decision_time.md, summarised in docs/schedulers.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from statistics import NormalDist
from typing import Any

import numpy as np

from .base import Assignment, ClientInfo, ClientReport, RankScheduler, RoundOutcome, SchedulerDefaults
from .client_table import FAILED, LATE, OK, OOM, ClientTable, ReportColumns, assignments_by_node
from .prior_scale import PriorScale
from .priors import (
    MemoryModel,
    latency_s,
    memory_limit_mb,
    own_batch_size,
    reference_step_s,
    tier_profile,
    tier_rank_ceiling,
    transfer_s_per_rank,
)
from .time_model import OnlineLinearTime

DEFAULT_ARMS = (2, 4, 8, 16, 32, 64)
DEFAULT_BITS_OPTIONS = (16, 8, 4)
# Budgets are rounded down to 1/256 of the deadline so clients share Assignment objects.
BUDGET_LEVELS = 256
# A transfer-per-rank prior when the run gave no bytes-per-rank: wide, so reports decide.
UNKNOWN_TRANSFER_SD_PER_RANK = 0.1

# The parts an ablation may switch off (run config ``bandit-off``), each to its constructor flag:
# round-bandit: the average rank stays the run's base rank; time-model: every client keeps its
# tier's prior times whatever it reports; batch-shrink: no client gets a smaller batch;
# bits-choice: bits are the run's (table) bits, the memory model still caps rank;
# caution: a miss or failure does not shrink a client's deadline; steps-first: the batch shrinks
# only for a client late even at one step (not to keep the step cap).
BANDIT_PARTS: dict[str, str] = {
    "round-bandit": "round_bandit",
    "time-model": "learn_times",
    "batch-shrink": "shrink_batch",
    "steps-first": "keep_steps",
    "bits-choice": "choose_bits",
    "caution": "use_caution",
}


def parts_off(spec: str) -> dict[str, bool]:
    """``bandit-off`` (comma-separated part names) as constructor flags set to False."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in BANDIT_PARTS]
    if unknown:
        raise ValueError(f"unknown bandit part(s) {unknown}: choose from {', '.join(BANDIT_PARTS)}")
    return {BANDIT_PARTS[name]: False for name in names}


# --------------------------------------------------------------------------------------
# Round level: which average rank to aim for
# --------------------------------------------------------------------------------------


def exploration_order(rank: int, first: int) -> tuple[float, int]:
    """Untried ranks are tried nearest ``first`` first, on a log scale (4 and 16 are as near
    to 8); between two as near, the higher rank first (rank is cheap in compute)."""
    return abs(math.log2(rank) - math.log2(first)), -rank


class AverageRankBandit:
    """Discounted UCB (Garivier & Moulines, 2011) over candidate average ranks.

    The reward of a round is the relative decrease of the global loss per second of round
    time. Early rounds gain more than late ones whatever the arm, so each reward is divided
    by the recent reward level (an exponential average over all arms) before it is credited:
    an arm is judged against what the other arms earned around the same time. Arms never
    played are tried first (``exploration_order``). Deterministic.
    """

    def __init__(
        self,
        arms: Sequence[int],
        first_arm: int,
        discount: float = 0.95,
        exploration: float = 0.15,
        level_smoothing: float = 0.5,
    ) -> None:
        if not arms:
            raise ValueError("the average-rank bandit needs at least one arm")
        self.arms = sorted(set(int(a) for a in arms))
        self.first_arm = first_arm
        self.discount = discount
        self.exploration = exploration
        self.level_smoothing = level_smoothing
        self.counts = np.zeros(len(self.arms))
        self.sums = np.zeros(len(self.arms))
        self.reward_level: float | None = None
        self.pending: dict[int, int] = {}  # round -> arm index chosen for it

    def choose(self, server_round: int) -> int:
        """The average rank for ``server_round`` (remembered until its reward arrives)."""
        index = self._best_index()
        self.pending = {server_round: index}
        return self.arms[index]

    def _best_index(self) -> int:
        untried = [i for i, n in enumerate(self.counts) if n == 0]
        if untried:
            return min(untried, key=lambda i: exploration_order(self.arms[i], self.first_arm))
        total = max(float(self.counts.sum()), 1.0)
        index = self.sums / self.counts + self.exploration * np.sqrt(2.0 * math.log(total) / self.counts)
        return int(np.argmax(index))

    def forget(self, server_round: int) -> None:
        """The round produced no reward signal (no loss known): nothing to credit."""
        self.pending.pop(server_round, None)

    def credit(self, server_round: int, reward: float) -> None:
        """Credit the arm chosen for ``server_round`` (ignored if none was)."""
        index = self.pending.pop(server_round, None)
        if index is None or not math.isfinite(reward):
            return
        level = self.reward_level if self.reward_level else abs(reward)
        normalised = float(np.clip(reward / level, -3.0, 3.0)) if level > 0 else 0.0
        self.reward_level = (
            abs(reward)
            if self.reward_level is None
            else self.level_smoothing * self.reward_level + (1 - self.level_smoothing) * abs(reward)
        )
        self.counts *= self.discount
        self.sums *= self.discount
        self.counts[index] += 1.0
        self.sums[index] += normalised

    def state_dict(self) -> dict[str, Any]:
        return {
            "arms": list(self.arms),
            "counts": self.counts.tolist(),
            "sums": self.sums.tolist(),
            "reward_level": self.reward_level,
            "pending": {str(r): i for r, i in self.pending.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["arms"]) != self.arms:
            raise ValueError(f"checkpoint arms {state['arms']} differ from this scheduler's {self.arms}")
        self.counts = np.asarray(state["counts"], dtype=np.float64)
        self.sums = np.asarray(state["sums"], dtype=np.float64)
        self.reward_level = state["reward_level"]
        self.pending = {int(r): int(i) for r, i in state["pending"].items()}


def relative_loss_decrease_per_s(reports: ReportColumns, outcome: RoundOutcome | None) -> float | None:
    """The round's reward: (L_before - L_after) / L_before per second of round time.

    The server's held-out loss when the outcome has it; otherwise the clients' own losses
    (examples-weighted over accepted clients). None when neither is known.
    """
    round_s = outcome.round_s if outcome is not None and outcome.round_s > 0 else 0.0
    accepted = reports.status == OK
    if round_s <= 0 and accepted.any():
        round_s = float(reports.round_s[accepted].max())
    if round_s <= 0:
        return None
    if outcome is not None and _finite(outcome.global_loss_before) and _finite(outcome.global_loss_after):
        before, after = outcome.global_loss_before, outcome.global_loss_after
    else:
        both = accepted & np.isfinite(reports.loss_before) & np.isfinite(reports.loss_after)
        if not both.any():
            return None
        weights = np.maximum(reports.num_examples[both], 1).astype(np.float64)
        before = float(np.average(reports.loss_before[both], weights=weights))
        after = float(np.average(reports.loss_after[both], weights=weights))
    if before == 0:
        return None
    return (before - after) / abs(before) / round_s


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# --------------------------------------------------------------------------------------
# Small vectorised helpers
# --------------------------------------------------------------------------------------


def largest_fitting(
    low: np.ndarray, high: np.ndarray, fits: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the largest integer v in [low, high] with ``fits(v)``, by binary search.

    Returns (value, found); where ``fits(low)`` fails, value is ``low`` and found False.
    Assumes fitting is monotone (a smaller value fits if a larger one does).
    """
    found = fits(low)
    lo, hi = low.copy(), np.where(found, high, low)
    # Rows that are settled (lo == hi) or not found (fits(lo) fails) stay put below.
    for _ in range(int((hi - lo).max(initial=0)).bit_length()):
        mid = (lo + hi + 1) // 2
        ok = fits(mid)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid - 1)
    return lo, found


def waterfill_ranks(ceilings: np.ndarray, rank_min: int, target_mean: float) -> np.ndarray:
    """Integer ranks with mean ``target_mean`` (as near as integers allow), none above its ceiling.

    Everyone gets min(ceiling, level) for one common level; the remainder goes one unit each
    to the first clients (in the given order) still below their ceiling. If the ceilings
    cannot reach the target, each client gets its ceiling. O(n + max ceiling): ceilings are
    small integers, so the level is read off their histogram.
    """
    n = ceilings.size
    ceilings = np.maximum(ceilings.astype(np.int64), rank_min)
    if n == 0:
        return ceilings
    total = int(round(target_mean * n))
    if total >= int(ceilings.sum()):
        return ceilings
    if total <= rank_min * n:
        return np.full(n, rank_min, dtype=np.int64)
    counts = np.bincount(ceilings)
    levels = np.arange(counts.size)
    # sum_i min(c_i, L) for every level L: the ceilings at or below L, plus L for the rest
    filled = np.cumsum(levels * counts) + levels * (n - np.cumsum(counts))
    level = int(np.searchsorted(filled, total, side="right")) - 1
    ranks = np.minimum(ceilings, level)
    remainder = total - int(filled[level])
    if remainder > 0:
        ranks[np.flatnonzero(ceilings > level)[:remainder]] += 1
    return ranks


# --------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------


class BanditScheduler(RankScheduler):
    """FLQ's online scheduler; see the module docstring. Options:

    ``confidence``: probability with which the round must meet the deadline: with
    ``round_confidence`` (default) the miss probability 1 - confidence is shared among the
    round's deadline-bound clients (those whose full work at their ceiling rank does not fit;
    Bonferroni: each gets (1 - confidence) / k), since a round is on time only if all of
    them are; without it, each client's own probability.
    ``shrink_batch`` / ``min_batch_size``: a client predicted late even at one step of its
    own batch gets the largest batch (not below ``min_batch_size``) whose one step is predicted
    on time; work is measured in examples (each step counting the defaults'
    ``step_fixed_examples`` more), so what it learns at a small batch carries over.
    ``keep_steps`` (with ``shrink_batch``): steps first: a client whose own batch cannot do
    the step cap gets the largest batch at which it can, so the deadline cuts examples per step
    before it cuts steps, unless fewer steps of its own batch would train more examples than
    rounding explains (an example per step): without a fixed cost per step the same examples
    fit either way, and split into more steps they make more optimizer updates (the ablations
    measured the other split slower: docs/schedulers.md); with a large one, small steps would
    train only a few examples.
    ``min_work_fraction``: share of the step cap a client keeps before its rank may crowd out
    steps (rank costs transfer time; below this share, rank gives way first).
    ``stop_on_budget``: True when the run's policy is ``budget`` (a client stops before its
    compute plus its predicted transfers would pass its budget): every client then gets the
    step cap, and its own speed decides its steps. The budget is always set: the deadline
    divided by the client's caution (1 until it misses).
    ``memory_model`` / ``bits_options``: choose backbone bits per client (the most that fits
    its memory, among ``bits_options`` and the run's own bits); without a model, bits come
    from the run's tier table or default.
    ``arms``, ``discount``, ``exploration``: the round-level bandit.
    Ablation switches (``BANDIT_PARTS``), each on by default and each changing only its part:
    ``round_bandit`` (off: aim at the run's base rank every round), ``learn_times`` (off: the
    time models keep their tier priors), ``shrink_batch``, ``choose_bits`` (off: the run's bits,
    as without a memory model, while the model still caps rank), ``use_caution`` (off: a miss or
    failure leaves the client's deadline whole).
    ``forgetting``: weight of past rounds in the time models. ``miss_backoff``,
    ``caution_max``, ``recovery``: how hard a missed deadline or failure pushes a client
    down (its deadline is divided by a caution factor) and how fast it recovers.
    ``prior_cv``: relative spread of the tier priors. ``noise_cv``: initial relative noise.
    """

    name = "bandit"

    def __init__(
        self,
        defaults: SchedulerDefaults,
        *,
        tiers: Mapping[str, Any] | None = None,
        step_time_prior: Mapping[int, float] | None = None,
        bytes_per_rank: float | None = None,
        confidence: float = 0.95,
        round_confidence: bool = True,
        min_work_fraction: float = 0.5,
        stop_on_budget: bool = False,
        shrink_batch: bool = True,
        keep_steps: bool = True,
        min_batch_size: int = 1,
        memory_model: MemoryModel | None = None,
        bits_options: Sequence[int] = DEFAULT_BITS_OPTIONS,
        round_bandit: bool = True,
        learn_times: bool = True,
        choose_bits: bool = True,
        use_caution: bool = True,
        arms: Sequence[int] = DEFAULT_ARMS,
        discount: float = 0.95,
        exploration: float = 0.15,
        forgetting: float = 0.8,
        miss_backoff: float = 1.5,
        caution_max: float = 4.0,
        recovery: float = 0.7,
        prior_cv: float = 0.3,
        noise_cv: float = 0.1,
    ) -> None:
        if not 1 <= defaults.rank_min <= defaults.rank_max:
            raise ValueError(f"need 1 <= rank_min <= rank_max, got [{defaults.rank_min}, {defaults.rank_max}]")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
        if not 0.0 < min_work_fraction <= 1.0:
            raise ValueError(f"min_work_fraction must be in (0, 1], got {min_work_fraction}")
        if min_batch_size < 1:
            raise ValueError(f"min_batch_size must be at least 1, got {min_batch_size}")
        if defaults.batch_size < 1:
            raise ValueError(f"the run's batch size must be at least 1, got {defaults.batch_size}")
        self.defaults = defaults
        self.tiers = tiers
        self.step_time_prior = dict(step_time_prior) if step_time_prior else None
        self.bytes_per_rank = bytes_per_rank
        self.confidence = confidence
        self.z = NormalDist().inv_cdf(confidence)
        self.round_confidence = round_confidence
        self.min_work_fraction = min_work_fraction
        self.stop_on_budget = stop_on_budget
        self.shrink_batch = shrink_batch
        self.keep_steps = keep_steps
        self.min_batch_size = min_batch_size
        self.memory_model = memory_model
        self.bits_options = sorted({int(b) for b in bits_options} | {int(defaults.bits)}, reverse=True)
        self.round_bandit = round_bandit
        self.learn_times = learn_times
        self.choose_bits = choose_bits
        self.use_caution = use_caution
        self.miss_backoff = miss_backoff
        self.caution_max = caution_max
        self.recovery = recovery
        self.prior_cv = prior_cv
        self.noise_cv = noise_cv
        candidate_arms = {min(max(int(a), defaults.rank_min), defaults.rank_max) for a in arms}
        self.average_rank = AverageRankBandit(sorted(candidate_arms), defaults.rank, discount, exploration)
        self.table = ClientTable(
            {
                **OnlineLinearTime.column_defaults("compute_"),
                **OnlineLinearTime.column_defaults("transfer_"),
                "caution": 1.0,
                "tier_rank_cap": float(defaults.rank_max),
                "oom_rank_cap": float(defaults.rank_max),
                "bits_cap": float(max(self.bits_options)),
                "table_bits": float(defaults.bits),
                "own_batch": float(defaults.batch_size),  # examples per step the client trains at
                "compute_reports": 0.0,  # reports with compute: until the first, the prior follows PriorScale
            }
        )
        self.compute_time = OnlineLinearTime(self.table, "compute_", forgetting)
        self.transfer_time = OnlineLinearTime(self.table, "transfer_", forgetting)
        self.prior_scale = PriorScale()
        self._step_s_by_bits: dict[int, float] = {}

    # -- priors -----------------------------------------------------------------------
    def _ref_step_s(self, bits: int) -> float:
        if bits not in self._step_s_by_bits:
            self._step_s_by_bits[bits] = reference_step_s(self.step_time_prior, bits)
        return self._step_s_by_bits[bits]

    def _ref_example_s(self, bits: int) -> float:
        """Reference seconds per training example: the reference step, at the run's batch size,
        per example (its fixed cost counted as ``step_fixed_examples`` more)."""
        return self._ref_step_s(bits) / (self.defaults.batch_size + self.defaults.step_fixed_examples)

    def _ref_example_column(self, bits: np.ndarray) -> np.ndarray:
        """``_ref_example_s`` for each entry of ``bits`` (a few distinct values)."""
        out = np.empty(bits.shape, dtype=np.float64)
        for value in np.unique(bits).tolist():
            out[bits == value] = self._ref_example_s(int(value))
        return out

    @staticmethod
    def _for_each_tier(
        rows: np.ndarray, tiers: Sequence[str | None], apply: Callable[[np.ndarray, str | None], None]
    ) -> None:
        """``apply(group, tier)`` once per tier among ``tiers`` (one per row): a few tiers, many clients."""
        names = np.asarray([t or "" for t in tiers], dtype=object)
        for name in set(names.tolist()):
            apply(rows[names == name], name or None)

    def _init_rows(self, rows: np.ndarray, tiers: Sequence[str | None]) -> None:
        """New clients start from their tier's prior."""
        self._for_each_tier(rows, tiers, self._init_tier_rows)

    def _set_compute_prior(self, rows: np.ndarray, tier: str | None) -> None:
        """The compute-time prior of clients of one tier: the tier's factor times how far the
        step estimate has proved off so far (``PriorScale``)."""
        d, cv = self.defaults, self.prior_cv
        profile = tier_profile(self.tiers, tier)
        factor = float(profile.compute_factor) * self.prior_scale.scale(tier)
        one_step = (
            factor * self._ref_example_s(d.bits) * (own_batch_size(profile, d.batch_size) + d.step_fixed_examples)
        )
        full_work = one_step * d.local_steps
        # compute_s = w0 + w1 * ((examples + step_fixed_examples per step) * reference seconds per
        # example): w1 is the client's compute factor
        self.compute_time.set_prior(
            rows, 0.0, max(cv * full_work, 1e-3), factor, max(cv * factor, 1e-3), self.noise_cv * full_work
        )

    def _init_tier_rows(self, rows: np.ndarray, tier: str | None) -> None:
        d, cv = self.defaults, self.prior_cv
        profile = tier_profile(self.tiers, tier)
        own_batch = own_batch_size(profile, d.batch_size)
        self._set_compute_prior(rows, tier)
        per_rank = transfer_s_per_rank(profile, self.bytes_per_rank)
        latency = latency_s(profile)
        per_rank_sd = cv * per_rank if per_rank > 0 else UNKNOWN_TRANSFER_SD_PER_RANK
        typical = latency + per_rank * d.rank
        # transfer_s = w0 + w1 * rank: latency plus seconds per rank unit over its links
        self.transfer_time.set_prior(
            rows, latency, max(cv * typical, latency, 0.05), per_rank, per_rank_sd, max(self.noise_cv * typical, 0.01)
        )
        self.table["tier_rank_cap"][rows] = tier_rank_ceiling(profile, d.rank_max)
        self.table["table_bits"][rows] = d.tier_bits.get(tier, d.bits) if tier is not None else d.bits
        self.table["own_batch"][rows] = own_batch

    # -- assign -----------------------------------------------------------------------
    def assign(
        self, server_round: int, clients: Sequence[ClientInfo], deadline_s: float | None
    ) -> dict[int, Assignment]:
        if not clients:
            return {}
        d = self.defaults
        node_ids = list(map(attrgetter("node_id"), clients))
        rows = self.table.rows(
            node_ids, lambda new, positions: self._init_rows(new, [clients[p].tier for p in positions])
        )
        if self.learn_times:
            self._rescale_unreported_priors(rows, clients)
        bits, memory_cap = self._bits_and_memory_ceiling(rows, clients)
        ceilings = (
            np.minimum.reduce(
                [
                    self.table["tier_rank_cap"][rows],
                    self.table["oom_rank_cap"][rows],
                    memory_cap,
                ]
            )
            .astype(np.int64)
            .clip(d.rank_min, d.rank_max)
        )
        target = self.average_rank.choose(server_round) if self.round_bandit else d.rank
        cap = np.full(len(rows), d.local_steps, dtype=np.int64)
        if deadline_s is None or deadline_s <= 0:
            ranks = waterfill_ranks(ceilings, d.rank_min, target)
            return assignments_by_node(node_ids, ranks, bits, cap, None)
        ranks, steps, budgets, batches = self._fit_to_deadline(rows, bits, ceilings, target, float(deadline_s))
        if self.stop_on_budget:
            steps = cap
        return assignments_by_node(node_ids, ranks, bits, steps, budgets, batches)

    def _rescale_unreported_priors(self, rows: np.ndarray, clients: Sequence[ClientInfo]) -> None:
        """Clients with no compute report yet start from the scale measured on those that have."""
        unreported = np.flatnonzero(self.table["compute_reports"][rows] == 0)
        if self.prior_scale.reported and unreported.size:
            self._for_each_tier(rows[unreported], [clients[i].tier for i in unreported], self._set_compute_prior)

    def _bits_and_memory_ceiling(
        self, rows: np.ndarray, clients: Sequence[ClientInfo]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Backbone bits per client, and the highest rank its memory holds at those bits."""
        d = self.defaults
        no_limit = np.full(len(rows), float(d.rank_max))
        model = self.memory_model
        table_bits = np.minimum(self.table["table_bits"][rows], self.table["bits_cap"][rows]).astype(np.int64)
        if model is None:
            return table_bits, no_limit
        limits = self._memory_limits(clients)
        if self.choose_bits:
            bits_cap = self.table["bits_cap"][rows]
            bits = np.full(len(rows), self.bits_options[-1], dtype=np.int64)
            chosen = np.zeros(len(rows), dtype=bool)
            for option in self.bits_options:  # most bits first: a better backbone when it fits
                fits = ~chosen & (option <= bits_cap) & (model.peak_mb(option, d.rank_min) <= limits)
                bits[fits] = option
                chosen |= fits
        else:
            bits = table_bits
        if model.adapter_mb_per_rank <= 0:
            return bits, no_limit
        room = (limits - model.peak_mb(bits, 0)) / model.adapter_mb_per_rank
        return bits, np.where(np.isfinite(room), np.floor(np.clip(room, d.rank_min, d.rank_max)), d.rank_max)

    def _memory_limits(self, clients: Sequence[ClientInfo]) -> np.ndarray:
        """MB per client: what it reported, else its tier's preset, else unlimited (inf)."""
        by_tier: dict[str | None, float] = {}
        limits = []
        for c in clients:
            if c.memory_limit_mb:
                limits.append(float(c.memory_limit_mb))
                continue
            if c.tier not in by_tier:
                by_tier[c.tier] = memory_limit_mb(tier_profile(self.tiers, c.tier), None) or np.inf
            limits.append(by_tier[c.tier])
        return np.asarray(limits, dtype=np.float64)

    def _fit_to_deadline(
        self, rows: np.ndarray, bits: np.ndarray, ceilings: np.ndarray, target: int, deadline_s: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ranks, steps, time budgets and batch sizes (0: the client's own) predicted to
        finish by the deadline w.h.p.

        A client fits when mean + z * std of its compute + transfer time is within its
        deadline (the run's, divided by its caution); compute and transfer are independent.
        """
        d = self.defaults
        limit = deadline_s / self.table["caution"][rows]
        example_x = self._ref_example_column(bits)
        own_batch = self.table["own_batch"][rows].astype(np.int64)
        fixed = d.step_fixed_examples
        step_x = example_x * (own_batch + fixed)
        compute, transfer = self.compute_time.line(rows), self.transfer_time.line(rows)

        def fits_work(
            ranks: np.ndarray, z: float, unit_x: np.ndarray, at: slice | np.ndarray = slice(None), offset: float = 0.0
        ) -> Callable[[np.ndarray], np.ndarray]:
            """At ``ranks``, do ``k + offset`` units of work (``unit_x`` reference seconds each: a
            step, an example) fit? For the rows ``at`` only, if given (``ranks`` still covers all)."""
            r = ranks.astype(np.float64)
            base, spread = transfer.mean(r)[at] + compute.m0[at], transfer.var(r)[at] + compute.v0[at]
            m1, v1, v2, unit, room = compute.m1[at], compute.v1[at], compute.v2[at], unit_x[at], limit[at]
            return lambda k: (
                base + m1 * (x := (k + offset) * unit) + z * np.sqrt(np.maximum(spread + x * (v1 + v2 * x), 0.0))
                <= room
            )

        def fits_steps(ranks: np.ndarray, z: float) -> Callable[[np.ndarray], np.ndarray]:
            return fits_work(ranks, z, step_x)

        def fits_ranks(steps: np.ndarray, z: float) -> Callable[[np.ndarray], np.ndarray]:
            x = steps * step_x
            base, spread = compute.mean(x) + transfer.m0, compute.var(x) + transfer.v0
            return lambda r: (
                base + transfer.m1 * r + z * np.sqrt(np.maximum(spread + r * (transfer.v1 + transfer.v2 * r), 0.0))
                <= limit
            )

        n = len(rows)
        rank_low = np.full(n, d.rank_min, dtype=np.int64)
        one, cap = np.ones(n, dtype=np.int64), np.full(n, d.local_steps, dtype=np.int64)
        z = self.z
        if self.round_confidence:  # the round's miss probability, shared by the clients the deadline binds
            bound = int(np.count_nonzero(~fits_steps(ceilings, z)(cap)))
            z = NormalDist().inv_cdf(1.0 - (1.0 - self.confidence) / max(bound, 1))
        # Rank costs transfer time only: it may not push a client below the steps it could
        # do at the lowest rank, nor below min_work_fraction of the cap.
        steps_at_low_rank, _ = largest_fitting(one, cap, fits_steps(rank_low, z))
        kept_steps = np.minimum(max(1, math.ceil(self.min_work_fraction * d.local_steps)), steps_at_low_rank)
        rank_fit, _ = largest_fitting(rank_low, ceilings, fits_ranks(kept_steps, z))
        ranks = waterfill_ranks(rank_fit, d.rank_min, target)
        steps, one_step_fits = largest_fitting(one, cap, fits_steps(ranks, z))
        # Late even at one step: one step of fewer examples (a noisier gradient, same expectation)
        # is worth more than a late one, which the round either waits for or drops. Steps first:
        # short of the step cap, the cap's steps of fewer examples each.
        batches = np.zeros(n, dtype=np.int64)
        wanted = cap if self.keep_steps else one
        short = np.flatnonzero((steps < wanted) | ~one_step_fits) if self.shrink_batch else np.empty(0, np.int64)
        short = short[own_batch[short] > self.min_batch_size]
        if short.size:
            batches[short], _ = largest_fitting(
                np.full(short.size, self.min_batch_size, dtype=np.int64),
                own_batch[short] - 1,
                fits_work(ranks, z, example_x * wanted, short, offset=fixed),
            )
            if self.keep_steps:  # the steps that fit at the smaller batch, unless they train fewer examples
                small_steps, _ = largest_fitting(
                    one[short], cap[short], fits_work(ranks, z, example_x * (batches + fixed), short)
                )
                # Without a fixed cost per step the two splits differ by rounding only, at most an
                # example per step; a larger shortfall is the steps' fixed cost: fewer steps win.
                own_examples = np.where(one_step_fits[short], steps[short] * own_batch[short], 0)
                smaller = small_steps * batches[short] >= own_examples - cap[short]
                steps[short] = np.where(smaller, small_steps, steps[short])
                batches[short] = np.where(smaller, batches[short], 0)
        # The ClientApp takes its own predicted transfers out of the budget: it gets its whole
        # time, the deadline shrunk by its caution.
        resolution = deadline_s / BUDGET_LEVELS
        budget = np.maximum(np.floor(limit / resolution), 1.0) * resolution
        return ranks, steps, budget, batches

    # -- observe ----------------------------------------------------------------------
    def observe(self, server_round: int, reports: Sequence[ClientReport], outcome: RoundOutcome | None = None) -> None:
        columns = ReportColumns(reports)
        reward = relative_loss_decrease_per_s(columns, outcome)
        if reward is not None:
            self.average_rank.credit(server_round, reward)
        else:
            self.average_rank.forget(server_round)
        if not len(columns):
            return
        rows = self.table.rows(
            columns.node_ids, lambda new, positions: self._init_rows(new, [reports[p].tier for p in positions])
        )
        if self.learn_times:
            self._learn_times(rows, columns)
        if self.use_caution:
            self._update_caution(rows, columns)
        self._learn_memory(rows, columns)

    def _learn_times(self, rows: np.ndarray, reports: ReportColumns) -> None:
        timed = reports.timed
        computed = timed & (reports.steps > 0) & (reports.compute_s > 0)
        if computed.any():
            # Work in examples; a report without a count, or with more per step than the
            # client's batch (none trains that), counts full steps of its own batch.
            steps = reports.steps[computed].astype(np.float64)
            own_batch = self.table["own_batch"][rows[computed]]
            examples = reports.num_examples[computed].astype(np.float64)
            per_step = np.where(examples > 0, np.minimum(examples / steps, own_batch), own_batch)
            per_step += self.defaults.step_fixed_examples
            work_x = steps * per_step * self._ref_example_column(reports.bits[computed])
            tiers = [tier for tier, keep in zip(reports.tiers, computed, strict=True) if keep]
            factors = np.array([float(tier_profile(self.tiers, tier).compute_factor) for tier in tiers])
            self.prior_scale.add(tiers, reports.compute_s[computed] / (factors * work_x))
            # A client's first report re-centres its prior on its tier's measured scale (its own
            # report included) before it is learned from: a prior off by 10x otherwise takes
            # many rounds to leave behind.
            first = np.flatnonzero(self.table["compute_reports"][rows[computed]] == 0)
            self._for_each_tier(rows[computed][first], [tiers[i] for i in first], self._set_compute_prior)
            self.compute_time.update(rows[computed], work_x, reports.compute_s[computed])
            self.table["compute_reports"][rows[computed]] += 1
        # Everything that is not compute (transfers, handshakes) is charged to the transfer model.
        non_compute = reports.non_compute_s
        moved = timed & (reports.rank > 0) & (non_compute > 0)
        if moved.any():
            self.transfer_time.update(rows[moved], reports.rank[moved].astype(np.float64), non_compute[moved])

    def _update_caution(self, rows: np.ndarray, reports: ReportColumns) -> None:
        caution = self.table["caution"]
        missed = (reports.status == LATE) | (reports.status == FAILED)
        caution[rows[missed]] = np.minimum(caution[rows[missed]] * self.miss_backoff, self.caution_max)
        on_time = reports.status == OK
        caution[rows[on_time]] = 1.0 + (caution[rows[on_time]] - 1.0) * self.recovery

    def _learn_memory(self, rows: np.ndarray, reports: ReportColumns) -> None:
        """Out of memory: fewer bits if bits are chosen and a lower option exists, else half the rank."""
        oom = np.flatnonzero(reports.status == OOM)
        lowest_bits = self.bits_options[-1]
        chooses_bits = self.memory_model is not None and self.choose_bits
        for position in oom.tolist():
            row, bits, rank = rows[position], int(reports.bits[position]), int(reports.rank[position])
            if chooses_bits and bits > lowest_bits:
                self.table["bits_cap"][row] = max(b for b in self.bits_options if b < bits)
            else:
                self.table["oom_rank_cap"][row] = max(
                    self.defaults.rank_min, min(rank // 2, self.table["oom_rank_cap"][row])
                )

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "clients": self.table.state_dict(),
            "average_rank": self.average_rank.state_dict(),
            "prior_scale": self.prior_scale.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.table.load_state_dict(state["clients"])
        if "compute_reports" not in state["clients"]["columns"]:  # saved before PriorScale: keep what was learned
            self.table["compute_reports"][:] = 1.0
        self.average_rank.load_state_dict(state["average_rank"])
        self.prior_scale.load_state_dict(state.get("prior_scale", {}))
