"""Severe non-IID benchmark: data sets x partitions x server optimizers / drift control, side by side.

Protocol (every size is a flag): 6 simulated clients, 4 per round, the shipped defaults of
pyproject.toml plus only what a data set needs (task, model, data); each arm changes the
aggregation or local training alone:

* ``defaults``: the shipped defaults (today FedAvg on the rank-wise rule);
* ``fedavgm``: server momentum 0.9 at server-lr 0.1 (an effective rate of 1: FedAvg's pace);
* ``fedadam`` / ``fedyogi``: server-lr 0.01, beta1 0.9, beta2 0.99, tau 1e-3 (Reddi et al.);
* ``fedprox``: proximal-mu 0.01;
* ``scaffold``: SCAFFOLD control variates (twice the bytes per round each way);
* ``balanced``: class-weighting=balanced;
* ``qffl-1`` / ``qffl-3``: fairness-q 1 and 3 (q-FFL's reweighting by each client's loss
  before training: the lever aimed at the worst client);
* ``fedrs-0.5`` / ``fedrs-0.1``: restricted-softmax 0.5 and 0.1 (FedRS: the logits of classes a
  client lacks scaled down in its local loss, so it does not teach the shared head that they are wrong).

The arm values are the papers' usual starting points, not tuned here. Per run, from its
``rounds.jsonl``: the majority-class share of the server's held-out set (``maj``), the first
round at or above ``maj + 0.25`` (the issue's target) and whether every later round stayed at or
above ``maj + 0.15``, the final accuracy, macro-F1 and share of the most predicted class, and the
worst / p10 client on their own test splits and by label mix (every client's expected accuracy:
the per-class accuracy on the held-out set weighted by its label counts), and in how many runs
the worst client ended at least halfway between majority and the final global score (the issue's
fairness target); mean +- std over seeds. A figure plots accuracy per round, one panel per data set
and partition.

    .venv/bin/python benchmarks/noniid_benchmark.py --datasets digits --partitions dirichlet:0.1 \\
        --arms defaults fedavgm fedadam fedprox --seeds 0 1 --rounds 10
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections import Counter
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
from matrix import (
    Matrix,
    client_label_histograms,
    dump_cells,
    markdown_table,
    mean_std,
    partition_overrides,
    write_report,
)

from flq.metrics.classification import is_collapsed
from flq.metrics.records import read_rounds
from flq.metrics.summary import fairness, label_mix_fairness_at_clock

RESULTS = Path(__file__).parent / "results"

DATASETS = {
    "bbc-news": {},  # the shipped default task, model and data
    # The same data on another text model (an encoder): the defaults must not fit one backbone.
    "bbc-news-minilm": {"model": "minilm-l6"},
    "digits": {
        "task": "image-classification",
        "model": "mobilevit-tiny-random",
        "data": "digits",
        "backbone-bits": 32,  # a random backbone: nothing to quantize
    },
}
ARMS = {
    "defaults": {},
    "fedavgm": {"server-optimizer": "fedavgm", "server-lr": 0.1, "server-beta1": 0.9},
    "fedadam": {"server-optimizer": "fedadam", "server-lr": 0.01},
    "fedyogi": {"server-optimizer": "fedyogi", "server-lr": 0.01},
    "fedprox": {"proximal-mu": 0.01},
    "scaffold": {"scaffold": True},
    "balanced": {"class-weighting": "balanced"},
    "qffl-1": {"fairness-q": 1.0},
    "qffl-3": {"fairness-q": 3.0},
    "fedrs-0.5": {"restricted-softmax": 0.5},
    "fedrs-0.1": {"restricted-softmax": 0.1},
}


def majority_share(overrides: dict) -> float:
    """The largest class's share of the server's held-out set, as the run configured it."""
    from flq.config import RunConfig
    from flq.task.partition import server_test_data
    from flq.task.specs import data_spec

    keys = {
        k.replace("-", "_"): v for k, v in overrides.items() if k.replace("-", "_") in RunConfig.__dataclass_fields__
    }
    labels = server_test_data(data_spec(RunConfig(**keys))).labels
    return max(Counter(labels).values()) / len(labels)


def skipped(label: str, patterns: list[str]) -> bool:
    """Whether a cell ("data/partition/arm") matches one of --skip's shell patterns."""
    return any(fnmatchcase(label, pattern) for pattern in patterns)


def run_figures(run_dir: Path, majority: float) -> dict:
    rounds = read_rounds(run_dir)
    scores = [r.score for r in rounds]
    target, floor = majority + 0.25, majority + 0.15
    reached = next((i for i, s in enumerate(scores) if s is not None and s >= target), None)
    held = reached is not None and all(s is not None and s >= floor for s in scores[reached:])
    last = rounds[-1]
    own = fairness([last], True)  # the final round's client evaluations
    histograms = client_label_histograms(run_dir)
    mix = label_mix_fairness_at_clock(rounds, math.inf, histograms) if histograms else None
    # The fairness target: the worst client at least halfway between majority and the global score.
    halfway = None if scores[-1] is None else (majority + scores[-1]) / 2
    return {
        "scores": scores,
        "rounds_to_target": None if reached is None else rounds[reached].server_round,
        "clock_to_target": None if reached is None else rounds[reached].clock_s,
        "held": held,
        "final": scores[-1],
        "macro_f1": last.macro_f1,
        "top_share": last.top_prediction_share,
        "worst": own["worst"] if own else None,
        "p10": own["p10"] if own else None,
        "mix_worst": mix["worst"] if mix else None,
        "mix_p10": mix["p10"] if mix else None,
        "fair": own is not None and halfway is not None and own["worst"] >= halfway,
        "mix_fair": mix is not None and halfway is not None and mix["worst"] >= halfway,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--partitions", nargs="+", default=["dirichlet:0.3", "dirichlet:0.1", "pathological:2"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--server-lr", nargs="+", default=[], metavar="ARM=LR",
        help="another server-lr for a server-optimizer arm (its label gets @LR), e.g. fedavgm=1.0",
    )  # fmt: skip
    parser.add_argument(
        "--skip", nargs="+", default=[], metavar="PATTERN",
        help="leave out the cells whose data/partition/arm label matches, e.g. 'bbc-news/pathological:2/*'",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "tmp" / "noniid_benchmark")
    parser.add_argument("--report", type=Path, default=RESULTS / "noniid_benchmark.md")
    args = parser.parse_args()

    server_lrs = {arm: float(lr) for arm, _, lr in (pair.partition("=") for pair in args.server_lr)}
    if unknown := [arm for arm in server_lrs if "server-optimizer" not in ARMS.get(arm, {})]:
        parser.error(f"--server-lr applies to server-optimizer arms only, not {unknown}")
    matrix = Matrix("noniid", args.out, num_supernodes=args.clients)
    majority: dict[str, float] = {}
    for dataset in args.datasets:
        for partition in args.partitions:
            base = {
                **DATASETS[dataset],
                **partition_overrides(partition),
                "num-server-rounds": args.rounds,
                "clients-per-round": args.per_round,
                "client-eval-every": 1,
            }
            group = f"{dataset}/{partition}"
            for arm in args.arms:
                overrides, label = {**base, **ARMS[arm]}, arm
                if arm in server_lrs:
                    overrides["server-lr"], label = server_lrs[arm], f"{arm}@{server_lrs[arm]:g}"
                if skipped(f"{group}/{label}", args.skip):
                    continue
                matrix.add(f"{group}/{label}", overrides, args.seeds)
                if group not in majority:  # loads the data: only for groups that run
                    majority[group] = majority_share(base)
    matrix.run()
    dump_cells(args.out / "cells.json", matrix)

    rows, curves = [], {}
    for label, cells in matrix.by_label().items():
        group = label.rsplit("/", 1)[0]
        maj = majority[group]
        figures = [run_figures(c.run.run_dir, maj) if c.run and not c.error else None for c in cells]
        done = [f for f in figures if f is not None]
        curves[label] = [f["scores"] for f in done]

        def col(key, figs=figures):
            return mean_std([None if f is None else f[key] for f in figs])

        held, fair, mix_fair = (sum(bool(f and f[key]) for f in figures) for key in ("held", "fair", "mix_fair"))
        collapsed = sum(bool(f and is_collapsed(f["top_share"])) for f in figures)
        rows.append([
            label, f"{maj:.3f}", col("rounds_to_target"), col("clock_to_target"), f"{held}/{len(cells)}",
            col("final"), col("macro_f1"), col("worst"), col("p10"), col("mix_worst"), col("mix_p10"),
            f"{fair}/{len(cells)} / {mix_fair}/{len(cells)}", f"{collapsed}/{len(cells)}",
        ])  # fmt: skip
    header = [
        "data / partition / arm", "maj", "rounds to maj+0.25", "clock s to it", "held >= maj+0.15",
        "final acc.", "final macro-F1", "worst client", "p10 client", "worst client, label mix",
        "p10 client, label mix", "worst >= halfway maj..final (own / label mix)", "ended collapsed (>80% one class)",
    ]  # fmt: skip
    figure = args.report.with_suffix(".png")
    plot_curves(curves, majority, figure)
    command = "    .venv/bin/python benchmarks/noniid_benchmark.py " + " ".join(
        [f"--datasets {' '.join(args.datasets)}", f"--partitions {' '.join(args.partitions)}",
         f"--arms {' '.join(args.arms)}", f"--seeds {' '.join(map(str, args.seeds))}", f"--rounds {args.rounds}",
         f"--clients {args.clients}", f"--per-round {args.per_round}"]
        + ([f"--server-lr {' '.join(args.server_lr)}"] if args.server_lr else [])
        + ([f"--skip {' '.join(map(shlex.quote, args.skip))}"] if args.skip else [])
        + ([f"--report {args.report}"] if args.report != parser.get_default("report") else [])
    )  # fmt: skip
    protocol = (
        __doc__.split("\n\n", 1)[1].split("    .venv")[0]
        + f"\nSeeds {args.seeds}; {args.rounds} rounds. Command:\n\n{command}\n\n![accuracy per round]({figure.name})"
    )
    write_report(args.report, "Severe non-IID: server optimizers and drift control", protocol,
                 markdown_table(header, rows))  # fmt: skip


def plot_curves(curves: dict[str, list[list[float]]], majority: dict[str, float], path: Path) -> None:
    """Accuracy per round, one panel per data set and partition: each arm's mean bold, its seeds faint
    (the round-to-round swings under skew are what a mean hides)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    groups = sorted({label.rsplit("/", 1)[0] for label in curves})
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig = Figure(figsize=(5 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, group in zip(axes, groups):
        arms = [(label, seeds) for label, seeds in curves.items() if label.rsplit("/", 1)[0] == group]
        for i, (label, seeds) in enumerate(arms):
            for scores in seeds:
                ax.plot(range(1, len(scores) + 1), scores, color=f"C{i}", alpha=0.25, linewidth=0.8)
            length = min(len(scores) for scores in seeds)
            mean = np.mean([scores[:length] for scores in seeds], axis=0)
            ax.plot(range(1, length + 1), mean, color=f"C{i}", marker="o", markersize=3, label=label.rsplit("/", 1)[1])
        ax.axhline(majority[group] + 0.25, color="grey", linestyle="--", linewidth=1, label="majority + 0.25")
        ax.axhline(majority[group], color="grey", linestyle=":", linewidth=1, label="majority")
        ax.set(title=group, xlabel="round", ylabel="held-out accuracy (seeds faint, mean bold)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
