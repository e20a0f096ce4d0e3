"""PNG figures of a run (and of several runs side by side), from round records alone.

Figures are built on ``matplotlib.figure.Figure`` (rendered by Agg when saved as PNG), never
through pyplot: no global backend or figure state, so plotting works headless and in threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..status import ClientStatus
from .records import (
    ClientRoundRecord,
    RoundRecord,
)

SCORE_FIGURE = "score_vs_clock.png"
TIER_TIME_FIGURE = "tier_time_breakdown.png"
RANK_FIGURE = "rank_heatmap.png"
COSINE_FIGURE = "update_cosine_heatmap.png"
COMPARISON_FIGURE = "compare_score_vs_clock.png"

# Letters drawn over a heatmap cell whose client did not count.
STATUS_MARKS = {
    ClientStatus.LATE: "late",
    ClientStatus.REJECTED: "rej",
    ClientStatus.FAILED: "fail",
    ClientStatus.OOM: "oom",
}
_DPI = 120


def _clock_label(records: Sequence[RoundRecord]) -> str:
    clock = records[-1].clock if records else "run's"
    return f"time on the {clock} clock (s)"


def _score_points(records: Sequence[RoundRecord]) -> tuple[list[float], list[float]]:
    points = [(r.clock_s, r.score) for r in records if r.score is not None and math.isfinite(r.score)]
    return [p[0] for p in points], [p[1] for p in points]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _draw_target(ax, target: float | None) -> None:
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")


# -- score vs clock -----------------------------------------------------------------------
def plot_score_vs_clock(records: Sequence[RoundRecord], path: str | Path, target: float | None = None) -> Path:
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    xs, ys = _score_points(records)
    ax.plot(xs, ys, marker="o", markersize=3, label="global score")
    _draw_target(ax, target)
    ax.set_xlabel(_clock_label(records))
    ax.set_ylabel(records[-1].score_name if records else "score")
    ax.set_title("Global score vs clock time")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def plot_comparison(
    runs: Sequence[tuple[str, Sequence[RoundRecord]]], path: str | Path, target: float | None = None
) -> Path:
    """Several runs' score-vs-clock curves on one axis (``runs``: (label, records) pairs)."""
    fig = Figure(figsize=(7.0, 4.4))
    ax = fig.add_subplot()
    for label, records in runs:
        xs, ys = _score_points(records)
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    _draw_target(ax, target)
    clocks = sorted({r[-1].clock for _, r in runs if r})
    ax.set_xlabel(f"time on the {'/'.join(clocks) or 'run'} clock (s)")
    names = sorted({r[-1].score_name for _, r in runs if r})
    ax.set_ylabel("/".join(names) or "score")
    ax.set_title("Score vs clock time, per run")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


# -- per-tier time breakdown --------------------------------------------------------------
def slowest_per_tier(record: RoundRecord) -> dict[str, ClientRoundRecord]:
    """Per tier, the client that took longest this round (among those that replied with an
    update): the round waits for the slowest, so that is the tier's share of the round."""
    slowest: dict[str, ClientRoundRecord] = {}
    for c in record.clients:
        if c.status not in (ClientStatus.OK, ClientStatus.LATE):
            continue
        key = c.tier or "untiered"
        if key not in slowest or c.round_s > slowest[key].round_s:
            slowest[key] = c
    return slowest


def plot_tier_time_breakdown(records: Sequence[RoundRecord], path: str | Path) -> Path:
    """Per round and tier, stacked bars: compute (solid) under transfer (hatched)."""
    per_round = [slowest_per_tier(r) for r in records]
    tiers = sorted({t for rnd in per_round for t in rnd})
    fig = Figure(figsize=(max(6.4, 0.5 * len(records) * max(1, len(tiers))), 4.2))
    ax = fig.add_subplot()
    rounds = np.arange(len(records))
    width = 0.8 / max(1, len(tiers))
    colors = [f"C{i % 10}" for i in range(len(tiers))]
    for i, tier in enumerate(tiers):
        compute = np.array([rnd[tier].compute_s if tier in rnd else 0.0 for rnd in per_round])
        comm = np.array([rnd[tier].comm_s if tier in rnd else 0.0 for rnd in per_round])
        x = rounds - 0.4 + width * (i + 0.5)
        ax.bar(x, compute, width, color=colors[i])
        ax.bar(x, comm, width, bottom=compute, color=colors[i], alpha=0.45, hatch="//", edgecolor=colors[i])
    deadlines = {r.deadline_s for r in records if r.deadline_s is not None}
    for d in deadlines:
        ax.axhline(d, color="red", linestyle="--", linewidth=1)
    handles = [Patch(color=c, label=t) for t, c in zip(tiers, colors, strict=True)]
    handles += [
        Patch(facecolor="white", edgecolor="black", label="compute"),
        Patch(facecolor="white", edgecolor="black", hatch="//", label="transfer"),
    ]
    if deadlines:
        handles.append(Patch(color="red", label="deadline"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.set_xticks(rounds, [str(r.server_round) for r in records])
    ax.set_xlabel("round")
    ax.set_ylabel(f"seconds on the {records[-1].clock if records else 'run'} clock")
    ax.set_title("Slowest client per tier: compute vs transfer")
    return _save(fig, path)


# -- rank heatmap -------------------------------------------------------------------------
def _client_label(c: ClientRoundRecord) -> str:
    who = f"p{c.partition_id}" if c.partition_id is not None else f"node {c.node_id}"
    return f"{who} ({c.tier})" if c.tier else who


def client_round_matrix(
    records: Sequence[RoundRecord], value: Callable[[ClientRoundRecord], float | None]
) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Clients x rounds: (row labels, ``value`` with NaN where not sampled or None, status mark per cell)."""
    rows: dict[int, str] = {}
    sort_keys: dict[int, tuple] = {}
    for r in records:
        for c in r.clients:
            rows.setdefault(c.node_id, _client_label(c))
            sort_keys.setdefault(c.node_id, (c.partition_id is None, c.partition_id or 0, c.node_id))
    order = sorted(rows, key=sort_keys.__getitem__)  # by partition id, then node id
    index = {n: i for i, n in enumerate(order)}
    values = np.full((len(order), len(records)), np.nan)
    marks = [["" for _ in records] for _ in order]
    for j, r in enumerate(records):
        for c in r.clients:
            v = value(c)
            values[index[c.node_id], j] = np.nan if v is None else v
            marks[index[c.node_id]][j] = STATUS_MARKS.get(c.status, "")
    return [rows[n] for n in order], values, marks


def rank_matrix(records: Sequence[RoundRecord]) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Clients x rounds: (row labels, ranks with NaN where not sampled, status mark per cell)."""
    return client_round_matrix(records, lambda c: c.rank)


def plot_client_heatmap(
    records: Sequence[RoundRecord],
    path: str | Path,
    value: Callable[[ClientRoundRecord], float | None],
    title: str,
    colorbar: str,
    cell_format: str,
    light: tuple[float, float],
    **imshow: Any,
) -> Path:
    """One value per client per round; blank = not sampled (or no value), red text = late/rejected/failed/oom.

    ``light``: the colormap's light stretch (normalised), where cell text is drawn black, else white.
    """
    labels, values, marks = client_round_matrix(records, value)
    fig = Figure(figsize=(max(5.0, 0.45 * len(records) + 2.5), max(2.5, 0.3 * len(labels) + 1.5)))
    ax = fig.add_subplot()
    if not labels:
        ax.text(0.5, 0.5, "no clients recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest", **imshow)
    fig.colorbar(image, ax=ax, label=colorbar)
    annotate = values.size <= 400
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if marks[i][j]:
                ax.text(j, i, marks[i][j], ha="center", va="center", color="red", fontsize=7, fontweight="bold")
            elif annotate and not np.isnan(values[i, j]):
                shade = "black" if light[0] <= image.norm(values[i, j]) <= light[1] else "white"
                ax.text(j, i, format(values[i, j], cell_format), ha="center", va="center", color=shade, fontsize=7)
    ax.set_xticks(range(len(records)), [str(r.server_round) for r in records])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("round")
    ax.set_title(title)
    return _save(fig, path)


def plot_rank_heatmap(records: Sequence[RoundRecord], path: str | Path) -> Path:
    """LoRA rank per client per round; blank = not sampled, text = late/rejected/failed/oom."""
    return plot_client_heatmap(
        records, path, lambda c: c.rank, "Rank per client per round (red: not aggregated)", "LoRA rank", ".0f",
        (0.6, 1.0), cmap="viridis",
    )  # fmt: skip


def plot_cosine_heatmap(records: Sequence[RoundRecord], path: str | Path) -> Path:
    """Each client's update's cosine to the round's aggregate: who pulls against the others."""
    return plot_client_heatmap(
        records, path, lambda c: c.cosine_to_aggregate, "Update cosine to the round's aggregate (red: not aggregated)",
        "cosine", ".2f", (0.25, 0.75), cmap="RdBu", vmin=-1.0, vmax=1.0,
    )  # fmt: skip


def write_run_figures(records: Sequence[RoundRecord], out_dir: str | Path, target: float | None = None) -> list[Path]:
    """The four per-run figures into ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_score_vs_clock(records, out / SCORE_FIGURE, target),
        plot_tier_time_breakdown(records, out / TIER_TIME_FIGURE),
        plot_rank_heatmap(records, out / RANK_FIGURE),
        plot_cosine_heatmap(records, out / COSINE_FIGURE),
    ]
