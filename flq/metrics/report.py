"""``flq report RUN_DIR [RUN_DIR ...]``: summary table and figures rebuilt from round records.

With one run, figures go to ``RUN_DIR/figures/``; with several, to ``./flq-report/<run>/`` plus
a comparison plot, and the table has one column per run. ``--out`` chooses the folder. The
run's own files are only read; the rebuilt ``summary.json`` goes beside the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plots import COMPARISON_FIGURE, plot_comparison, write_run_figures
from .records import RUN_INFO_FILE, RoundRecord, read_rounds
from .summary import higher_is_better_for, summarize, write_summary

DEFAULT_MULTI_OUT = Path("flq-report")
FIGURES_DIR = "figures"


class ReportError(Exception):
    """A run directory cannot be reported on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directory (holds rounds.jsonl)")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="target score for time-to-target (default: target-score from each run.json)",
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="deadline (s) to judge runs that had none, e.g. a wait baseline"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"figure folder (default: RUN_DIR/{FIGURES_DIR} for one run, ./{DEFAULT_MULTI_OUT} for several)",
    )


@dataclass
class RunReport:
    label: str
    run_dir: Path
    records: list[RoundRecord]
    summary: dict[str, Any]
    figures: list[Path]


def run(args: argparse.Namespace) -> int:
    try:
        reports = build_reports(args.run_dirs, args.target, args.deadline, args.out)
    except ReportError as exc:
        print(f"flq report: error: {exc}", file=sys.stderr)
        return 2
    print(format_table([(r.label, r.summary) for r in reports]))
    print()
    for r in reports:
        for path in r.figures:
            print(f"wrote: {path}")
    if len(reports) > 1:
        out = args.out or DEFAULT_MULTI_OUT
        targets = {r.summary["target"] for r in reports}
        target = args.target if args.target is not None else (targets.pop() if len(targets) == 1 else None)
        path = plot_comparison([(r.label, r.records) for r in reports], out / COMPARISON_FIGURE, target)
        print(f"wrote: {path}")
    return 0


def build_reports(
    run_dirs: Sequence[Path], target: float | None, deadline_s: float | None, out: Path | None
) -> list[RunReport]:
    labels = run_labels(run_dirs)
    reports = []
    for label, run_dir in zip(labels, run_dirs, strict=True):
        records = load_records(run_dir)
        run_target = target if target is not None else configured_target(run_dir)
        summary = summarize_records(run_dir, records, run_target, deadline_s)
        fig_dir = figure_dir(run_dir, label, out, several=len(run_dirs) > 1)
        figures = write_run_figures(records, fig_dir, run_target)
        figures.append(write_summary(fig_dir, summary))
        reports.append(RunReport(label, run_dir, records, summary, figures))
    return reports


def summarize_run(run_dir: Path, target: float | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """A run's summary rebuilt from its rounds.jsonl (target from run.json unless given)."""
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    return summarize_records(run_dir, records, target if target is not None else configured_target(run_dir), deadline_s)


def summarize_records(
    run_dir: Path, records: Sequence[RoundRecord], target: float | None, deadline_s: float | None
) -> dict[str, Any]:
    try:
        higher_is_better = higher_is_better_for(records[-1].score_name)
    except ValueError as exc:
        raise ReportError(f"{run_dir}: {exc}") from None
    return summarize(records, target, higher_is_better, deadline_s)


def load_records(run_dir: Path) -> list[RoundRecord]:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory")
    try:
        records = read_rounds(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from None
    if not records:
        raise ReportError(f"{run_dir} has no rounds recorded yet")
    return records


def configured_target(run_dir: Path) -> float | None:
    """``target-score`` from the run's run.json, if it has one."""
    path = run_dir / RUN_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None
    value = info.get("config", {}).get("target-score")
    return None if value is None else float(value)


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's folder name, or its full path where two runs share a name."""
    names = [d.resolve().name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs, strict=True)]


def figure_dir(run_dir: Path, label: str, out: Path | None, several: bool) -> Path:
    if not several:
        return out if out is not None else run_dir / FIGURES_DIR
    return (out or DEFAULT_MULTI_OUT) / label.replace("/", "_")


# -- the table ----------------------------------------------------------------------------
def _num(fmt: str) -> Callable[[Any], str]:
    return lambda v: "n/a" if v is None else format(v, fmt)


def _mb(v: Any) -> str:
    return "n/a" if v is None else f"{v / 1e6:.2f}"


def _percent(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _text(v: Any) -> str:
    return "n/a" if v is None else str(v)


def _work(entry: dict[str, float] | None) -> str:
    """A tier's training examples per sampled client-round that reached the model, and its accepted share."""
    if entry is None:
        return "n/a"
    return f"{entry['examples_per_client_round']:.1f} ({entry['accepted_share']:.0%} in)"


# (row label, summary key, formatter); fairness and per-tier rows are added by format_table.
ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("clock", "clock", _text),
    ("policy", "policy", _text),
    ("deadline (s)", "deadline_s", _num(".1f")),
    ("rounds", "rounds", _text),
    ("score", "score_name", _text),
    ("target", "target", _num("g")),
    ("final score", "final_score", _num(".4f")),
    ("final balanced accuracy", "final_balanced_accuracy", _num(".4f")),
    ("final macro-F1", "final_macro_f1", _num(".4f")),
    ("best score", "best_score", _num(".4f")),
    ("rounds to target", "rounds_to_target", _text),
    ("clock s to target", "clock_s_to_target", _num(".1f")),
    ("clock s (run)", "clock_s", _num(".1f")),
    ("rounds within deadline", "within_deadline_share", _percent),
    ("MB up / round", "bytes_up_per_round", _mb),
    ("MB down / round", "bytes_down_per_round", _mb),
    ("MB total", "bytes_total", _mb),
    ("rejected replies", "rejected_replies", _text),
]
# (row label, summary key of a per-tier dict, formatter): one row per tier seen in any run.
PER_TIER_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("examples / client-round", "work_per_tier", _work),
    ("peak MB", "peak_mem_mb_per_tier", _num(".0f")),
    ("dropped", "dropped_per_tier", _text),
]
FAIRNESS_ROWS = [("client worst", "worst"), ("client p10", "p10"), ("client mean", "mean"), ("Jain's index", "jain")]


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Metric rows, each [label, value per run]."""
    rows = [[label, *(fmt(s.get(key)) for s in summaries)] for label, key, fmt in ROWS]
    for label, key in FAIRNESS_ROWS:
        rows.append([label, *(_num(".4f")((s.get("fairness") or {}).get(key)) for s in summaries)])
    tiers = sorted({t for s in summaries for _, key, _ in PER_TIER_ROWS for t in s.get(key) or {}})
    for label, key, fmt in PER_TIER_ROWS:
        for tier in tiers:
            rows.append([f"{label} [{tier}]", *(fmt((s.get(key) or {}).get(tier)) for s in summaries)])
    return rows


def format_table(columns: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One row per metric, one column per run, left-aligned labels and right-aligned values."""
    header = ["metric", *(label for label, _ in columns)]
    rows = [header, *table_rows([s for _, s in columns])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
