"""Per-client state as numpy columns, and the cheap way back to ``Assignment`` objects.

Schedulers that must decide for 10,000 clients in milliseconds cannot loop over Python
objects per client per decision: they keep one row per node id ever seen, one float column
per quantity, and work on whole columns. Rows never move, so a row index found once stays
valid; new clients are appended in one go.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np

from .base import Assignment, ClientReport

# ClientReport.status values, as small integers for whole-column comparisons.
OK, LATE, REJECTED, FAILED, OOM = range(5)
STATUS_CODES = {"ok": OK, "late": LATE, "rejected": REJECTED, "failed": FAILED, "oom": OOM}


class ClientTable:
    """Rows keyed by node id, float64 columns with a default value each."""

    def __init__(self, column_defaults: Mapping[str, float]) -> None:
        self.column_defaults = dict(column_defaults)
        self.row_of: dict[int, int] = {}
        self.node_ids: list[int] = []
        self.columns: dict[str, np.ndarray] = {
            name: np.empty(0, dtype=np.float64) for name in self.column_defaults
        }

    def __len__(self) -> int:
        return len(self.node_ids)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def rows(self, node_ids: Sequence[int], init_new: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
        """Row index of every node id, adding rows for ids never seen.

        ``init_new(new_rows, positions)`` fills the new rows (``positions`` index into
        ``node_ids``), e.g. with tier priors; it runs once per call, not once per client.
        """
        row_of = self.row_of
        rows = [row_of.get(n, -1) for n in node_ids]
        if -1 in rows:
            positions = self._add_missing(node_ids, rows)
            if init_new is not None:
                init_new(np.asarray([rows[p] for p in positions], dtype=np.intp), positions)
        return np.asarray(rows, dtype=np.intp)

    def _add_missing(self, node_ids: Sequence[int], rows: list[int]) -> np.ndarray:
        positions = []
        for position, row in enumerate(rows):
            if row != -1:
                continue
            node = int(node_ids[position])
            if node not in self.row_of:  # a node listed twice gets one row
                self.row_of[node] = len(self.node_ids)
                self.node_ids.append(node)
            rows[position] = self.row_of[node]
            positions.append(position)
        grown = len(self.node_ids) - len(next(iter(self.columns.values()), ()))
        if grown > 0:
            for name, default in self.column_defaults.items():
                self.columns[name] = np.concatenate([self.columns[name], np.full(grown, default)])
        return np.asarray(positions, dtype=np.intp)

    def state_dict(self) -> dict[str, Any]:
        return {
            "node_ids": list(self.node_ids),
            "columns": {name: column.tolist() for name, column in self.columns.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.node_ids = [int(n) for n in state["node_ids"]]
        self.row_of = {n: row for row, n in enumerate(self.node_ids)}
        n = len(self.node_ids)
        for name, default in self.column_defaults.items():
            values = state["columns"].get(name)
            self.columns[name] = np.asarray(values, dtype=np.float64) if values is not None else np.full(n, default)


def assignments_by_node(
    node_ids: Sequence[int],
    ranks: Sequence[int],
    bits: Sequence[int],
    steps: Sequence[int],
    budgets: Sequence[float | None],
) -> dict[int, Assignment]:
    """``{node_id: Assignment}``; identical decisions share one (frozen) Assignment.

    Building 10,000 frozen dataclasses costs ~15 ms in CPython, more than the whole decision;
    most clients of a round share a handful of (rank, bits, steps, budget) tuples.
    """
    shared: dict[tuple, Assignment] = {}
    out: dict[int, Assignment] = {}
    for node, decision in zip(node_ids, zip(ranks, bits, steps, budgets)):
        assignment = shared.get(decision)
        if assignment is None:
            assignment = shared[decision] = Assignment(*decision)
        out[node] = assignment
    return out


@dataclass(frozen=True)
class ReportColumns:
    """A round's reports as columns (losses that were None are NaN; unknown statuses FAILED)."""

    node_ids: list[int]
    tiers: list[str | None]
    status: np.ndarray
    rank: np.ndarray
    bits: np.ndarray
    steps: np.ndarray
    num_examples: np.ndarray
    compute_s: np.ndarray
    transfer_s: np.ndarray
    round_s: np.ndarray
    loss_before: np.ndarray
    loss_after: np.ndarray

    def __len__(self) -> int:
        return len(self.node_ids)

    @property
    def timed(self) -> np.ndarray:
        """Reports whose times were measured: the client replied (on time or not)."""
        return (self.status == OK) | (self.status == LATE) | (self.status == REJECTED)


_REPORT_FIELDS = attrgetter(
    "node_id", "tier", "status", "rank", "bits", "steps", "num_examples",
    "compute_s", "transfer_s", "round_s", "loss_before", "loss_after",
)


def report_columns(reports: Sequence[ClientReport]) -> ReportColumns:
    """One pass over the report objects, then numpy columns."""
    if not reports:
        empty_f, empty_i = np.empty(0), np.empty(0, dtype=np.int64)
        return ReportColumns([], [], empty_i, empty_i, empty_i, empty_i, empty_i,
                             empty_f, empty_f, empty_f, empty_f, empty_f)
    (nodes, tiers, statuses, ranks, bits, steps, examples,
     compute, transfer, round_s, before, after) = zip(*map(_REPORT_FIELDS, reports))
    codes = STATUS_CODES
    return ReportColumns(
        node_ids=[int(n) for n in nodes],
        tiers=list(tiers),
        status=np.fromiter((codes.get(s, FAILED) for s in statuses), dtype=np.int64, count=len(statuses)),
        rank=np.asarray(ranks, dtype=np.int64),
        bits=np.asarray(bits, dtype=np.int64),
        steps=np.asarray(steps, dtype=np.int64),
        num_examples=np.asarray(examples, dtype=np.int64),
        compute_s=_finite_or_zero(compute),
        transfer_s=_finite_or_zero(transfer),
        round_s=_finite_or_zero(round_s),
        loss_before=np.asarray(before, dtype=np.float64),
        loss_after=np.asarray(after, dtype=np.float64),
    )


def _finite_or_zero(values: Sequence[float | None]) -> np.ndarray:
    """A time that is missing, negative or not finite carries no information: 0."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array) & (array > 0), array, 0.0)
