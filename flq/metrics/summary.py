"""A run's summary, rebuilt from its round records alone.

Every metric is a small function of ``list[RoundRecord]``; ``summarize`` gathers them into one
JSON-serialisable dict (``summary.json``). docs/clock.md defines each metric precisely.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..status import ClientStatus
from .records import SUMMARY_FILE, ClientRoundRecord, RoundRecord

UNTIERED = "untiered"  # key for clients that reported no tier


# Whether each score rises as the model improves (perplexity falls).
HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False, "rouge-l": True}


def higher_is_better_for(score_name: str) -> bool:
    if score_name not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown score {score_name!r}: say whether higher is better")
    return HIGHER_IS_BETTER[score_name]


def reaches(score: float, target: float, higher_is_better: bool) -> bool:
    return score >= target if higher_is_better else score <= target


# -- score and time-to-target -------------------------------------------------------------
def _scored(records: Sequence[RoundRecord]) -> list[RoundRecord]:
    return [r for r in records if r.score is not None and math.isfinite(r.score)]


def _scores_until(records: Sequence[RoundRecord], clock_s: float) -> list[float]:
    """The global scores evaluated at or before ``clock_s``, in order."""
    return [r.score for r in _scored(records) if r.clock_s <= clock_s]


def final_score(records: Sequence[RoundRecord]) -> float | None:
    scored = _scored(records)
    return scored[-1].score if scored else None


def _final(records: Sequence[RoundRecord], field: str) -> float | None:
    """``field`` of the last scored round (None where it has none: causal LM, or an older run)."""
    scored = _scored(records)
    return getattr(scored[-1], field) if scored else None


def best_score(records: Sequence[RoundRecord], higher_is_better: bool) -> float | None:
    scores = [r.score for r in _scored(records)]
    if not scores:
        return None
    return max(scores) if higher_is_better else min(scores)


@dataclass(frozen=True)
class TargetHit:
    rounds: int  # the first round whose score reached the target
    clock_s: float  # interpolated clock time the target was crossed
    clock_s_at_round: float  # clock time at the end of that round (no interpolation)


def time_to_target(records: Sequence[RoundRecord], target: float, higher_is_better: bool) -> TargetHit | None:
    """When the global score first reached ``target``; None if it never did.

    Clock time is interpolated linearly between the last scored round below the target and the
    first one at or past it. With no scored round before (the target reached by the first
    evaluated round), there is nothing to interpolate from and the time is that round's end.
    Rounds without a score are skipped.
    """
    scored = _scored(records)
    for i, hit in enumerate(scored):
        if not reaches(hit.score, target, higher_is_better):
            continue
        if i == 0:
            return TargetHit(hit.server_round, hit.clock_s, hit.clock_s)
        before = scored[i - 1]
        fraction = (target - before.score) / (hit.score - before.score)
        clock_s = before.clock_s + fraction * (hit.clock_s - before.clock_s)
        return TargetHit(hit.server_round, clock_s, hit.clock_s)
    return None


def sustained_time_to_target(
    records: Sequence[RoundRecord], target: float, higher_is_better: bool, evaluations: int = 2
) -> TargetHit | None:
    """The first evaluation from which the score stays at or past ``target`` for ``evaluations``
    consecutive evaluations (itself included); None if none does.

    One evaluation on a small held-out set can cross the target by luck and fall back; this
    counts a crossing only once the next evaluation(s) confirm it. The clock is that first
    evaluation's (no interpolation), so a hit is always later than or equal to ``time_to_target``'s.
    A crossing in the last evaluation(s) of a run has nothing to confirm it and does not count.
    """
    if evaluations < 1:
        raise ValueError(f"evaluations must be at least 1, got {evaluations}")
    scored = _scored(records)
    run = 0  # consecutive evaluations at or past the target, ending at i
    for i, record in enumerate(scored):
        run = run + 1 if reaches(record.score, target, higher_is_better) else 0
        if run == evaluations:
            first = scored[i - evaluations + 1]
            return TargetHit(first.server_round, first.clock_s, first.clock_s)
    return None


def score_at_clock(records: Sequence[RoundRecord], clock_s: float) -> float | None:
    """The global score the run had at ``clock_s``: its last evaluation at or before it (None
    before the first). Compares runs at equal clock whatever their round lengths."""
    at = _scores_until(records, clock_s)
    return at[-1] if at else None


def late_score_at_clock(records: Sequence[RoundRecord], clock_s: float, evaluations: int = 5) -> float | None:
    """Mean of the last ``evaluations`` global scores at or before ``clock_s`` (None before the
    first): the end of a run read from several evaluations, as one swings by its held-out CI."""
    if evaluations < 1:
        raise ValueError(f"evaluations must be at least 1, got {evaluations}")
    at = _scores_until(records, clock_s)[-evaluations:]
    return sum(at) / len(at) if at else None


# -- deadlines ----------------------------------------------------------------------------
def round_within_deadline(record: RoundRecord, deadline_s: float) -> bool:
    """The round ended by the deadline and no client that replied with an update was late.

    A client counts as late if the policy dropped it (status ``late``) or it was accepted but
    finished after the deadline (``wait`` keeps such replies). Rejected, failed and out-of-memory
    clients are failures, not lateness, and are counted elsewhere.
    """
    if record.round_s > deadline_s:
        return False
    for c in record.clients:
        if c.status == ClientStatus.LATE:
            return False
        if c.status == ClientStatus.OK and (not c.on_time or c.round_s > deadline_s):
            return False
    return True


def deadline_share(records: Sequence[RoundRecord], deadline_s: float | None = None) -> float | None:
    """Share of rounds within their deadline, over the rounds that had one.

    A round's deadline is its record's; ``deadline_s`` stands in where the run had none (to
    judge a ``wait`` baseline against the deadline of the runs it is compared with).
    None if no round had a deadline.
    """
    judged = [
        round_within_deadline(r, r.deadline_s if r.deadline_s is not None else deadline_s)
        for r in records
        if r.deadline_s is not None or deadline_s is not None
    ]
    return sum(judged) / len(judged) if judged else None


# -- bytes --------------------------------------------------------------------------------
def bytes_per_round(records: Sequence[RoundRecord]) -> dict[str, float]:
    up = [r.bytes_up for r in records]
    down = [r.bytes_down for r in records]
    return {
        "bytes_up_per_round": float(np.mean(up)) if up else 0.0,
        "bytes_down_per_round": float(np.mean(down)) if down else 0.0,
        "bytes_up_total": int(sum(up)),
        "bytes_down_total": int(sum(down)),
        "bytes_total": int(sum(up) + sum(down)),
    }


# -- fairness -----------------------------------------------------------------------------
def jain_index(values: Sequence[float]) -> float:
    """(sum x)^2 / (n * sum x^2): 1 when all equal, 1/n when one client has everything."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("Jain's index of no values")
    squares = float(np.sum(x * x))
    if squares == 0.0:
        return 1.0  # all zero: equal shares
    return float(np.sum(x)) ** 2 / (x.size * squares)


def fairness(records: Sequence[RoundRecord], higher_is_better: bool) -> dict[str, Any] | None:
    """Per-client scores of the global model on each client's own test split, from the last
    round that evaluated them: worst, p10, mean and Jain's index. None if no round did.

    ``p10`` is the 10th percentile from the bad end (numpy's linear percentile): the score that
    90% of clients reach or beat (for perplexity, the 90th percentile).
    """
    for record in reversed(records):
        found = _client_fairness(record, higher_is_better)
        if found:
            return found
    return None


def fairness_at_clock(records: Sequence[RoundRecord], clock_s: float, higher_is_better: bool) -> dict[str, Any] | None:
    """``fairness`` as the run stood at ``clock_s``: from the last round at or before it that
    evaluated clients (its ``round`` says which; None if none did by then)."""
    return fairness([r for r in records if r.clock_s <= clock_s], higher_is_better)


def label_mix_scores(per_class_score: Sequence[float | None], histograms: Sequence[Sequence[int]]) -> list[float]:
    """Each client's expected accuracy under the global model: the per-class accuracy measured on
    the server's held-out set, weighted by the client's own label counts.

    A client's own test split under severe skew holds a handful of examples (its score moves in
    steps of 1/n); this estimate uses the whole held-out set and covers every client, sampled or
    not, at every evaluation. It assumes a class looks the same everywhere (label skew, not
    feature skew). Classes the held-out set lacks are left out of a client's weights; a client
    none of whose classes were measured gets NaN.
    """
    acc = np.asarray([np.nan if a is None else a for a in per_class_score], dtype=float)
    scores = []
    for hist in histograms:
        h = np.asarray(hist, dtype=float)
        if h.size != acc.size:
            raise ValueError(f"a histogram of {h.size} classes against {acc.size} per-class scores")
        known = ~np.isnan(acc) & (h > 0)
        scores.append(float(np.dot(h[known], acc[known]) / h[known].sum()) if known.any() else math.nan)
    return scores


def label_mix_fairness_at_clock(
    records: Sequence[RoundRecord], clock_s: float, histograms: Sequence[Sequence[int]]
) -> dict[str, Any] | None:
    """``fairness``'s figures for ``label_mix_scores`` over all clients, from the last round at or
    before ``clock_s`` that measured per-class accuracy (None if none had)."""
    measured = [r for r in records if r.clock_s <= clock_s and r.per_class_score]
    if not measured:
        return None
    last = measured[-1]
    return _spread(last, label_mix_scores(last.per_class_score, histograms), True)


def _client_fairness(record: RoundRecord, higher_is_better: bool) -> dict[str, Any] | None:
    return _spread(record, [e.score for e in record.client_eval if e.score is not None], higher_is_better)


def _spread(record: RoundRecord, scores: Sequence[float], higher_is_better: bool) -> dict[str, Any] | None:
    """Worst, p10 (from the bad end), mean and Jain's index of the finite ``scores``; None if none."""
    x = np.asarray([s for s in scores if math.isfinite(s)], dtype=float)
    if x.size == 0:
        return None
    return {
        "round": record.server_round,
        "clock_s": record.clock_s,
        "clients": int(x.size),
        "worst": float(x.min() if higher_is_better else x.max()),
        "p10": float(np.percentile(x, 10 if higher_is_better else 90)),
        "mean": float(x.mean()),
        "jain": jain_index(x),
    }


# -- per tier -----------------------------------------------------------------------------
def _tier_key(tier: str | None) -> str:
    return tier if tier else UNTIERED


def peak_memory_per_tier(records: Sequence[RoundRecord]) -> dict[str, float]:
    """The highest peak memory (MB) any client of the tier reported, in any round.

    Clients that measured nothing (failed, out of memory before training) are left out, so a
    tier that never trained does not appear rather than showing 0 MB.
    """
    peaks: dict[str, float] = {}
    for r in records:
        for c in r.clients:
            if c.peak_mem_mb <= 0:
                continue
            key = _tier_key(c.tier)
            peaks[key] = max(peaks.get(key, 0.0), float(c.peak_mem_mb))
    return dict(sorted(peaks.items()))


def dropped_per_tier(records: Sequence[RoundRecord]) -> dict[str, int]:
    """Client-rounds discarded for lateness (status ``late``), per tier; every tier seen is listed."""
    counts: dict[str, int] = {}
    for r in records:
        for c in r.clients:
            key = _tier_key(c.tier)
            counts[key] = counts.get(key, 0) + (c.status == ClientStatus.LATE)
    return dict(sorted(counts.items()))


def work_per_tier(
    records: Sequence[RoundRecord], group: Callable[[ClientRoundRecord], str] | None = None
) -> dict[str, dict[str, float]]:
    """Per tier, what its sampled clients contributed: client-rounds sampled, the share whose
    update was accepted, and the training examples per sampled client-round that reached the
    global model (a dropped or failed client's count as 0), so tiers compare per chance given.
    ``group`` names another grouping of the clients (e.g. tier and true speed)."""
    totals: dict[str, list[float]] = {}
    for r in records:
        for c in r.clients:
            entry = totals.setdefault(group(c) if group else _tier_key(c.tier), [0, 0, 0.0])
            accepted = c.status == ClientStatus.OK
            entry[0] += 1
            entry[1] += accepted
            entry[2] += c.num_examples if accepted else 0
    return {
        tier: {"client_rounds": n, "accepted_share": ok / n, "examples_per_client_round": examples / n}
        for tier, (n, ok, examples) in sorted(totals.items())
    }


def rejected_replies(records: Sequence[RoundRecord]) -> int:
    return sum(len(r.rejected) for r in records)


# -- all together -------------------------------------------------------------------------
def summarize(
    records: Sequence[RoundRecord],
    target: float | None,
    higher_is_better: bool,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """The run's summary (JSON-serialisable); ``deadline_s`` as in ``deadline_share``."""
    last = records[-1] if records else None
    hit = time_to_target(records, target, higher_is_better) if target is not None else None
    sustained = sustained_time_to_target(records, target, higher_is_better) if target is not None else None
    deadlines = sorted({r.deadline_s for r in records if r.deadline_s is not None})
    return {
        "rounds": len(records),
        "clock": last.clock if last else None,
        "clock_s": last.clock_s if last else 0.0,
        "wall_s": last.wall_s if last else 0.0,
        "policy": last.policy if last else None,
        "deadline_s": deadlines[-1] if deadlines else deadline_s,
        "score_name": last.score_name if last else None,
        "target": target,
        "higher_is_better": higher_is_better,
        "final_score": final_score(records),
        "final_balanced_accuracy": _final(records, "balanced_accuracy"),
        "final_macro_f1": _final(records, "macro_f1"),
        "final_top_prediction_share": _final(records, "top_prediction_share"),
        "final_exact_match": _final(records, "exact_match"),
        "final_response_perplexity": _final(records, "response_perplexity"),
        "best_score": best_score(records, higher_is_better),
        "rounds_to_target": hit.rounds if hit else None,
        "clock_s_to_target": hit.clock_s if hit else None,
        "clock_s_at_target_round": hit.clock_s_at_round if hit else None,
        "rounds_to_sustained_target": sustained.rounds if sustained else None,
        "clock_s_to_sustained_target": sustained.clock_s if sustained else None,
        "within_deadline_share": deadline_share(records, deadline_s),
        **bytes_per_round(records),
        "fairness": fairness(records, higher_is_better),
        "peak_mem_mb_per_tier": peak_memory_per_tier(records),
        "dropped_per_tier": dropped_per_tier(records),
        "work_per_tier": work_per_tier(records),
        "rejected_replies": rejected_replies(records),
    }


def write_summary(run_dir: str | Path, summary: dict[str, Any], name: str = SUMMARY_FILE) -> Path:
    """Write ``summary`` as JSON into ``run_dir`` (atomically: a reader never sees half a file)."""
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path
