"""Per-round records: one JSON object per line in ``rounds.jsonl`` of a run directory.

The ServerApp appends one ``RoundRecord`` per finished round; summaries, plots and the
``flq report`` command rebuild everything from these files alone. Plain data, no Flower.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
RUN_INFO_FILE = "run.json"


@dataclass
class ClientRoundRecord:
    """One sampled client in one round, whatever became of its reply."""

    node_id: int
    status: str  # a flq.status.ClientStatus
    partition_id: int | None = None
    tier: str | None = None
    rank: int = 0
    bits: int = 0
    steps: int = 0  # local steps it trained
    planned_steps: int = 0  # local steps it was asked for (a budget may stop it sooner)
    budget_s: float | None = None  # the time budget it was sent (budget policy), on the run's clock
    num_examples: int = 0
    batch_size: int = 0  # examples per step the scheduler gave it (0: its own batch)
    loss_before: float | None = None
    loss_after: float | None = None
    compute_s: float = 0.0  # on the run's clock (virtual: measured x tier factor)
    measured_compute_s: float = 0.0  # what this machine measured
    comm_s: float = 0.0  # the round outside training: transfer, handshakes and start-up (docs/clock.md)
    round_s: float = 0.0  # compute_s + comm_s
    bytes_up: int = 0  # bytes of the update the client sent
    bytes_down: int = 0  # bytes of the adapter the client received
    peak_mem_mb: float = 0.0
    threads: int = 0  # torch threads the client trained with (0: not reported)
    on_time: bool = True
    reason: str = ""  # why it was rejected / failed / late
    update_norm: float | None = None  # L2 norm of its decoded update (None: no update)
    cosine_to_aggregate: float | None = None  # of its update to the round's aggregated update (sketched)


@dataclass
class ClientEvalRecord:
    """The global adapter evaluated on one client's own test split (fairness)."""

    node_id: int
    partition_id: int | None
    tier: str | None
    score: float
    loss: float
    num_examples: int
    balanced_accuracy: float | None = None  # classification only
    macro_f1: float | None = None


@dataclass
class RoundRecord:
    server_round: int
    clock: str  # "virtual" (simulation) or "real" (deployment)
    clock_s: float  # cumulative run time on that clock at round end
    round_s: float  # this round's length on that clock
    wall_s: float  # cumulative real wall time since the run started
    deadline_s: float | None
    policy: str  # wait | drop | budget
    score_name: str  # accuracy | perplexity
    score: float | None  # global score on the server's held-out set
    eval_loss: float | None
    train_loss: float | None  # example-weighted mean of accepted clients' loss_after
    bytes_up: int  # sum over clients of bytes sent to the server
    bytes_down: int  # sum over clients of bytes received
    num_sampled: int
    num_accepted: int
    clients: list[ClientRoundRecord] = field(default_factory=list)
    client_eval: list[ClientEvalRecord] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {node_id, reason}
    scheduler: str | None = None  # the scheduler's name
    scheduler_ms: float | None = None  # its assign + observe time this round (real milliseconds)
    # Classification only, on the server's held-out set (flq.metrics.classification):
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    per_class_score: list[float | None] | None = None  # accuracy (recall) by class id
    top_prediction: int | None = None  # the class the global model predicts most often
    top_prediction_share: float | None = None  # ... and for which share of the held-out set
    # Instruction only (the score is then the mean ROUGE-L of generated answers; flq.task.generate):
    exact_match: float | None = None
    response_perplexity: float | None = None  # on answer tokens only

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        data = dict(data)
        data["clients"] = [ClientRoundRecord(**c) for c in data.get("clients", [])]
        data["client_eval"] = [ClientEvalRecord(**c) for c in data.get("client_eval", [])]
        return cls(**data)


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def append_round(run_dir: Path, record: RoundRecord) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ROUNDS_FILE, "a", encoding="utf-8") as fh:
        fh.write(record.to_json() + "\n")


def read_rounds(run_dir: Path) -> list[RoundRecord]:
    """All round records of a run, in order; a clear error if the file is missing or bad."""
    path = Path(run_dir) / ROUNDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {ROUNDS_FILE} in {run_dir}: is it an FLQ run directory?")
    return list(_iter_records(path))


def _iter_records(path: Path) -> Iterator[RoundRecord]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield RoundRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a round record ({exc})") from exc
