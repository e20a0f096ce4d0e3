"""Clock time to the reference arm's final score: compare arms at the same final score.

`scheduler_benchmark.py` gives every arm the same number of rounds, so an arm with short
rounds stops early on the clock, at a lower score. This reads finished runs and asks, per
seed: the reference arm (default ``fixed-wait``) ended at score S after T seconds on the
clock; when did each other arm first reach S (run it with more rounds so it can)?

    .venv/bin/python benchmarks/scheduler_benchmark.py --arms bandit --rounds 14 \\
        --out benchmarks/results/tmp/scheduler_equal_clock --report benchmarks/results/tmp/scheduler_equal_clock.md
    .venv/bin/python benchmarks/score_matched_time.py \\
        --reference benchmarks/results/tmp/scheduler_benchmark/runs/fixed-wait-seed{seed} \\
        --arm bandit=benchmarks/results/tmp/scheduler_equal_clock/runs/bandit-seed{seed} --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from flq.metrics.records import RoundRecord, read_rounds


def first_reaching(records: list[RoundRecord], score: float) -> RoundRecord | None:
    """The first round whose score is at least as good as `score` (lower is better for perplexity)."""
    for record in records:
        if record.score is None:
            continue
        better = record.score <= score if record.score_name == "perplexity" else record.score >= score
        if better:
            return record
    return None


def compare(reference: list[RoundRecord], arm: list[RoundRecord]) -> dict:
    final = reference[-1]
    if final.score is None:
        raise ValueError("the reference run's last round has no score")
    ref_hit = first_reaching(reference, final.score)
    hit = first_reaching(arm, final.score)
    # Same clock, other view: where the reference stood when the arm's last round ended.
    ref_then = [r for r in reference if r.clock_s <= arm[-1].clock_s and r.score is not None]
    return {
        "score": final.score,
        "reference_s": ref_hit.clock_s,
        "reference_round": ref_hit.server_round,
        "arm_s": hit.clock_s if hit else None,
        "arm_round": hit.server_round if hit else None,
        "arm_last_s": arm[-1].clock_s,
        "arm_last_score": arm[-1].score,
        "reference_score_then": ref_then[-1].score if ref_then else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="run directory, with {seed}")
    parser.add_argument("--arm", action="append", required=True, help="LABEL=run directory with {seed}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(
        "| arm | seed | reference final score | reference reached it (clock s, round) | arm reached it "
        "(clock s, round) | reference / arm | arm's last round (clock s, score) | reference's score by then |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.arm:
        label, _, pattern = spec.partition("=")
        ratios = []
        for seed in args.seeds:
            try:
                row = compare(
                    read_rounds(Path(args.reference.format(seed=seed))), read_rounds(Path(pattern.format(seed=seed)))
                )
            except (FileNotFoundError, ValueError) as exc:
                print(f"| {label} | {seed} | {exc} | | | | | |")
                continue
            ratio = row["reference_s"] / row["arm_s"] if row["arm_s"] else None
            if ratio is not None:
                ratios.append(ratio)
            reached = f"{row['arm_s']:.1f}, {row['arm_round']}" if row["arm_s"] is not None else "not reached"
            print(
                f"| {label} | {seed} | {row['score']:.3f} | {row['reference_s']:.1f}, {row['reference_round']} | "
                f"{reached} | {f'{ratio:.2f}x' if ratio else 'n/a'} | {row['arm_last_s']:.1f}, "
                f"{row['arm_last_score']:.3f} | {_fmt(row['reference_score_then'])} |"
            )
        if ratios:
            spread = f" ± {statistics.stdev(ratios):.2f}" if len(ratios) > 1 else ""
            print(
                f"\n{label}: reached the reference's final score {statistics.fmean(ratios):.2f}x{spread} sooner "
                f"on the clock, mean over the {len(ratios)} of {len(args.seeds)} seeds where it reached it"
            )
    return 0


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.3f}"


if __name__ == "__main__":
    sys.exit(main())
