"""Rank (and bits) schedulers behind one small interface; pure Python/numpy (+ cvxpy for ``solver``)."""

from .bandit import BanditScheduler
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
from .lite import LiteScheduler
from .priors import MemoryModel
from .registry import SCHEDULERS, build_scheduler
from .tier import TierScheduler

__all__ = [
    "SCHEDULERS",
    "Assignment",
    "BanditScheduler",
    "ClientInfo",
    "ClientReport",
    "FixedRankScheduler",
    "LiteScheduler",
    "MemoryModel",
    "RankScheduler",
    "RoundOutcome",
    "SchedulerDefaults",
    "TableScheduler",
    "TierScheduler",
    "build_scheduler",
]


def __getattr__(name: str):
    # The solver baseline needs cvxpy (slow to import): load it only when asked for.
    if name == "SolverScheduler":
        from .solver import SolverScheduler

        return SolverScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
