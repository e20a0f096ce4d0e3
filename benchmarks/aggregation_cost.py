"""Aggregation cost of each heterogeneous-rank rule, side by side, for 10, 100 and 1,000 clients.

Client adapters have SmolLM2-135M's shapes (30 layers, hidden 576; LoRA on q/o: 576x576 and
k/v: 192x576, out x in) at ranks drawn from {2, 4, 8, 16, 32, 64}, r_max = 64, plus a dense
(5, 576) task head. A small pool of random adapters (a few per rank) is generated once and
cycled through as the client stream (generation is timed separately), so 1,000 clients never
sit in memory together and only the aggregator is timed. Every client count streams the same
seeded sequence of (rank, weight); every rule sees exactly that sequence.

Reported per rule and client count: seconds in ``add`` (the stream), in ``result`` (the
finishing step: divisions, or one SVD per module for "svd"), their total and the cost per
client; then the 1000/10 ratios (a linear cost gives ~100 in ``add``) and the peak memory
the aggregator allocated (tracemalloc, in a separate untimed pass), which must not grow with
the number of clients.

    .venv/bin/python benchmarks/aggregation_cost.py            # full run, writes results/aggregation_cost.md
    .venv/bin/python benchmarks/aggregation_cost.py --quick    # 2 layers, 4/16/64 clients, results/tmp/
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread unless the caller says otherwise (set before numpy loads OpenBLAS): on a
# shared machine OpenBLAS's busy-waiting threads collapse when other processes hold the
# cores (the SVDs ran 15x slower at a load of 6 on 2 cores), and one thread compares the
# rules on equal footing. Export OPENBLAS_NUM_THREADS / OMP_NUM_THREADS to change it.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402  (after the thread settings above)

from flq.adapter import AdapterState, nbytes  # noqa: E402
from flq.strategy.aggregation import AGGREGATION_RULES, make_aggregator  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RANK_CHOICES = (2, 4, 8, 16, 32, 64)
R_MAX = 64
HIDDEN = 576
KV_FEATURES = 192  # 3 key/value heads of 64
NUM_LABELS = 5
SMOLLM2_LAYERS = 30
POOL_COPIES_PER_RANK = 2
EXAMPLES_PER_CLIENT = (20, 500)  # weights: example counts drawn uniformly from this range


@dataclass(frozen=True)
class Timing:
    rule: str
    clients: int
    add_s: float
    result_s: float

    @property
    def total_s(self) -> float:
        return self.add_s + self.result_s


def lora_module_shapes(layers: int) -> dict[str, tuple[int, int]]:
    """SmolLM2-135M attention projections, keyed as peft names them: prefix -> (out, in)."""
    shapes = {
        "q_proj": (HIDDEN, HIDDEN),
        "k_proj": (KV_FEATURES, HIDDEN),
        "v_proj": (KV_FEATURES, HIDDEN),
        "o_proj": (HIDDEN, HIDDEN),
    }
    return {
        f"base_model.model.model.layers.{layer}.self_attn.{name}": shape
        for layer in range(layers)
        for name, shape in shapes.items()
    }


def random_adapter(rng: np.random.Generator, modules: dict[str, tuple[int, int]], rank: int) -> AdapterState:
    state: AdapterState = {}
    for prefix, (out_features, in_features) in modules.items():
        state[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, in_features), np.float32) * 0.02
        state[f"{prefix}.lora_B.weight"] = rng.standard_normal((out_features, rank), np.float32) * 0.02
    state["base_model.model.score.weight"] = rng.standard_normal((NUM_LABELS, HIDDEN), np.float32) * 0.02
    return state


def client_pool(modules: dict[str, tuple[int, int]], seed: int) -> tuple[dict[int, list[AdapterState]], float]:
    """A few random adapters per rank, and the seconds it took to generate one on average."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    pool = {rank: [random_adapter(rng, modules, rank) for _ in range(POOL_COPIES_PER_RANK)] for rank in RANK_CHOICES}
    seconds_per_adapter = (time.perf_counter() - start) / (len(RANK_CHOICES) * POOL_COPIES_PER_RANK)
    return pool, seconds_per_adapter


def client_stream(
    pool: dict[int, list[AdapterState]], num_clients: int, seed: int
) -> Iterator[tuple[AdapterState, int]]:
    """(adapter, example count) for each client; the same seed gives the same sequence."""
    rng = np.random.default_rng(seed)
    ranks = rng.choice(RANK_CHOICES, size=num_clients)
    weights = rng.integers(*EXAMPLES_PER_CLIENT, size=num_clients)
    for index, (rank, weight) in enumerate(zip(ranks, weights)):
        copies = pool[int(rank)]
        yield copies[index % len(copies)], int(weight)


def time_rule(
    rule: str, previous_global: AdapterState, stream: Iterator[tuple[AdapterState, int]]
) -> tuple[float, float]:
    """Seconds spent in ``add`` over the whole stream, and in ``result``."""
    aggregator = make_aggregator(rule, previous_global, R_MAX)
    add_s = 0.0
    for state, weight in stream:
        start = time.perf_counter()
        aggregator.add(state, weight)
        add_s += time.perf_counter() - start
    start = time.perf_counter()
    aggregator.result()
    return add_s, time.perf_counter() - start


def warm_up(seed: int) -> None:
    """Run every rule once on a one-layer model so one-time costs (BLAS/LAPACK start-up) stay out."""
    modules = lora_module_shapes(1)
    pool, _ = client_pool(modules, seed)
    previous_global = random_adapter(np.random.default_rng(seed), modules, R_MAX)
    for rule in AGGREGATION_RULES:
        time_rule(rule, previous_global, client_stream(pool, 4, seed))


def peak_memory_mb(rule: str, previous_global: AdapterState, stream: Iterator[tuple[AdapterState, int]]) -> float:
    """Peak bytes allocated while aggregating the stream (its inputs already exist), in MB."""
    tracemalloc.start()
    try:
        aggregator = make_aggregator(rule, previous_global, R_MAX)
        for state, weight in stream:
            aggregator.add(state, weight)
        aggregator.result()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def markdown_report(timings: Sequence[Timing], memory: dict[tuple[str, int], float], context: dict[str, str]) -> str:
    counts = sorted({t.clients for t in timings})
    by_key = {(t.rule, t.clients): t for t in timings}
    lines = ["# Aggregation cost per rule", ""]
    lines += [f"- {name}: {value}" for name, value in context.items()]
    lines += [
        "",
        "| rule | clients | add (s) | result (s) | total (s) | add per client (ms) | total per client (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rule in AGGREGATION_RULES:
        for count in counts:
            t = by_key[(rule, count)]
            lines.append(
                f"| {rule} | {count} | {t.add_s:.2f} | {t.result_s:.2f} | {t.total_s:.2f} | "
                f"{1e3 * t.add_s / count:.1f} | {1e3 * t.total_s / count:.1f} |"
            )
    first, last = counts[0], counts[-1]
    steps = list(zip(counts, counts[1:]))
    lines += [
        "",
        f"Growth from {first} to {last} clients (x{last / first:g} clients). A cost that is "
        "linear in clients has a constant marginal cost per extra client; a fixed cost per round "
        "(allocating the sums, the SVDs) pulls the plain ratio below the client ratio:",
        "",
        f"| rule | add {last}/{first} | total {last}/{first} | "
        + " | ".join(f"marginal add {a}->{b} (ms/client)" for a, b in steps)
        + " |",
        "|---|---:|---:|" + "---:|" * len(steps),
    ]
    for rule in AGGREGATION_RULES:
        low, high = by_key[(rule, first)], by_key[(rule, last)]
        marginals = [1e3 * (by_key[(rule, b)].add_s - by_key[(rule, a)].add_s) / (b - a) for a, b in steps]
        lines.append(
            f"| {rule} | {high.add_s / low.add_s:.1f} | {high.total_s / low.total_s:.1f} | "
            + " | ".join(f"{m:.1f}" for m in marginals)
            + " |"
        )
    memory_counts = sorted({count for _, count in memory})
    lines += [
        "",
        "Peak memory allocated by the aggregator (tracemalloc, untimed pass; inputs excluded):",
        "",
        "| rule | " + " | ".join(f"{c} clients (MB)" for c in memory_counts) + " |",
        "|---|" + "---:|" * len(memory_counts),
    ]
    for rule in AGGREGATION_RULES:
        lines.append(f"| {rule} | " + " | ".join(f"{memory[(rule, c)]:.0f}" for c in memory_counts) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated client counts")
    parser.add_argument("--layers", type=int, default=SMOLLM2_LAYERS, help="transformer layers (30 in SmolLM2-135M)")
    parser.add_argument("--quick", action="store_true", help="2 layers and 4,16,64 clients, a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.layers = "4,16,64", 2
    args.client_counts = [int(c) for c in args.clients.split(",")]
    if args.out is None:
        args.out = RESULTS_DIR / ("tmp/aggregation_cost_quick.md" if args.quick else "aggregation_cost.md")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modules = lora_module_shapes(args.layers)
    pool, generation_s = client_pool(modules, args.seed)
    previous_global = random_adapter(np.random.default_rng(args.seed + 1), modules, R_MAX)
    print(
        f"{len(modules)} LoRA modules; one rank-{R_MAX} adapter is {nbytes(previous_global) / 1e6:.1f} MB; "
        f"generating one client adapter takes {generation_s * 1e3:.0f} ms on average (not timed below)"
    )

    load_before = os.getloadavg()[0]
    warm_up(args.seed)
    timings = []
    for count in args.client_counts:
        for rule in AGGREGATION_RULES:
            add_s, result_s = time_rule(rule, previous_global, client_stream(pool, count, args.seed + count))
            timings.append(Timing(rule, count, add_s, result_s))
            print(f"{rule:>9} {count:>5} clients: add {add_s:7.2f} s, result {result_s:6.2f} s", flush=True)
    memory = {
        (rule, count): peak_memory_mb(rule, previous_global, client_stream(pool, count, args.seed + count))
        for count in args.client_counts[:2]
        for rule in AGGREGATION_RULES
    }

    context = {
        "model": f"SmolLM2-135M shapes, {args.layers} layers, LoRA on q,k,v,o ({len(modules)} modules) "
        f"+ dense head ({NUM_LABELS}, {HIDDEN}); r_max={R_MAX}",
        "client ranks": f"uniform over {list(RANK_CHOICES)}; weights (example counts) uniform in "
        f"[{EXAMPLES_PER_CLIENT[0]}, {EXAMPLES_PER_CLIENT[1]}); seed {args.seed}",
        "clients": f"a pool of {POOL_COPIES_PER_RANK} adapters per rank, cycled; generating one takes "
        f"{generation_s * 1e3:.0f} ms (not included below)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}; one run per cell",
        # Other processes on a shared machine inflate the timings: say how busy it was.
        "load average (1 min)": f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
    }
    report = markdown_report(timings, memory, context)
    print("\n" + report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
