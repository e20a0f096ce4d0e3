"""Per-client state as numpy columns, reports read as columns, and the cheap way back to
``Assignment`` objects.

Schedulers that must decide for 10,000 clients in milliseconds cannot loop over Python
objects per client per decision: they keep one row per node id ever seen, one float column
per quantity, and work on whole columns. Rows never move, so a row index found once stays
valid; new clients are appended in one go.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from operator import attrgetter
from typing import Any

import numpy as np

from ..status import ClientStatus
from .base import Assignment, ClientReport

# ClientReport.status values, as small integers for whole-column comparisons.
OK, LATE, REJECTED, FAILED, OOM = range(5)


class ClientTable:
    """Rows keyed by node id, float64 columns with a default value each."""

    def __init__(self, column_defaults: Mapping[str, float]) -> None:
        self.column_defaults = dict(column_defaults)
        self.row_of: dict[int, int] = {}
        self.node_ids: list[int] = []
        self.columns: dict[str, np.ndarray] = {name: np.empty(0, dtype=np.float64) for name in self.column_defaults}
        # The last list of node ids looked up and its rows: a federation asks about the same
        # clients in the same order round after round, and comparing two lists is much cheaper
        # than one dict lookup per client (benchmarks/results/scheduler_decision_time.md).
        # Rows never move, so a cached answer stays right.
        self._last_lookup: tuple[list[int], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.node_ids)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def rows(
        self, node_ids: Sequence[int], init_new: Callable[[np.ndarray, np.ndarray], None] | None = None
    ) -> np.ndarray:
        """Row index of every node id, adding rows for ids never seen.

        ``init_new(new_rows, positions)`` fills the new rows (``positions`` index into
        ``node_ids``), e.g. with tier priors; it runs once per call, not once per client.
        """
        last = self._last_lookup
        if last is not None and type(node_ids) is list and node_ids == last[0]:
            return last[1]
        rows = list(map(self.row_of.get, node_ids))
        if None in rows:
            positions = self._add_missing(node_ids, rows)
            if init_new is not None:
                init_new(np.asarray([rows[p] for p in positions], dtype=np.intp), positions)
        found = np.fromiter(rows, dtype=np.intp, count=len(rows))
        if type(node_ids) is list:
            found.setflags(write=False)  # shared with later calls
            self._last_lookup = (list(node_ids), found)
        return found

    def _add_missing(self, node_ids: Sequence[int], rows: list[int | None]) -> np.ndarray:
        positions = []
        for position, row in enumerate(rows):
            if row is not None:
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
        self._last_lookup = None
        n = len(self.node_ids)
        for name, default in self.column_defaults.items():
            values = state["columns"].get(name)
            self.columns[name] = np.asarray(values, dtype=np.float64) if values is not None else np.full(n, default)


def assignments_by_node(
    node_ids: Sequence[int],
    ranks: np.ndarray,
    bits: np.ndarray,
    steps: np.ndarray,
    budgets: np.ndarray | None,
    batch_sizes: np.ndarray | None = None,
) -> dict[int, Assignment]:
    """``{node_id: Assignment}``; clients with identical decisions share one (frozen) Assignment.

    ``batch_sizes``: examples per step, 0 where the client keeps its own (None: all do).
    Building one frozen dataclass per client costs more than the whole decision at 10,000 clients,
    while a round's clients share a few hundred (rank, bits, steps, budget, batch) tuples at
    most: the tuples are numbered with numpy and one Assignment is built per distinct tuple.
    """
    n = len(node_ids)
    if n == 0:
        return {}
    ranks, bits, steps = (np.asarray(a, dtype=np.int64) for a in (ranks, bits, steps))
    batches = np.zeros(n, dtype=np.int64) if batch_sizes is None else np.asarray(batch_sizes, dtype=np.int64)
    if budgets is None:
        budget_values, budget_codes = [None], np.zeros(n, dtype=np.int64)
    else:
        unique_budgets, budget_codes = np.unique(np.asarray(budgets, dtype=np.float64), return_inverse=True)
        budget_values = unique_budgets.tolist()
    key = budget_codes
    for column in (batches, steps, bits, ranks):
        key = key * (int(column.max()) + 1) + column  # mixed radix: one int64 per distinct tuple
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    shared = [
        Assignment(
            int(ranks[i]),
            int(bits[i]),
            int(steps[i]),
            budget_values[budget_codes[i]],
            batch_size=int(batches[i]) or None,
        )
        for i in first.tolist()
    ]
    return dict(zip(node_ids, map(shared.__getitem__, inverse.tolist()), strict=True))


class _StatusCodes(dict):
    def __missing__(self, status: str) -> int:
        return FAILED  # an unknown status carries no measurement, like a failure


STATUS_CODES = _StatusCodes(
    {
        ClientStatus.OK: OK,
        ClientStatus.LATE: LATE,
        ClientStatus.REJECTED: REJECTED,
        ClientStatus.FAILED: FAILED,
        ClientStatus.OOM: OOM,
    }
)


def _valid_times(values: np.ndarray) -> np.ndarray:
    """Missing, negative or non-finite times as 0."""
    return np.where(np.isfinite(values) & (values > 0), values, 0.0)


class ReportColumns:
    """A round's reports as numpy columns, each read from the objects only when first used.

    Losses that were None are NaN; times that are missing, negative or not finite are 0;
    an unknown status counts as FAILED.
    """

    def __init__(self, reports: Sequence[ClientReport]) -> None:
        self.reports = reports
        self.node_ids: list[int] = list(map(attrgetter("node_id"), reports))
        self.status = np.fromiter(
            map(STATUS_CODES.__getitem__, map(attrgetter("status"), reports)), dtype=np.int64, count=len(reports)
        )

    def __len__(self) -> int:
        return len(self.node_ids)

    def _read(self, name: str, dtype: type) -> np.ndarray:
        return np.fromiter(map(attrgetter(name), self.reports), dtype=dtype, count=len(self.reports))

    def _time(self, name: str) -> np.ndarray:
        return _valid_times(self._read(name, np.float64))

    def _loss(self, name: str) -> np.ndarray:
        return np.asarray(list(map(attrgetter(name), self.reports)), dtype=np.float64)  # None -> NaN

    @property
    def tiers(self) -> list[str | None]:
        return list(map(attrgetter("tier"), self.reports))

    @cached_property
    def rank(self) -> np.ndarray:
        return self._read("rank", np.int64)

    @cached_property
    def bits(self) -> np.ndarray:
        return self._read("bits", np.int64)

    @cached_property
    def steps(self) -> np.ndarray:
        return self._read("steps", np.int64)

    @cached_property
    def num_examples(self) -> np.ndarray:
        return self._read("num_examples", np.int64)

    @cached_property
    def compute_s(self) -> np.ndarray:
        return self._time("compute_s")

    @cached_property
    def round_s(self) -> np.ndarray:
        return self._time("round_s")

    @cached_property
    def loss_before(self) -> np.ndarray:
        return self._loss("loss_before")

    @cached_property
    def loss_after(self) -> np.ndarray:
        return self._loss("loss_after")

    @cached_property
    def non_compute_s(self) -> np.ndarray:
        """Everything but compute (transfers, handshakes): round minus compute when the round
        time is known, else the transfer time (read only from those reports: failed clients)."""
        out = self.round_s - self.compute_s
        untimed = np.flatnonzero(self.round_s <= 0)
        if untimed.size:
            out[untimed] = _valid_times(
                np.fromiter(
                    (self.reports[i].transfer_s for i in untimed.tolist()), dtype=np.float64, count=untimed.size
                )
            )
        return out

    @cached_property
    def timed(self) -> np.ndarray:
        """Reports whose times were measured: the client replied (on time or not)."""
        return (self.status == OK) | (self.status == LATE) | (self.status == REJECTED)
