"""Statistics over seeds for arms run as a paired design: mean +- std, and paired ratios with a
percentile-bootstrap confidence interval.

In a paired design every arm of a seed shares that seed's partitions and client sampling, so the
per-seed ratio of two arms cancels what the seed did to both. A ratio is read as "how many times
sooner": ``reference time / arm time`` (> 1: the arm is faster). Ratios are averaged as a geometric
mean (the mean of their logs), so A-over-B is exactly the reciprocal of B-over-A. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std, count) over the values that exist; std is None below two values."""
    present = np.asarray([v for v in values if v is not None], dtype=float)
    if present.size == 0:
        return None, None, 0
    std = float(present.std(ddof=1)) if present.size > 1 else None
    return float(present.mean()), std, int(present.size)


def geometric_mean(values: Sequence[float]) -> float:
    x = np.asarray(values, dtype=float)
    if x.size == 0 or np.any(x <= 0):
        raise ValueError("the geometric mean needs positive values")
    return float(np.exp(np.mean(np.log(x))))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: geometric mean) over ``values``.

    ``statistic`` maps a (resamples, n) array to one value per row. Resampling is with
    replacement, n of n, from a seeded generator, so a report is reproducible to the digit.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("a bootstrap needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    stat = statistic or _rowwise_geometric_mean
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(resamples, x.size))]
    estimates = stat(samples)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def _rowwise_geometric_mean(samples: np.ndarray) -> np.ndarray:
    return np.exp(np.mean(np.log(samples), axis=1))


# Resampling one value gives a point, not an interval: one pair is reported without one.
NO_INTERVAL = "one pair: no CI"


def has_interval(pairs: int) -> bool:
    """Whether ``pairs`` paired values give a bootstrap interval (more than one)."""
    return pairs > 1


@dataclass(frozen=True)
class PairedRatio:
    """Per-seed ratios reference/arm over the seeds where both have a value, summarised."""

    ratios: dict[int, float]  # seed -> reference / arm
    missing: tuple[int, ...]  # seeds where one of the two has no value (e.g. never reached the target)
    estimate: float | None  # geometric mean of the ratios
    ci: tuple[float, float] | None  # percentile bootstrap over seeds

    @property
    def includes_one(self) -> bool | None:
        return None if self.ci is None else self.ci[0] <= 1.0 <= self.ci[1]

    @property
    def has_interval(self) -> bool:
        return has_interval(len(self.ratios))

    def describe(self) -> str:
        """``1.62x [1.21, 2.05]`` (+ ``, CI includes 1`` / ``(4 of 5 pairs)``); one pair: no interval."""
        if self.estimate is None or self.ci is None:
            return "n/a"
        if not self.has_interval:
            text = f"{self.estimate:.2f}x, {NO_INTERVAL}"
        else:
            text = f"{self.estimate:.2f}x [{self.ci[0]:.2f}, {self.ci[1]:.2f}]"
            if self.includes_one:
                text += ", CI includes 1"
        if self.missing:
            text += f" ({len(self.ratios)} of {len(self.ratios) + len(self.missing)} pairs)"
        return text


def paired_ratio(
    reference: Mapping[int, float | None],
    arm: Mapping[int, float | None],
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedRatio:
    """Per seed reference[s] / arm[s], their geometric mean and its bootstrap CI over seeds.

    Seeds where either value is missing are left out and listed: a run that never reached the
    target has no time to divide, and guessing one would bias the ratio either way.
    """
    seeds = sorted(set(reference) | set(arm))
    ratios, missing = {}, []
    for s in seeds:
        ref, mine = reference.get(s), arm.get(s)
        if ref is None or mine is None or not (ref > 0 and mine > 0):
            missing.append(s)
        else:
            ratios[s] = ref / mine
    if not ratios:
        return PairedRatio({}, tuple(missing), None, None)
    values = list(ratios.values())
    ci = bootstrap_ci(values, level=level, resamples=resamples, seed=seed)
    return PairedRatio(ratios, tuple(missing), geometric_mean(values), ci)


def proportion_ci_half_width(p: float, n: int, z: float = Z_95) -> float:
    """Half-width of the normal-approximation CI of a proportion (an accuracy on n examples)."""
    if n <= 0:
        raise ValueError("n must be positive")
    return z * math.sqrt(max(p * (1 - p), 0.0) / n)
