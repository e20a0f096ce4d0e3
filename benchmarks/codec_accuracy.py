"""Issue 6 benchmark: bytes per round and accuracy for each update codec, on BBC News with SmolLM2.

Protocol (defaults; sizes are flags): 6 clients, Dirichlet alpha=0.3, 4 clients per round,
5 rounds x 6 local steps, LoRA r=8 on q,k,v,o, bf16 backbone, the same seeds for every arm.
Arms set both directions (client updates and the broadcast global adapter) to one scheme:
fp32 (reference), fp16, int8 (+ error feedback), int4 without and with error feedback.
Bytes are what the ServerApp counted on the wire (the encoded arrays); accuracy is on the
server's 300 held-out articles. Reports the ratio to fp32 and the accuracy difference.

    .venv/bin/python benchmarks/codec_accuracy.py [--seeds 0 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from matrix import Matrix, column, dump_cells, markdown_table, mean_std, write_report

RESULTS = Path(__file__).parent / "results"

ARMS = {
    "fp32": {"update-codec": "fp32", "broadcast-codec": "fp32", "error-feedback": False},
    "fp16": {"update-codec": "fp16", "broadcast-codec": "fp16", "error-feedback": False},
    "int8+ef": {"update-codec": "int8", "broadcast-codec": "int8", "error-feedback": True},
    "int4": {"update-codec": "int4", "broadcast-codec": "int4", "error-feedback": False},
    "int4+ef": {"update-codec": "int4", "broadcast-codec": "int4", "error-feedback": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "tmp" / "codec_accuracy")
    args = parser.parse_args()

    base = {
        "num-server-rounds": args.rounds,
        "local-steps": args.steps,
        "clients-per-round": 4,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.3,
        "lora-rank": 8,
        "backbone-bits": 16,
        "server-test-size": 300,
    }
    matrix = Matrix("codec", args.out, num_supernodes=6)
    for label, arm in ARMS.items():
        matrix.add(label, {**base, **arm}, args.seeds)
    matrix.run()
    dump_cells(args.out / "cells.json", matrix)

    groups = matrix.by_label()

    def per_round_total(s):
        return s["bytes_up_per_round"] + s["bytes_down_per_round"]

    ref_bytes = column(groups["fp32"], per_round_total)
    ref_acc = column(groups["fp32"], lambda s: s["final_score"])
    rows = []
    for label, cells in groups.items():
        up = column(cells, lambda s: s["bytes_up_per_round"])
        down = column(cells, lambda s: s["bytes_down_per_round"])
        total = column(cells, per_round_total)
        acc = column(cells, lambda s: s["final_score"])
        ratio = [r / t if r and t else None for r, t in zip(ref_bytes, total)]
        diff = [100 * (a - r) if a is not None and r is not None else None for a, r in zip(acc, ref_acc)]
        rows.append(
            [
                label,
                f"{statistics.fmean(x for x in up if x) / 1e6:.3f}",
                f"{statistics.fmean(x for x in down if x) / 1e6:.3f}",
                mean_std(ratio),
                mean_std(acc),
                mean_std(diff),
            ]
        )
    table = markdown_table(
        [
            "arm",
            "MB up / round",
            "MB down / round",
            "x fewer bytes than fp32",
            "final accuracy",
            "accuracy vs fp32 (points, same seed)",
        ],
        rows,
    )
    protocol = (
        f"SmolLM2-135M (bf16) + LoRA r=8 on q,k,v,o, BBC News, 6 clients, Dirichlet alpha=0.3, 4 clients/round, "
        f"{args.rounds} rounds x {args.steps} local steps, seeds {args.seeds}. Both directions use the arm's "
        "scheme; bytes are the encoded arrays Flower carried (per-block scales and headers included). "
        "mean ± std over seeds.\n\nCommand: `.venv/bin/python benchmarks/codec_accuracy.py`"
    )
    write_report(RESULTS / "codec_accuracy.md", "Update codecs: bytes and accuracy", protocol, table)


if __name__ == "__main__":
    main()
