"""Run a matrix of FLQ simulations (configs x seeds) through real ``flwr run`` and tabulate.

Each cell is one federated run on a SuperLink owned by this process; a run that fails is
reported as failed with the tail of its log, never silently dropped. Summaries are read
from the files each ServerApp wrote, so tables can be rebuilt without re-running.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, sys.path[0] is benchmarks/, and `harness` (unlike `flq`) is not installed: add the project root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.simulation import LocalSimulation, SimulationRun  # noqa: E402

# The scheduler benchmarks' baseline arms: a scheduler and what a round does with late clients.
SCHEDULER_ARMS = {
    "fixed-wait": {"scheduler": "fixed", "policy": "wait"},
    "fixed-drop": {"scheduler": "fixed", "policy": "drop"},
    "fixed-budget": {"scheduler": "fixed", "policy": "budget"},
    "tier-drop": {"scheduler": "tier", "policy": "drop"},
    "lite": {"scheduler": "lite", "policy": "budget"},
    "solver": {"scheduler": "solver", "policy": "drop"},
    "bandit": {"scheduler": "bandit", "policy": "budget"},
}


def partition_overrides(spec: str) -> dict:
    """``dirichlet:0.1`` / ``pathological:2`` / ``iid`` as run-config overrides."""
    name, _, value = spec.partition(":")
    if name == "dirichlet":
        return {"partitioner": "dirichlet", "dirichlet-alpha": float(value)}
    if name == "pathological":
        return {"partitioner": "pathological", "classes-per-client": int(value)}
    if name == "iid":
        return {"partitioner": "iid"}
    raise ValueError(f"unknown partition {spec!r}: dirichlet:ALPHA | pathological:K | iid")


@dataclass
class Cell:
    label: str
    overrides: dict
    seed: int
    run: SimulationRun | None = None
    error: str = ""
    wall_s: float = 0.0


@dataclass
class Matrix:
    name: str
    out_dir: Path
    num_supernodes: int
    cells: list[Cell] = field(default_factory=list)

    def add(self, label: str, overrides: dict, seeds: Sequence[int]) -> None:
        for seed in seeds:
            self.cells.append(Cell(label, {**overrides, "seed": seed}, seed))

    def run(self, reuse: bool = True) -> None:
        """Run every cell not already finished (reuse=True resumes an interrupted matrix)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with LocalSimulation(self.out_dir / "work") as sim:
            for i, cell in enumerate(self.cells, 1):
                name = _run_name(cell)
                run_dir = self.out_dir / "runs" / name
                if reuse and (run_dir / "summary.json").is_file():
                    differences = config_differences(run_dir, cell.overrides)
                    if differences:
                        raise ValueError(
                            f"{run_dir} was run with another config ({'; '.join(differences)}): "
                            "choose another output folder, or delete that run to redo it"
                        )
                    cell.run = SimulationRun(run_dir, "")
                    print(f"[{self.name} {i}/{len(self.cells)}] {name}: reused", flush=True)
                    continue
                if run_dir.exists():  # a half-finished run from an interrupted matrix
                    import shutil

                    shutil.rmtree(run_dir)
                start = time.perf_counter()
                cell.run = sim.run(cell.overrides, self.num_supernodes, name, out_dir=self.out_dir / "runs")
                cell.wall_s = time.perf_counter() - start
                try:
                    summary = cell.run.summary()
                    print(
                        f"[{self.name} {i}/{len(self.cells)}] {name}: final={summary['final_score']} "
                        f"({cell.wall_s:.0f}s)",
                        flush=True,
                    )
                except RuntimeError as exc:
                    cell.error = str(exc)[-1500:]
                    print(
                        f"[{self.name} {i}/{len(self.cells)}] {name}: FAILED\n{cell.error}", file=sys.stderr, flush=True
                    )

    def by_label(self) -> dict[str, list[Cell]]:
        groups: dict[str, list[Cell]] = {}
        for cell in self.cells:
            groups.setdefault(cell.label, []).append(cell)
        return groups


def client_label_histograms(run_dir: Path) -> list[list[int]] | None:
    """Every client's label counts, rebuilt from the run's own configuration (run.json): the
    partitions are a pure function of it. None when the run left no run.json."""
    from flq.config import RunConfig
    from flq.task.partition import partition_label_histograms
    from flq.task.specs import data_spec

    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    cfg = RunConfig.from_flower(run["config"])
    return partition_label_histograms(data_spec(cfg), int(run["nodes"][0]["num_partitions"]))


def config_differences(run_dir: Path, overrides: dict) -> list[str]:
    """The overrides a finished run was not run with ('key: ran X, asked Y').

    A knob the run's config does not list (added to FLQ after the run) counts as its current
    default, so runs survive new knobs whose default keeps the old behaviour.
    """
    from flq.config import RunConfig

    ran = {**RunConfig().to_dict(), **json.loads((run_dir / "run.json").read_text()).get("config", {})}
    return [
        f"{key}: ran {ran.get(key)!r}, asked {wanted!r}" for key, wanted in overrides.items() if ran.get(key) != wanted
    ]


def _run_name(cell: Cell) -> str:
    return f"{cell.label}-seed{cell.seed}".replace("/", "_").replace(" ", "_")


def mean_std(values: Sequence[float | None]) -> str:
    """``mean +- std`` over the values that exist ('n/a' if none; '(k/n)' if some are missing)."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    text = f"{statistics.fmean(present):.4g}"  # 4 significant figures
    if len(present) > 1:
        text += f" ± {statistics.stdev(present):.2g}"
    if len(present) < len(values):
        text += f" ({len(present)}/{len(values)})"
    return text


def summaries(cells: Sequence[Cell]) -> list[dict | None]:
    """Each cell's summary, rebuilt from its rounds.jsonl (None for a run that failed)."""
    from flq.metrics.report import ReportError, summarize_run

    out = []
    for cell in cells:
        try:
            out.append(summarize_run(cell.run.run_dir) if cell.run else None)
        except ReportError:
            out.append(None)
    return out


def column(cells: Sequence[Cell], get: Callable[[dict], float | None]) -> list[float | None]:
    return [None if s is None else get(s) for s in summaries(cells)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: Path, title: str, protocol: str, table: str, notes: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{protocol.strip()}\n\n{table}\n"
    if notes:
        text += f"\n{notes.strip()}\n"
    path.write_text(text)
    print(text)


def dump_cells(path: Path, matrix: Matrix) -> None:
    rows = [
        {
            "label": c.label,
            "seed": c.seed,
            "overrides": c.overrides,
            "run_dir": str(c.run.run_dir) if c.run else None,
            "error": c.error,
        }
        for c in matrix.cells
    ]
    path.write_text(json.dumps(rows, indent=1))
