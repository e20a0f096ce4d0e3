"""Figures that compare arms over seeds: score vs clock with seed bands, work per tier, and
the speed/fairness trade-off. Built like flq/metrics/plots.py: ``Figure`` objects, never pyplot.

A panel is one setting (e.g. one partition); in it every arm has one record list per seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .plots import _draw_target, _save
from .records import RoundRecord
from .summary import score_at_clock

Runs = Sequence[Sequence[RoundRecord]]  # one record list per seed


def score_band(runs: Runs, clocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, min, max) over seeds of the score each run had at every clock (``score_at_clock``);
    NaN where some seed had no evaluation yet or had already ended, so a band covers only the
    clock every seed ran (a run's last score is not carried past its end)."""
    values = np.array(
        [
            [np.nan if (s := score_at_clock(records, t)) is None or t > records[-1].clock_s else s for t in clocks]
            for records in runs
            if records
        ],
        dtype=float,
    )
    if values.size == 0:
        empty = np.full(len(clocks), np.nan)
        return empty, empty, empty
    return values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_score_bands(
    panels: Mapping[str, Mapping[str, Runs]],
    path: str | Path,
    target: float | None = None,
    clock_budget: float | None = None,
    points: int = 200,
) -> Path:
    """Per panel, each arm's mean score over seeds vs clock, shaded from the worst to the best seed
    (``clock_budget``: a vertical line at the equal clock)."""
    fig = Figure(figsize=(6.4 * len(panels), 4.6))
    for i, (title, arms) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        end = max((r[-1].clock_s for runs in arms.values() for r in runs if r), default=1.0)
        for j, (arm, runs) in enumerate(arms.items()):
            # the grid holds every evaluation's clock, so each score shows from the moment it exists
            evaluated = np.array(sorted({r.clock_s for records in runs for r in records}))
            clocks = np.union1d(np.linspace(0.0, end, points), evaluated)
            mean, low, high = score_band(runs, clocks)
            color = f"C{j % 10}"
            ax.plot(
                clocks,
                mean,
                color=color,
                label=f"{arm} ({len(runs)} seed{'' if len(runs) == 1 else 's'})",
                linewidth=1.2,
                drawstyle="steps-post",
            )
            marked = np.isin(clocks, evaluated) & np.isfinite(mean)
            ax.scatter(clocks[marked], mean[marked], color=color, s=8)
            ax.fill_between(clocks, low, high, color=color, alpha=0.15, linewidth=0, step="post")
        _draw_target(ax, target)
        if clock_budget is not None:
            ax.axvline(clock_budget, color="grey", linestyle=":", linewidth=1, label="equal clock")
        ax.set_title(title)
        ax.set_xlabel("time on the virtual clock (s)")
        ax.set_ylabel("held-out score (mean; band: min-max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="x-small")
    return _save(fig, path)


def plot_tier_work(panels: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path, ylabel: str) -> Path:
    """Per panel, grouped bars: one group per arm, one bar per tier (``panels[title][arm][tier]``)."""
    fig = Figure(figsize=(max(6.4, 1.0 + 0.9 * max((len(a) for a in panels.values()), default=1)) * len(panels), 4.4))
    for i, (title, arms) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        tiers = sorted({t for by_tier in arms.values() for t in by_tier})
        width = 0.8 / max(1, len(tiers))
        x = np.arange(len(arms))
        # more groups than the 10 default colours (tiers split by true speed): 20 distinct ones
        colors = [f"C{k}" for k in range(10)] if len(tiers) <= 10 else list(matplotlib.colormaps["tab20"].colors)
        for k, tier in enumerate(tiers):
            heights = [by_tier.get(tier, 0.0) for by_tier in arms.values()]
            ax.bar(x - 0.4 + width * (k + 0.5), heights, width, label=tier, color=colors[k % len(colors)])
        ax.set_xticks(x, list(arms), rotation=35, ha="right", fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_tradeoff(
    panels: Mapping[str, Mapping[str, tuple[float | None, float | None]]], path: str | Path, xlabel: str, ylabel: str
) -> Path:
    """Per panel, one point per arm at (x, y), e.g. (time to target, worst client at that clock)."""
    fig = Figure(figsize=(6.0 * len(panels), 4.4))
    for i, (title, arms) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(1, len(panels), i)
        for j, (arm, (x, y)) in enumerate(arms.items()):
            if x is None or y is None:
                continue
            ax.scatter([x], [y], color=f"C{j % 10}", label=arm)
            ax.annotate(arm, (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    return _save(fig, path)
