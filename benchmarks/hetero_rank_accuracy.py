"""Issue 3 benchmark: aggregation rules across mixed LoRA ranks, on BBC News with SmolLM2.

Protocol (defaults; every size is a flag): 10 clients, Dirichlet alpha=0.1 by label, ranks
{2,4,8,16} mixed (cycled over partitions), r_max=16, 5 clients per round, 5 rounds of 6
local steps, sequence length 64, bf16 backbone, the same seeds for every arm. Arms: the
three rules (zero-pad, rank-wise, svd) and homogeneous rank 8 (rank-wise at equal ranks is
plain FedAvg). Reports final and best accuracy on the server's held-out set, and the worst
client's accuracy on its own test split, as mean +- std over seeds.

    .venv/bin/python benchmarks/hetero_rank_accuracy.py [--seeds 0 1 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matrix import Matrix, column, dump_cells, markdown_table, mean_std, write_report

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "tmp" / "hetero_rank_accuracy")
    args = parser.parse_args()

    base = {
        "num-server-rounds": args.rounds,
        "clients-per-round": args.per_round,
        "local-steps": args.steps,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.1,
        "lora-rank": 16,
        "lora-alpha": 32,
        "server-test-size": 300,
        "backbone-bits": 16,
        "scheduler": "table",
        "update-codec": "fp32",
        "broadcast-codec": "fp32",
    }
    matrix = Matrix("hetero-rank", args.out, num_supernodes=args.clients)
    for rule in ("zero-pad", "rank-wise", "svd"):
        matrix.add(f"mixed-{rule}", {**base, "aggregation": rule, "client-ranks": "cycle:2,4,8,16"}, args.seeds)
    matrix.add("homogeneous-r8", {**base, "aggregation": "rank-wise", "client-ranks": "8"}, args.seeds)
    matrix.run()
    dump_cells(args.out / "cells.json", matrix)

    rows = []
    for label, cells in matrix.by_label().items():
        rows.append(
            [
                label,
                mean_std(column(cells, lambda s: s["final_score"])),
                mean_std(column(cells, lambda s: s["best_score"])),
                mean_std(column(cells, lambda s: (s.get("fairness") or {}).get("worst"))),
                mean_std(column(cells, lambda s: s["bytes_up_per_round"] / 1e6)),
            ]
        )
    table = markdown_table(["arm", "final accuracy", "best accuracy", "worst client accuracy", "MB up / round"], rows)
    protocol = (
        f"SmolLM2-135M (bf16) + LoRA r_max=16 on q,k,v,o, BBC News, {args.clients} clients, Dirichlet alpha=0.1, "
        f"{args.per_round} clients/round, {args.rounds} rounds x {args.steps} local steps, batch 8 x 64 tokens, "
        f"seeds {args.seeds}; mixed arms cycle ranks 2,4,8,16 over partitions. Accuracy on the server's 300 "
        "held-out articles; mean ± std over seeds.\n\nCommand: `.venv/bin/python benchmarks/hetero_rank_accuracy.py`"
    )
    write_report(RESULTS / "hetero_rank_accuracy.md", "Aggregation across mixed LoRA ranks", protocol, table)


if __name__ == "__main__":
    main()
