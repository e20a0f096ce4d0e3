"""Issue 5 benchmark: the rank schedulers on tiered clients under a deadline, SmolLM2 on BBC News.

Protocol (default size; every size is a flag): 6 clients in thirds over gpu-24g, gpu-32g and
cpu-edge (``--tiers`` for the jetson-nano variant), Dirichlet alpha=0.1 by label, all 6 clients
every round, 6 rounds, at most 4 local steps (lr 0.005) of batch 8 x 64 tokens, LoRA r_max=16 starting
at rank 8, svd aggregation (the best mixed-rank rule in results/hetero_rank_accuracy.md) with
clients weighted by examples per local step (``--aggregation-weight``; arms whose clients all take
the same steps aggregate exactly as FedAvg would), int8 updates with error feedback, a round
deadline on the virtual clock, the same seeds for every arm. Arms:

* ``fixed-wait``: FedAvg, everyone rank 8, the server waits for the slowest client;
* ``fixed-drop``, ``tier-drop``, ``solver``: late updates are discarded (``solver`` is the
  FAH-QLoRA rank-only baseline, ``tier`` the static HetLoRA-style table);
* ``fixed-budget``: everyone rank 8 and every client stops its local steps when its time
  budget (the deadline less its predicted transfer) runs out: the strongest simple baseline;
* ``bandit``: FLQ's scheduler, which chooses rank, steps and budget per client (policy budget);
* ``lite`` (not in the default set): the lighter online scheduler, policy budget.

The deadline (10 s by default) sits between the tiers: a GPU client's round takes about a
second, a ``cpu-edge`` client's 4 steps about 21 s of compute on the clock plus its transfers.

Per arm: time-to-target on the virtual clock and rounds-to-target, share of rounds within
the deadline, bytes per round, worst-client and p10 accuracy on the clients' own test splits,
peak memory per tier, final score, and the scheduler's own decision time in the run.

    .venv/bin/python benchmarks/scheduler_benchmark.py [--seeds 0 1 2] [--deadline 10] [--target 0.6]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from matrix import SCHEDULER_ARMS, Matrix, column, dump_cells, markdown_table, mean_std, summaries, write_report

from flq.metrics.plots import plot_comparison
from flq.metrics.report import load_records
from flq.strategy.aggregation import AGGREGATION_WEIGHTS

RESULTS = Path(__file__).parent / "results"

ARMS = SCHEDULER_ARMS
DEFAULT_ARMS = [arm for arm in ARMS if arm != "lite"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--rounds", type=int, default=6, help="rounds (with --clock-budget: the most rounds)")
    parser.add_argument(
        "--clock-budget",
        type=float,
        default=0.0,
        help="give every arm this many seconds of virtual clock (the round that reaches it is "
        "its last) instead of a round count: compares arms on equal time (0: off)",
    )
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds on the virtual clock")
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument(
        "--lr",
        type=float,
        default=0.005,
        help="local learning rate (higher than the run default: few steps per round here)",
    )
    parser.add_argument("--tiers", default="thirds:gpu-24g,gpu-32g,cpu-edge")
    parser.add_argument(
        "--aggregation-weight",
        default="examples-per-step",
        choices=AGGREGATION_WEIGHTS,
        help="how clients count in the average; arms whose clients all take the same steps "
        "get the same aggregate either way",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "tmp" / "scheduler_benchmark")
    parser.add_argument("--report", type=Path, default=RESULTS / "scheduler_benchmark.md")
    args = parser.parse_args()

    base = {
        "num-server-rounds": args.rounds,
        "clients-per-round": args.clients,
        "local-steps": args.steps,
        "learning-rate": args.lr,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.1,
        "lora-rank": 16,
        "base-rank": 8,
        "backbone-bits": 16,
        "aggregation": "svd",
        "aggregation-weight": args.aggregation_weight,
        "update-codec": "int8",
        "broadcast-codec": "int8",
        "error-feedback": True,
        "server-test-size": 150,
        "tiers": args.tiers,
        "deadline-s": args.deadline,
        "target-score": args.target,
        "clock-budget-s": args.clock_budget,
        "client-ranks": "tier:gpu-24g=16,gpu-32g=16,cpu-edge=4,jetson-nano=2",
    }
    matrix = Matrix("schedulers", args.out, num_supernodes=args.clients)
    for label in args.arms:
        matrix.add(label, {**base, **ARMS[label]}, args.seeds)
    matrix.run()
    dump_cells(args.out / "cells.json", matrix)

    rows = []
    groups = matrix.by_label()
    reference = _mean_time_to_target(groups.get("fixed-wait", []))
    for label, cells in groups.items():
        sums = summaries(cells)
        mine = _mean_time_to_target(cells)
        rows.append(
            [
                label,
                mean_std(column(cells, lambda s: s["clock_s_to_target"])),
                f"{reference / mine:.2f}x" if reference and mine else "n/a",
                mean_std(column(cells, lambda s: s["rounds_to_target"])),
                mean_std(column(cells, lambda s: s["within_deadline_share"])),
                mean_std(column(cells, lambda s: (s["bytes_up_per_round"] + s["bytes_down_per_round"]) / 1e6)),
                mean_std(column(cells, lambda s: (s.get("fairness") or {}).get("worst"))),
                mean_std(column(cells, lambda s: (s.get("fairness") or {}).get("p10"))),
                _peaks(sums),
                mean_std(column(cells, lambda s: s["final_score"])),
                mean_std(column(cells, lambda s: s["clock_s"])),
                mean_std([_decision_ms(c.run.run_dir) if c.run else None for c in cells]),
            ]
        )
    table = markdown_table(
        [
            "arm",
            "time to target (clock s)",
            "vs fixed-wait",
            "rounds to target",
            "rounds within deadline",
            "MB / round",
            "worst client acc.",
            "p10 client acc.",
            "peak MB per tier",
            "final accuracy",
            "clock s at the end",
            "decision ms / round",
        ],
        rows,
    )
    protocol = (
        f"SmolLM2-135M (bf16) + LoRA (r_max 16, start 8, svd aggregation weighted by {args.aggregation_weight}), BBC News, {args.clients} clients ({args.tiers}), "
        f"Dirichlet alpha=0.1, all clients every round, {_length(args)}, <= {args.steps} local steps of 8 x 64 "
        f"tokens at lr {args.lr:g}, int8+EF updates, deadline {args.deadline:g} s on the virtual clock (docs/clock.md), target "
        f"accuracy {args.target:g} on 150 held-out articles, seeds {args.seeds}. `fixed` and `tier` use "
        "client-ranks tier table (gpu 16, cpu-edge 4, jetson 2) where applicable; mean ± std over seeds; "
        "'(k/n)' = only k of n seeds reached the target; 'vs fixed-wait' = fixed-wait's mean time to target "
        "over this arm's (shown only when every seed of both reached it); 'clock s at the end': when the last "
        "round ended (a fixed round count gives arms with short rounds less clock: an arm whose runs end before "
        "another reached the target cannot be compared with it on time to target). Figure: "
        f"`{args.report.with_suffix('.png').name}` (accuracy vs clock, every arm, seed {args.seeds[0]}).\n\n"
        f"Command: `.venv/bin/python benchmarks/scheduler_benchmark.py --seeds {' '.join(map(str, args.seeds))} "
        f"--arms {' '.join(args.arms)} --rounds {args.rounds}{_budget_flag(args)} --aggregation-weight {args.aggregation_weight} --deadline {args.deadline:g} --target {args.target:g} --tiers {args.tiers}`"
    )
    write_report(args.report, "Rank schedulers under a deadline", protocol, table)
    curves = [
        (label, load_records(c.run.run_dir))
        for label, cells in groups.items()
        for c in cells[:1]
        if c.run and not c.error
    ]
    plot_comparison(curves, args.report.with_suffix(".png"), target=args.target)


def _length(args: argparse.Namespace) -> str:
    if args.clock_budget > 0:
        return f"until the clock reaches {args.clock_budget:g} s (the round that reaches it is the last; at most {args.rounds} rounds)"
    return f"{args.rounds} rounds"


def _budget_flag(args: argparse.Namespace) -> str:
    return f" --clock-budget {args.clock_budget:g}" if args.clock_budget > 0 else ""


def _mean_time_to_target(cells: list) -> float | None:
    """Mean clock seconds to the target over the seeds, or None unless every seed reached it."""
    times = column(cells, lambda s: s["clock_s_to_target"])
    if not times or any(t is None for t in times):
        return None
    return statistics.fmean(times)


def _peaks(sums: list) -> str:
    tiers: dict[str, list[float]] = {}
    for s in sums:
        for tier, mb in (s or {}).get("peak_mem_mb_per_tier", {}).items():
            tiers.setdefault(tier, []).append(mb)
    return ", ".join(f"{t} {max(v):.0f}" for t, v in sorted(tiers.items())) or "n/a"


def _decision_ms(run_dir: Path) -> float | None:
    """Mean scheduler decision time per round the ServerApp logged in rounds.jsonl (ms)."""
    values = []
    path = Path(run_dir) / "rounds.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("scheduler_ms") is not None:
            values.append(record["scheduler_ms"])
    return statistics.fmean(values) if values else None


if __name__ == "__main__":
    main()
