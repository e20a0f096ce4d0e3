"""How far the step-time prior is off, learned from the clients that have reported.

A client's prior compute time is the run's reference step estimate (flq/task/cost.py) times its
tier's compute factor. For a model the estimate does not size well (convolutions, small models
whose steps are mostly fixed overhead) it can be off by an order of magnitude, and every client
then misses its first deadline. Each report with compute says by how much: measured compute
seconds over the prior's prediction for the same work. ``PriorScale`` pools these ratios
(geometric mean) per tier and over the whole run, so a client that has not reported yet starts
from its tier's measured scale, or the run's where its tier has no reports yet (the estimate's
error is mostly the model's, shared by all tiers); with no reports at all the scale is 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class PriorScale:
    """Geometric mean of measured / prior compute time, per tier and run-wide."""

    def __init__(self) -> None:
        self.log_sums: dict[str, float] = {}  # by tier name ("" for clients without a tier)
        self.counts: dict[str, int] = {}

    def add(self, tiers: Sequence[str | None], ratios: np.ndarray) -> None:
        """Pool one ratio per report; ratios that are not finite and positive are ignored."""
        for tier, ratio in zip(tiers, np.asarray(ratios, dtype=np.float64).tolist(), strict=True):
            if not (math.isfinite(ratio) and ratio > 0):
                continue
            key, value = tier or "", math.log(ratio)
            self.log_sums[key] = self.log_sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    @property
    def reported(self) -> bool:
        """Whether any report has been pooled (else every scale is 1)."""
        return bool(self.counts)

    def scale(self, tier: str | None) -> float:
        """The factor to multiply tier ``tier``'s prior compute time by."""
        key = tier or ""
        if self.counts.get(key):
            return math.exp(self.log_sums[key] / self.counts[key])
        if self.counts:  # the run's, pooled over every tier
            return math.exp(sum(self.log_sums.values()) / sum(self.counts.values()))
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"log_sums": dict(self.log_sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.log_sums = {str(k): float(v) for k, v in state.get("log_sums", {}).items()}
        self.counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}
