"""Rank (and bits) schedulers behind one small interface; pure Python/numpy."""

from .base import (
    Assignment,
    ClientInfo,
    ClientReport,
    FixedRankScheduler,
    RankScheduler,
    RoundOutcome,
    SchedulerDefaults,
    TableScheduler,
)

__all__ = [
    "Assignment",
    "ClientInfo",
    "ClientReport",
    "FixedRankScheduler",
    "RankScheduler",
    "RoundOutcome",
    "SchedulerDefaults",
    "TableScheduler",
]
