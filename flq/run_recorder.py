"""Writes what a run did: one JSON line per round, a checkpoint per round, progress lines.

Files in the run directory (``<output-dir>/<run-name>/``):

* ``run.json``: the resolved run config, the clock model, versions (written at start);
* ``rounds.jsonl``: one ``RoundRecord`` per finished round;
* ``checkpoint/``: the global adapter (``adapter.npz``), the server optimizer's moments
  (``optimizer.npz``), SCAFFOLD's control variate (``scaffold.npz``, empty when off) and
  ``state.json`` (round, clocks, scheduler state), replaced atomically every round, so a
  restarted run resumes;
* ``summary.json``: the run's summary (written at the end, and rebuildable by ``flq report``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .adapter import AdapterState
from .logs import log
from .metrics.classification import from_metric_values, is_collapsed
from .metrics.generation import from_generation_metric_values
from .metrics.records import RUN_INFO_FILE, RoundRecord, append_round
from .sim.clock import real_clock_description
from .status import ClientStatus
from .strategy.recording import RoundRecorder, RoundSnapshot, RunStart

CHECKPOINT_DIR = "checkpoint"


class RunRecorder(RoundRecorder):
    def __init__(
        self, run_dir: Path, score_name: str, num_rounds: int, run_info: dict[str, Any], start_wall_s: float = 0.0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_info = run_info
        self.clock = "virtual"
        self.score_name = score_name
        self.num_rounds = num_rounds
        self.wall_start = time.perf_counter() - start_wall_s
        self.records: list[RoundRecord] = []
        self.initial: dict[str, float] = {}

    def on_start(self, start: RunStart) -> None:
        self.clock = start.clock
        model = start.clock_model.describe() if self.clock == "virtual" else real_clock_description()
        self.write_run_info({**self.run_info, "clock": model, "nodes": [vars(p) for p in start.nodes]})
        if self.clock == "virtual":
            log.info("%s", start.clock_model.describe_text())

    def on_initial(self, metrics) -> None:
        self.initial = {"score": float(metrics["score"]), "eval_loss": float(metrics["loss"])}
        log.info(
            "[round 0] initial %s=%.4f eval-loss=%.4f",
            self.score_name,
            self.initial["score"],
            self.initial["eval_loss"],
        )

    def on_round(self, snapshot: RoundSnapshot) -> None:
        result, metrics = snapshot.result, snapshot.metrics
        record = RoundRecord(
            server_round=snapshot.server_round,
            clock=snapshot.clock,
            clock_s=snapshot.clock_s,
            round_s=result.round_s,
            wall_s=time.perf_counter() - self.wall_start,
            deadline_s=snapshot.deadline_s,
            policy=snapshot.policy,
            score_name=self.score_name,
            score=None if metrics is None else float(metrics["score"]),
            eval_loss=None if metrics is None else float(metrics["loss"]),
            train_loss=result.train_loss,
            bytes_up=sum(c.bytes_up for c in result.clients),
            bytes_down=sum(c.bytes_down for c in result.clients),
            num_sampled=len(result.clients),
            num_accepted=result.num_accepted,
            clients=result.clients,
            client_eval=list(snapshot.client_eval),
            rejected=[
                {"node_id": c.node_id, "reason": c.reason} for c in result.clients if c.status == ClientStatus.REJECTED
            ],
            scheduler=snapshot.scheduler_name,
            scheduler_ms=snapshot.scheduler_ms,
            **from_metric_values(metrics),
            **from_generation_metric_values(metrics),
        )
        append_round(self.run_dir, record)
        self.records.append(record)
        save_checkpoint(
            self.run_dir,
            snapshot.global_state,
            {
                "server_round": snapshot.server_round,
                "clock_s": snapshot.clock_s,
                "wall_s": record.wall_s,
                "scheduler": snapshot.scheduler_state,
                "rng": snapshot.rng_state,
            },
            snapshot.optimizer_state,
            snapshot.control_state,
        )
        log.info(progress_line(record, self.num_rounds))
        if is_collapsed(record.top_prediction_share):
            log.warning(
                "[round %d] the global model predicts class %d for %.0f%% of the held-out set: it has collapsed "
                "onto one class (see docs/aggregation.md, server optimizers, for what helps on skewed data)",
                record.server_round,
                record.top_prediction,
                100 * record.top_prediction_share,
            )

    def write_run_info(self, info: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.run_dir / RUN_INFO_FILE, info)


def progress_line(r: RoundRecord, num_rounds: int) -> str:
    score = "n/a" if r.score is None else f"{r.score:.4f}"
    if r.balanced_accuracy is not None:
        score += f" balanced={r.balanced_accuracy:.4f} macro-f1={r.macro_f1:.4f}"
    if r.exact_match is not None:
        score += f" exact-match={r.exact_match:.4f} response-perplexity={r.response_perplexity:.2f}"
    loss = "n/a" if r.train_loss is None else f"{r.train_loss:.3f}"
    ranks = sorted({c.rank for c in r.clients})
    return (
        f"[round {r.server_round}/{num_rounds}] {r.score_name}={score} train-loss={loss} "
        f"clients={r.num_accepted}/{r.num_sampled} ranks={ranks} "
        f"up={r.bytes_up / 1e6:.2f}MB down={r.bytes_down / 1e6:.2f}MB "
        f"clock({r.clock})={r.clock_s:.1f}s wall={r.wall_s:.0f}s"
    )


# -- checkpoints --------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    state: AdapterState,
    meta: dict[str, Any],
    optimizer_state: dict[str, np.ndarray] | None = None,
    control_state: dict[str, np.ndarray] | None = None,
) -> None:
    """Write adapter, server optimizer state, SCAFFOLD control variate and metadata to temp files,
    then rename each (state.json last): a crash never leaves half a file."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    # np.savez stores plain arrays; keys with dots and slashes are fine as archive member names.
    arrays = {"adapter": state, "optimizer": optimizer_state or {}, "scaffold": control_state or {}}
    for name, values in arrays.items():
        with open(ckpt / f"{name}.tmp.npz", "wb") as fh:
            np.savez(fh, **values)
    tmp_meta = ckpt / "state.tmp.json"
    tmp_meta.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    for name in arrays:
        os.replace(ckpt / f"{name}.tmp.npz", ckpt / f"{name}.npz")
    os.replace(tmp_meta, ckpt / "state.json")


def load_checkpoint(run_dir: Path) -> tuple[AdapterState, dict[str, Any]] | None:
    """The last checkpoint of a run, or None if it has none."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    if not (ckpt / "adapter.npz").is_file() or not (ckpt / "state.json").is_file():
        return None
    with np.load(ckpt / "adapter.npz", allow_pickle=False) as archive:
        state = {k: archive[k].astype(np.float32) for k in archive.files}
    meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return state, meta


def load_optimizer_state(run_dir: Path) -> dict[str, np.ndarray]:
    """The server optimizer's state in the last checkpoint ({} if none: fedavg, or an older run)."""
    return _load_checkpoint_arrays(run_dir, "optimizer")


def load_control_state(run_dir: Path) -> dict[str, np.ndarray]:
    """SCAFFOLD's server control variate in the last checkpoint ({} if none: off, or an older run)."""
    return _load_checkpoint_arrays(run_dir, "scaffold")


def _load_checkpoint_arrays(run_dir: Path, name: str) -> dict[str, np.ndarray]:
    """The arrays ``save_checkpoint`` wrote as ``<name>.npz`` ({} if the checkpoint has no such file)."""
    path = Path(run_dir) / CHECKPOINT_DIR / f"{name}.npz"
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)
