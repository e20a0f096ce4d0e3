"""``solver``: the FAH-QLoRA two-stage baseline, with a convex solver (cvxpy) every round.

It observes, per client, compute seconds per step and transfer seconds per rank unit
(averages of its reports, seeded by its tier's prior) and, per round, the global loss
decrease per second of the average rank used. It decides ranks only (bits from the run's
tier table, the run's local steps, the deadline as budget), in two stages: the average
rank with the best observed loss-decrease rate, then per-client ranks from a relaxed
linear program (continuous ranks) solved with cvxpy, then rounding. Cost per round:
building and solving an LP with n + 1 variables and ~3n constraints (cvxpy's
canonicalisation plus an interior-point solve, CLARABEL here; roughly linear in n, over a
fixed floor per solve); measured times per round: benchmarks/results/scheduler_decision_time.md.

What is solved, exactly. Client i at rank r takes FAH-QLoRA's time

    t_i(r) = a_i + (r / r_max) * t_lora_i + e_i + f_i * r

with, for K local steps of s_i seconds each (s_i measured at rank r_max),
a_i = K s_i (1 - phi) the frozen backbone's share, t_lora_i = K s_i phi the LoRA share at
r_max (phi = ``lora_share``), e_i the fixed transfer time (round trips) and f_i the transfer
seconds per rank unit. Write b_i = a_i + e_i and c_i = t_lora_i / r_max + f_i.

Stage 1: among the candidate averages, the one whose rounds showed the highest global loss
decrease per second (exponential average per candidate); candidates never used go first,
nearest the run's rank first (on a log scale, as ``bandit`` does).

Stage 2, the relaxed problem (P1):

    minimise over r in R^n, T     T
    subject to                    b_i + c_i r_i <= T                for every client i
                                  r_min <= r_i <= u_i               (u_i: tier max rank, r_max)
                                  (1/n) sum_i r_i = r_bar           (stage 1, clipped to the bounds)
                                  T <= D                            (when the round has a deadline D)

If P1 is infeasible (the deadline cannot hold r_bar), the largest average it can (P2):

    maximise over r in R^n        sum_i r_i
    subject to                    b_i + c_i r_i <= max(D, b_i + c_i r_min),   r_min <= r_i <= u_i

Rounding: every r_i down, then one more unit to clients in order of largest fractional part
while the total stays within round(n * r_bar) and the client's time within the relaxed
round time (P1's T, or P2's per-client bound).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import cvxpy as cp
import numpy as np

from .bandit import exploration_order
from .base import Assignment, ClientInfo, ClientReport, RankScheduler, RoundOutcome, SchedulerDefaults
from .client_table import OK, ClientTable, ReportColumns, assignments_by_node
from .priors import by_tier, latency_s, reference_step_s, tier_profile, tier_rank_ceiling, transfer_s_per_rank

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = (2, 4, 8, 16, 32, 64)
PREFERRED_SOLVERS = ("CLARABEL", "ECOS", "HIGHS", "SCS", "OSQP")


def default_solver() -> str:
    """The first of CLARABEL, ECOS, HIGHS, SCS, OSQP that cvxpy has installed."""
    installed = set(cp.installed_solvers())
    for name in PREFERRED_SOLVERS:
        if name in installed:
            return name
    raise RuntimeError(f"no LP solver for cvxpy; installed: {sorted(installed)}")


@dataclass(frozen=True)
class RelaxedRanks:
    """A stage-2 solution: continuous ranks, each client's time bound, which problem gave it."""

    ranks: np.ndarray
    time_bound_s: np.ndarray  # per client: P1's T for everyone, or P2's own bound
    max_total: int  # rounding keeps sum(ranks) within this
    problem: str  # "P1" (average met) or "P2" (deadline-limited)


def solve_relaxed_ranks(
    fixed_s: np.ndarray,
    per_rank_s: np.ndarray,
    rank_min: int,
    rank_caps: np.ndarray,
    average_rank: float,
    deadline_s: float | None,
    solver: str,
) -> RelaxedRanks:
    """Solve P1 (or P2 when P1 is infeasible) of the module docstring with cvxpy."""
    n = fixed_s.size
    target_sum = float(np.clip(average_rank * n, rank_min * n, rank_caps.sum()))
    r, round_s = cp.Variable(n), cp.Variable()
    constraints = [
        fixed_s + cp.multiply(per_rank_s, r) <= round_s,
        r >= rank_min,
        r <= rank_caps,
        cp.sum(r) == target_sum,
    ]
    if deadline_s is not None:
        constraints.append(round_s <= deadline_s)
    p1 = cp.Problem(cp.Minimize(round_s), constraints)
    p1.solve(solver=solver)
    if p1.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        return RelaxedRanks(
            np.asarray(r.value).reshape(n), np.full(n, float(round_s.value)), int(round(target_sum)), "P1"
        )
    if deadline_s is None or p1.status not in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise cp.SolverError(f"P1 ended {p1.status}")
    bound = np.maximum(deadline_s, fixed_s + per_rank_s * rank_min)
    r2 = cp.Variable(n)
    p2 = cp.Problem(
        cp.Maximize(cp.sum(r2)), [fixed_s + cp.multiply(per_rank_s, r2) <= bound, r2 >= rank_min, r2 <= rank_caps]
    )
    p2.solve(solver=solver)
    if p2.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise cp.SolverError(f"P2 ended {p2.status}")
    return RelaxedRanks(np.asarray(r2.value).reshape(n), bound, int(rank_caps.sum()), "P2")


def round_ranks(
    relaxed: RelaxedRanks, fixed_s: np.ndarray, per_rank_s: np.ndarray, rank_min: int, rank_caps: np.ndarray
) -> np.ndarray:
    """Integer ranks: floors, then +1 by largest fractional part within the sum and the times."""
    values = np.clip(relaxed.ranks, rank_min, rank_caps)
    ranks = np.floor(values + 1e-6).astype(np.int64)
    fraction = values - ranks
    up = ranks + 1
    fits = (up <= rank_caps) & (fixed_s + per_rank_s * up <= relaxed.time_bound_s * (1 + 1e-9)) & (fraction > 1e-6)
    order = np.argsort(-fraction, kind="stable")
    eligible = fits[order]
    room = max(relaxed.max_total - int(ranks.sum()), 0)
    chosen = eligible & (np.cumsum(eligible) <= room)
    ranks[order[chosen]] += 1
    return ranks


class AverageRankByRate:
    """Stage 1: the candidate average rank with the best observed loss decrease per second."""

    def __init__(self, candidates: Sequence[int], first: int, smoothing: float = 0.5) -> None:
        self.candidates = sorted(set(int(c) for c in candidates))
        self.first = first
        self.smoothing = smoothing
        self.rates: list[float | None] = [None] * len(self.candidates)
        self.pending: dict[int, int] = {}

    def choose(self, server_round: int) -> int:
        untried = [i for i, rate in enumerate(self.rates) if rate is None]
        if untried:
            index = min(untried, key=lambda i: exploration_order(self.candidates[i], self.first))
        else:
            index = int(np.argmax(self.rates))
        self.pending = {server_round: index}
        return self.candidates[index]

    def record(self, server_round: int, rate: float | None) -> None:
        index = self.pending.pop(server_round, None)
        if index is None or rate is None or not math.isfinite(rate):
            return
        old = self.rates[index]
        self.rates[index] = rate if old is None else self.smoothing * rate + (1 - self.smoothing) * old

    def state_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "rates": list(self.rates),
            "pending": {str(r): i for r, i in self.pending.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["candidates"]) != self.candidates:
            raise ValueError(f"checkpoint candidates {state['candidates']} differ from {self.candidates}")
        self.rates = list(state["rates"])
        self.pending = {int(r): int(i) for r, i in state["pending"].items()}


def loss_decrease_per_s(reports: ReportColumns, outcome: RoundOutcome | None) -> float | None:
    """FAH-QLoRA's rate: global loss before minus after, over the round's time (None if unknown)."""
    if outcome is None or outcome.round_s <= 0:
        return None
    before, after = outcome.global_loss_before, outcome.global_loss_after
    if before is None or after is None:
        both = (reports.status == OK) & np.isfinite(reports.loss_before) & np.isfinite(reports.loss_after)
        if not both.any():
            return None
        weights = np.maximum(reports.num_examples[both], 1).astype(np.float64)
        before = float(np.average(reports.loss_before[both], weights=weights))
        after = float(np.average(reports.loss_after[both], weights=weights))
    return (before - after) / outcome.round_s


class SolverScheduler(RankScheduler):
    """FAH-QLoRA's two-stage rank choice (see the module docstring). Options: ``candidates``
    (stage-1 averages), ``lora_share`` (phi), ``smoothing`` (weight of the newest
    measurement in the per-client averages), ``solver`` (a cvxpy solver name)."""

    name = "solver"

    def __init__(
        self,
        defaults: SchedulerDefaults,
        *,
        tiers: Mapping[str, Any] | None = None,
        step_time_prior: Mapping[int, float] | None = None,
        bytes_per_rank: float | None = None,
        candidates: Sequence[int] = DEFAULT_CANDIDATES,
        lora_share: float = 0.1,
        smoothing: float = 0.5,
        solver: str | None = None,
    ) -> None:
        if not 1 <= defaults.rank_min <= defaults.rank_max:
            raise ValueError(f"need 1 <= rank_min <= rank_max, got [{defaults.rank_min}, {defaults.rank_max}]")
        if not 0.0 <= lora_share < 1.0:
            raise ValueError(f"lora_share must be in [0, 1), got {lora_share}")
        self.defaults = defaults
        self.tiers = tiers
        self.step_time_prior = dict(step_time_prior) if step_time_prior else None
        self.bytes_per_rank = bytes_per_rank
        self.lora_share = lora_share
        self.smoothing = smoothing
        self.solver = solver or default_solver()
        clipped = {min(max(c, defaults.rank_min), defaults.rank_max) for c in candidates}
        self.stage1 = AverageRankByRate(sorted(clipped), defaults.rank)
        # step_s: seconds per step at rank r_max; per_rank_s: transfer s per rank unit;
        # fixed_transfer_s: round trips; rank_cap: the tier's max rank
        self.table = ClientTable(
            {"step_s": 1.0, "per_rank_s": 0.0, "fixed_transfer_s": 0.0, "rank_cap": float(defaults.rank_max)}
        )

    # -- priors -----------------------------------------------------------------------
    def _init_rows(self, rows: np.ndarray, tiers: Sequence[str | None]) -> None:
        """New clients start from their tier's prior (one look-up per distinct tier)."""
        d = self.defaults
        names = np.asarray([t or "" for t in tiers], dtype=object)
        for name in set(names.tolist()):
            group, tier = rows[names == name], name or None
            profile = tier_profile(self.tiers, tier)
            bits = d.tier_bits.get(tier, d.bits)
            self.table["step_s"][group] = reference_step_s(self.step_time_prior, bits) * float(profile.compute_factor)
            self.table["per_rank_s"][group] = transfer_s_per_rank(profile, self.bytes_per_rank)
            self.table["fixed_transfer_s"][group] = latency_s(profile)
            self.table["rank_cap"][group] = tier_rank_ceiling(profile, d.rank_max)

    def time_model(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(b_i, c_i) of the module docstring: time = b_i + c_i * rank."""
        d, phi = self.defaults, self.lora_share
        work_s = d.local_steps * self.table["step_s"][rows]
        fixed = work_s * (1 - phi) + self.table["fixed_transfer_s"][rows]
        per_rank = work_s * phi / d.rank_max + self.table["per_rank_s"][rows]
        return fixed, per_rank

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
        average = self.stage1.choose(server_round)
        ranks = self._client_ranks(rows, average, deadline_s)
        bits = by_tier(list(map(attrgetter("tier"), clients)), lambda t: d.tier_bits.get(t, d.bits))
        steps = np.full(len(rows), d.local_steps, dtype=np.int64)
        budgets = None if not deadline_s else np.full(len(rows), float(deadline_s))
        return assignments_by_node(node_ids, ranks, bits, steps, budgets)

    def _client_ranks(self, rows: np.ndarray, average: int, deadline_s: float | None) -> np.ndarray:
        d = self.defaults
        fixed, per_rank = self.time_model(rows)
        caps = np.maximum(self.table["rank_cap"][rows], d.rank_min)  # the run's floor wins over a tier hint
        try:
            relaxed = solve_relaxed_ranks(fixed, per_rank, d.rank_min, caps, average, deadline_s or None, self.solver)
        except cp.SolverError as exc:
            log.warning("solver scheduler: %s; every client gets the average rank %d", exc, average)
            return np.clip(np.full(rows.size, average), d.rank_min, caps).astype(np.int64)
        return round_ranks(relaxed, fixed, per_rank, d.rank_min, caps)

    # -- observe ----------------------------------------------------------------------
    def observe(self, server_round: int, reports: Sequence[ClientReport], outcome: RoundOutcome | None = None) -> None:
        columns = ReportColumns(reports)
        self.stage1.record(server_round, loss_decrease_per_s(columns, outcome))
        if not len(columns):
            return
        rows = self.table.rows(
            columns.node_ids, lambda new, positions: self._init_rows(new, [reports[p].tier for p in positions])
        )
        self._learn_step_time(rows, columns)
        self._learn_transfer(rows, columns)

    def _blend(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        column = self.table[name]
        column[rows] = self.smoothing * values + (1 - self.smoothing) * column[rows]

    def _learn_step_time(self, rows: np.ndarray, columns: ReportColumns) -> None:
        """Seconds per step, rescaled to rank r_max with the model's own rank term."""
        measured = columns.timed & (columns.steps > 0) & (columns.compute_s > 0)
        if not measured.any():
            return
        phi, r_max = self.lora_share, self.defaults.rank_max
        rank_term = 1 - phi + phi * columns.rank[measured] / r_max
        self._blend("step_s", rows[measured], columns.compute_s[measured] / columns.steps[measured] / rank_term)

    def _learn_transfer(self, rows: np.ndarray, columns: ReportColumns) -> None:
        """Transfer seconds per rank unit: everything but compute and the fixed round trips."""
        non_compute = columns.non_compute_s
        measured = columns.timed & (columns.rank > 0) & (non_compute > 0)
        if not measured.any():
            return
        variable = np.maximum(non_compute[measured] - self.table["fixed_transfer_s"][rows[measured]], 0.0)
        self._blend("per_rank_s", rows[measured], variable / columns.rank[measured])

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"clients": self.table.state_dict(), "stage1": self.stage1.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.table.load_state_dict(state["clients"])
        self.stage1.load_state_dict(state["stage1"])
