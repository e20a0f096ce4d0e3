"""What the strategy tells whoever records a run: plain snapshots, never the strategy itself.

``flq.run_recorder.RunRecorder`` writes them to the run directory; a test can collect them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..adapter import AdapterState
from ..metrics.records import ClientEvalRecord
from ..sim.clock import ClockModel
from .accounting import RoundResult
from .roster import NodeProfile


@dataclass(frozen=True)
class RunStart:
    """What is known once the nodes have described themselves."""

    clock: str  # "virtual" or "real"
    clock_model: ClockModel
    nodes: list[NodeProfile]


@dataclass(frozen=True)
class RoundSnapshot:
    """A finished round as the recorder sees it (it never sees the strategy)."""

    server_round: int
    clock: str  # "virtual" or "real"
    clock_s: float  # the run's clock after this round
    deadline_s: float | None
    policy: str
    result: RoundResult
    global_state: AdapterState  # the global adapter after this round
    metrics: Mapping[str, float] | None  # the server's evaluation (score, loss), if any
    client_eval: list[ClientEvalRecord]
    scheduler_name: str
    scheduler_state: dict
    scheduler_ms: float
    rng_state: list  # the sampling generator's, for the checkpoint
    optimizer_state: dict[str, np.ndarray]  # the server optimizer's moments, for the checkpoint
    control_state: dict[str, np.ndarray] = field(default_factory=dict)  # SCAFFOLD's c ({} when off)


class RoundRecorder(Protocol):
    """Receives the run's start, its initial evaluation and every finished round."""

    def on_start(self, start: RunStart) -> None:
        """The nodes have described themselves and the clock is known."""

    def on_initial(self, metrics: Mapping[str, float]) -> None:
        """The initial global adapter's evaluation (before round 1; not on a resumed run)."""

    def on_round(self, snapshot: RoundSnapshot) -> None:
        """Called once per finished round, after aggregation and evaluation."""
