"""The clients' learning rate across rounds: warm-up, then constant or cosine decay. Pure math."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")
LR_FLOOR = 0.1  # cosine decays to this share of the base rate


def round_learning_rate(base: float, schedule: str, server_round: int, num_rounds: int, warmup_rounds: int) -> float:
    """The clients' learning rate in ``server_round`` (1-based) of ``num_rounds``.

    ``warmup_rounds`` > 0: linear warm-up, ``base * r / (warmup_rounds + 1)`` in round r, so the
    first rounds on skewed data move the global gently. Then ``constant`` keeps ``base``;
    ``cosine`` decays it to ``LR_FLOOR`` of ``base`` along a half cosine that the last round
    never reaches, so every round still trains.
    """
    if server_round <= warmup_rounds:
        return base * server_round / (warmup_rounds + 1)
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {LR_SCHEDULES}")
    progress = (server_round - 1 - warmup_rounds) / max(1, num_rounds - warmup_rounds)
    return base * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))
