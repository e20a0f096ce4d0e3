"""Headline generation with SmolLM2: ROUGE-L of the fine-tuned adapter against the base model's.

Protocol (every size is a flag): ``task="instruction"`` on the embedded ``bbc-headlines`` (prompt:
an article; answer: its title), SmolLM2-135M-Instruct at the shipped ``backbone-bits``, clients
split by news category (Dirichlet), the shipped defaults otherwise. The base model's score is the
run's initial evaluation (a fresh LoRA adapter has B = 0, so it is exactly the base model); every
round's score is the mean ROUGE-L of greedy answers to the same held-out prompts. Per seed: the
base ROUGE-L, the best and final ROUGE-L within the rounds, their ratio to the base, the first
round at 1.5x the base, and the exact match; mean +- std over seeds. The figure plots ROUGE-L per
round, one line per seed, with the base and 1.5x the base.

    .venv/bin/python benchmarks/headline_generation.py --seeds 0 1 2 --rounds 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matrix import Matrix, dump_cells, markdown_table, mean_std, write_report

RESULTS = Path(__file__).parent / "results"
TARGET_RATIO = 1.5  # the target: ROUGE-L at least 1.5x the base model's


def run_figures(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line.strip()]
    base = summary["initial"]["score"]
    scores = [r["score"] for r in rounds]
    hit = next((r["server_round"] for r in rounds if r["score"] >= TARGET_RATIO * base), None)
    return {
        "base": base,
        "scores": scores,
        "final": scores[-1],
        "best": max(scores),
        "final_ratio": scores[-1] / base if base else None,
        "best_ratio": max(scores) / base if base else None,
        "round_at_target": hit,
        "exact_match": rounds[-1]["exact_match"],
        "base_eval_loss": summary["initial"]["eval_loss"],
        "final_response_perplexity": rounds[-1]["response_perplexity"],
        "wall_s": rounds[-1]["wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha over the 5 categories")
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--test-size", type=int, default=40, help="server-test-size")
    parser.add_argument("--samples", type=int, default=24, help="generation-samples")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "tmp" / "headline_generation")
    parser.add_argument("--report", type=Path, default=RESULTS / "headline_generation.md")
    args = parser.parse_args()

    overrides = {
        "task": "instruction",
        "data": "bbc-headlines",
        "partitioner": "dirichlet",
        "dirichlet-alpha": args.alpha,
        "num-server-rounds": args.rounds,
        "clients-per-round": args.per_round,
        "local-steps": args.local_steps,
        "batch-size": args.batch_size,
        "max-seq-length": args.max_seq_length,
        "server-test-size": args.test_size,
        "generation-samples": args.samples,
        "max-new-tokens": args.max_new_tokens,
        "eval-batch-size": 8,
        "target-score": 0.3,
    }
    matrix = Matrix("headlines", args.out, num_supernodes=args.clients)
    matrix.add("smollm2/bbc-headlines", overrides, args.seeds)
    matrix.run()
    dump_cells(args.out / "cells.json", matrix)

    figures = {c.seed: run_figures(c.run.run_dir) for c in matrix.cells if c.run and not c.error}
    rows = [
        [
            seed, f"{f['base']:.3f}", f"{f['best']:.3f}", f"{f['final']:.3f}", f"{f['best_ratio']:.2f}x",
            f"{f['final_ratio']:.2f}x", f["round_at_target"] or "never", f"{f['exact_match']:.3f}",
            f"{f['final_response_perplexity']:.1f}", f"{f['wall_s']:.0f}",
        ]
        for seed, f in sorted(figures.items())
    ]  # fmt: skip
    if figures:

        def col(key):
            return mean_std([f[key] for f in figures.values()])

        rows.append(["mean +- std", col("base"), col("best"), col("final"), col("best_ratio"), col("final_ratio"),
                     f"{sum(f['round_at_target'] is not None for f in figures.values())}/{len(figures)} seeds",
                     col("exact_match"), col("final_response_perplexity"), col("wall_s")])  # fmt: skip
    header = [
        "seed", "base ROUGE-L", f"best in {args.rounds} rounds", "final", "best / base", "final / base",
        f"first round at {TARGET_RATIO}x base", "final exact match", "final response perplexity", "wall s",
    ]  # fmt: skip
    figure = args.report.with_suffix(".png")
    plot(figures, figure)
    command = (
        f"    .venv/bin/python benchmarks/headline_generation.py --seeds {' '.join(map(str, args.seeds))} "
        f"--rounds {args.rounds} --clients {args.clients} --per-round {args.per_round} --alpha {args.alpha:g} "
        f"--local-steps {args.local_steps} --batch-size {args.batch_size} --max-seq-length {args.max_seq_length} "
        f"--test-size {args.test_size} --samples {args.samples} --max-new-tokens {args.max_new_tokens}"
    )
    protocol = (
        __doc__.split("\n\n", 1)[1].split("    .venv")[0]
        + f"\nCommand:\n\n{command}\n\nSample answers by round: `generations.jsonl` in each run directory."
        f"\n\n![ROUGE-L per round]({figure.name})"
    )
    write_report(args.report, "Headline generation (instruction tuning) with SmolLM2", protocol,
                 markdown_table(header, rows))  # fmt: skip


def plot(figures: dict[int, dict], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for seed, f in sorted(figures.items()):
        line = ax.plot(range(0, len(f["scores"]) + 1), [f["base"], *f["scores"]], marker="o", label=f"seed {seed}")
        ax.axhline(TARGET_RATIO * f["base"], color=line[0].get_color(), linestyle="--", linewidth=1)
    ax.set(xlabel="round (0: base model)", ylabel="held-out ROUGE-L", title=f"dashed: {TARGET_RATIO}x base, per seed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
