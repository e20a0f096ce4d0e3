"""Per-client update diagnostics: the norm of each client's update and its cosine to the round's
aggregate, the first things to look at when a federation does not learn (a client whose update
points away from everyone else's is pulling the global model its own way).

The cosine needs the aggregate, which exists only once every reply is in, and keeping every
client's update until then would make the server's memory grow with the number of clients. So
each update is kept as a CountSketch of ``SKETCH_SIZE`` numbers (every element hashed, with a
random sign, into one bucket): inner products of sketches estimate inner products of the
updates without bias, with an error around ``|a| |b| / sqrt(SKETCH_SIZE)``, so a cosine is
good to about +-0.02. Norms are exact. Pure numpy; updates are padded to r_max first, so
clients at different ranks compare component by component.
"""

from __future__ import annotations

import numpy as np

from ..adapter import AdapterState, pad_to_rank, subtract
from ..metrics.records import ClientRoundRecord

SKETCH_SIZE = 4096


class UpdateSketcher:
    """Sketches adapter updates of one run's shapes (the global adapter's, at r_max)."""

    def __init__(self, template: AdapterState, rank_max: int, size: int = SKETCH_SIZE, seed: int = 0) -> None:
        self.rank_max, self.size = rank_max, size
        rng = np.random.default_rng(seed)
        self._hashes = {k: rng.integers(0, size, v.size) for k, v in template.items()}
        self._signs = {k: rng.choice(np.array([-1.0, 1.0]), v.size) for k, v in template.items()}

    def sketch(self, update: AdapterState) -> np.ndarray:
        out = np.zeros(self.size)
        for key, value in pad_to_rank(update, self.rank_max).items():
            out += np.bincount(self._hashes[key], self._signs[key] * value.ravel(), minlength=self.size)
        return out


def update_norm(update: AdapterState) -> float:
    return float(np.sqrt(sum(float(np.vdot(v, v)) for v in update.values())))


def cosine(sketch_a: np.ndarray, norm_a: float, sketch_b: np.ndarray, norm_b: float) -> float | None:
    """The cosine of two updates from their sketches and exact norms (None if either is zero)."""
    if norm_a == 0 or norm_b == 0:
        return None
    return float(np.clip(np.dot(sketch_a, sketch_b) / (norm_a * norm_b), -1.0, 1.0))


class UpdateDiagnostics:
    """One round at a time: note each decoded update, then set every record's cosine to the aggregate."""

    def __init__(self, rank_max: int, seed: int = 0) -> None:
        self.rank_max, self.seed = rank_max, seed
        self._sketcher: UpdateSketcher | None = None  # built from the first round's global adapter
        self._sketches: dict[int, np.ndarray] = {}

    def start_round(self, global_state: AdapterState) -> None:
        if self._sketcher is None:
            self._sketcher = UpdateSketcher(global_state, self.rank_max, seed=self.seed)
        self._sketches = {}

    def note(self, record: ClientRoundRecord, update: AdapterState) -> None:
        record.update_norm = update_norm(update)
        self._sketches[record.node_id] = self._sketcher.sketch(update)

    def finish(self, records: list[ClientRoundRecord], previous: AdapterState, aggregated: AdapterState) -> None:
        aggregate = subtract(aggregated, previous)
        aggregate_sketch, aggregate_norm = self._sketcher.sketch(aggregate), update_norm(aggregate)
        for record in records:
            if record.node_id in self._sketches:
                sketch = self._sketches[record.node_id]
                record.cosine_to_aggregate = cosine(sketch, record.update_norm, aggregate_sketch, aggregate_norm)
