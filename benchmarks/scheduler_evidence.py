"""Issue 20: the scheduler's evidence: arms and bandit ablations, paired over seeds, at equal clock.

Protocol (``--size full``; every part is a flag): MiniLM-L6 (offline, embedded) + LoRA (r_max
16, start 8, svd aggregation weighted per step), BBC News, 32 simulated clients in four equal tier
groups (gpu-24g, gpu-32g, cpu-edge, jetson-nano; ``--tiers``), 10 sampled per round, Dirichlet
alpha 0.1 and pathological (2 classes per client) partitions, 5 seeds, every baseline arm and
every bandit ablation, int8 updates with error feedback, every client evaluated on its own test
split every round (fairness at any clock), 600 held-out articles for the global score. Every arm
runs until its virtual clock reaches the same budget (``--budget-deadlines`` deadlines; the round
that reaches it is its last), so arms compare at equal clock. The full protocol is 120 runs, many
hours on a 2-core machine; ``--size default`` is its headline comparison (fixed-wait,
fixed-budget and bandit on Dirichlet 0.1, 5 seeds), which fits in about 90 minutes there, and
``--arms`` / ``--partitions`` / ``--seeds`` add the rest a part at a time into the same runs
folder. ``--size smoke`` is the same machinery, tiny, for CI.

Paired design: within a seed every arm gets the same partitions and the same client sample each
round (flq/strategy/roster.py; the report checks it again from the round records). Dirichlet 0.1
over 30+ clients rarely gives every client 4 examples (about 2% of seeds with 600 held out), and
flwr-datasets redraws only 10 times: the default seeds are the first ones whose draws work for every partition (``--seeds``
picks them by hand), the same rejection sampling continued, and decided before any run.

The deadline scales with the model: the virtual clock charges measured compute times the tier's
factor, so a deadline in seconds means a different amount of work for every model. It is set in
units of the model's reference step (``--deadline-steps``: the step-time estimate of
flq/task/cost.py at the run's batch, sequence length and bits, the same prior the schedulers
start from), so the same number puts the tiers in the same place for another model; transfer
times do not scale with compute, and the report prints the measured per-tier compute and transfer
against the deadline. ``--deadline`` sets seconds directly.

The image task: ``--data digits`` runs the same protocol on scikit-learn's digits with the
embedded MobileViT (random weights: no hub here; full precision). Its compute is mostly
convolutions, which the step estimate does not count, so ``--deadline`` (seconds) and ``--target``
are required; its runs are named ``digits-...``. The report's timing table gives the measured step
to set the deadline from (benchmarks/results/scheduler_evidence_digits.md says how it was set).

Mis-tiered clients: ``--compute-misfit cycle:1,3,1,0.5`` makes every client's true compute that
multiple of its tier's (here a quarter three times slower, a quarter twice as fast), charged by
the virtual clock and spent by the client's budget stop but told to no scheduler (docs/clock.md).
This is what the bandit's per-client time model is for; its runs are named ``misfit-...``.

    .venv/bin/python benchmarks/scheduler_evidence.py --size smoke
    .venv/bin/python benchmarks/scheduler_evidence.py --size default        # the headline arms
    .venv/bin/python benchmarks/scheduler_evidence.py --size default --report-only   # rebuild the report
    .venv/bin/python benchmarks/scheduler_evidence.py --size full           # every arm, ablation, partition
    .venv/bin/python benchmarks/scheduler_evidence.py --size default --data digits --deadline 0.68 --target 0.5 \
        --seeds 0 1 2 --report benchmarks/results/scheduler_evidence_digits.md   # the image task
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from evidence_report import ABLATION_PREFIX, FOCUS, Protocol, RunRef, write_evidence_report
from matrix import SCHEDULER_ARMS, Matrix, dump_cells, partition_overrides

from flq.scheduler.bandit import BANDIT_PARTS
from flq.scheduler.spread import parse_factor_spread
from flq.sim.clock import NO_MISFIT
from flq.task.cost import reference_step_seconds

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class DataSet:
    """A data set the protocol runs on: its run-config keys, the model and bits it runs with
    unless --model / --bits say otherwise, and how the report names it."""

    keys: dict
    model: str
    bits: int
    name: str  # in the report's protocol line
    items: str  # what one held-out example is, plural
    step_estimate_fits: bool  # whether flq/task/cost.py's step estimate sizes the model (else: --deadline)


DEFAULT_DATA = "bbc-news"  # the sizes' targets are its accuracies; its runs keep their unprefixed names
DATA = {
    DEFAULT_DATA: DataSet({"data": "bbc-news"}, "minilm-l6", 16, "BBC News", "articles", True),
    # The image task: the embedded random MobileViT (no hub here), full precision (nothing to quantize).
    # Its compute is mostly convolutions, which the step estimate (linear layers only) does not count.
    "digits": DataSet(
        {"task": "image-classification", "data": "digits"}, "mobilevit-tiny-random", 32, "digits", "images", False
    ),
}

BASELINES = SCHEDULER_ARMS
# One ablation per part the bandit can switch off (flq.scheduler.bandit.BANDIT_PARTS).
ABLATIONS = {f"{ABLATION_PREFIX}{part}": {**BASELINES[FOCUS], "bandit-off": part} for part in BANDIT_PARTS}
ARMS = {**BASELINES, **ABLATIONS}


@dataclass(frozen=True)
class Size:
    clients: int
    per_round: int
    seeds: int  # how many (the first feasible ones unless --seeds)
    partitions: tuple[str, ...]
    arms: tuple[str, ...]
    server_test_size: int
    budget_deadlines: float  # the equal clock, in deadlines
    max_rounds: int  # a cap only: the clock budget ends runs first
    target: float  # held-out accuracy; a choice to revisit once a pilot's score curves are in


SIZES = {
    "smoke": Size(4, 2, 2, ("dirichlet:0.3",), ("fixed-wait", "fixed-budget", "bandit"), 100, 5.0, 4, 0.5),
    "default": Size(32, 10, 5, ("dirichlet:0.1",), ("fixed-wait", "fixed-budget", "bandit"), 600, 25.0, 80, 0.7),
    "full": Size(32, 10, 5, ("dirichlet:0.1", "pathological:2"), tuple(ARMS), 600, 25.0, 80, 0.7),
}
# The report a size writes unless --report names one (a smoke's is a CI artefact beside its runs).
REPORTS = {"default": RESULTS / "scheduler_evidence.md", "full": RESULTS / "scheduler_evidence_full.md"}


def arm_overrides(arm: str, step_fixed_examples: float) -> dict:
    """An arm's run-config keys; a bandit arm is told a step's fixed cost where one is given (the
    other schedulers do not read it, so their runs stay those without it)."""
    keys = dict(ARMS[arm])
    if step_fixed_examples and keys["scheduler"] == "bandit":
        keys["step-fixed-examples"] = step_fixed_examples
    return keys


def feasible(base: dict, partition: str, seed: int, clients: int) -> bool:
    """Whether this seed's partition gives every client enough examples (decided before any run)."""
    from flq.config import RunConfig
    from flq.task.data import DataError
    from flq.task.partition import partition_sizes
    from flq.task.specs import data_spec

    keys = {**base, **partition_overrides(partition), "seed": seed}
    cfg = RunConfig(
        **{k.replace("-", "_"): v for k, v in keys.items() if k.replace("-", "_") in RunConfig.__dataclass_fields__}
    )
    try:
        return min(partition_sizes(data_spec(cfg), clients)) >= 4
    except DataError:
        return False


def choose_seeds(base: dict, partitions: tuple[str, ...], clients: int, wanted: int, limit: int = 1000) -> list[int]:
    seeds = []
    for seed in range(limit):
        if all(feasible(base, p, seed, clients) for p in partitions):
            seeds.append(seed)
            if len(seeds) == wanted:
                return seeds
    raise SystemExit(f"only {len(seeds)} of the first {limit} seeds can be partitioned: {seeds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="smoke")
    parser.add_argument("--clients", type=int, help="simulated clients (size's default)")
    parser.add_argument("--per-round", type=int, help="clients sampled per round")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the first feasible ones)")
    parser.add_argument("--num-seeds", type=int, help="how many feasible seeds to take")
    parser.add_argument("--partitions", nargs="+", help="dirichlet:ALPHA | pathological:K | iid")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS))
    parser.add_argument("--tiers", default="groups:gpu-24g,gpu-32g,cpu-edge,jetson-nano", help="the tier mix")
    parser.add_argument(
        "--compute-misfit",
        default="1",
        help="clients' true compute over their tier's, unknown to the schedulers (e.g. cycle:1,3,1,0.5); "
        "runs are named misfit-...",
    )
    parser.add_argument(
        "--data", choices=DATA, default=DEFAULT_DATA, help="the data set; runs not on BBC News are named DATA-..."
    )
    parser.add_argument("--model", help="the backbone (the data set's default)")
    parser.add_argument("--steps", type=int, default=4, help="local steps (the cap under a budget)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument(
        "--bits", type=int, help="backbone bits of the run (bandit may choose fewer; the data set's default)"
    )
    parser.add_argument("--deadline-steps", type=float, default=14.0, help="deadline in reference steps of the model")
    parser.add_argument(
        "--step-fixed-examples",
        type=float,
        default=0.0,
        help="the bandit arms' step-fixed-examples: a step's fixed cost in examples' worth, as measured "
        "(docs/schedulers.md)",
    )
    parser.add_argument("--deadline", type=float, help="deadline in clock seconds (instead of --deadline-steps)")
    parser.add_argument("--budget-deadlines", type=float, help="the equal clock budget, in deadlines")
    parser.add_argument("--max-rounds", type=int, help="round cap (the clock budget normally ends runs first)")
    parser.add_argument("--target", type=float, help="target accuracy on the held-out set (size's default)")
    parser.add_argument("--server-test-size", type=int)
    parser.add_argument("--client-eval-every", type=int, default=1, help="client evaluations (fairness) every N rounds")
    parser.add_argument("--out", type=Path, help="runs folder (default results/tmp/scheduler_evidence_<size>)")
    parser.add_argument("--report", type=Path, help="markdown report (default results/scheduler_evidence[_smoke].md)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (runs, seeds, deadline) and stop")
    args = parser.parse_args()
    data = DATA[args.data]
    model, bits = args.model or data.model, args.bits or data.bits
    if args.deadline is None and not data.step_estimate_fits:
        parser.error(
            f"--data {args.data}: give --deadline in clock seconds (about --deadline-steps measured steps of "
            f"{model}): flq/task/cost.py's step estimate counts linear layers only"
        )
    if args.data != DEFAULT_DATA and args.target is None:
        parser.error(f"--data {args.data}: give --target (the sizes' targets are BBC News accuracies)")

    size = SIZES[args.size]
    size = replace(
        size,
        clients=args.clients or size.clients,
        per_round=args.per_round or size.per_round,
        seeds=args.num_seeds or size.seeds,
        partitions=tuple(args.partitions or size.partitions),
        arms=tuple(args.arms or size.arms),
        server_test_size=args.server_test_size or size.server_test_size,
        budget_deadlines=args.budget_deadlines or size.budget_deadlines,
        max_rounds=args.max_rounds or size.max_rounds,
        target=args.target or size.target,
    )
    out = args.out or RESULTS / "tmp" / f"scheduler_evidence_{args.size}"
    report = args.report or REPORTS.get(args.size, out / "report.md")
    step_s = reference_step_seconds(model, bits, args.batch_size, args.seq_len)
    deadline = args.deadline if args.deadline else round(args.deadline_steps * step_s, 3)
    clock_budget = round(size.budget_deadlines * deadline, 3)

    base = {
        **data.keys,
        "model": model,
        "max-seq-length": args.seq_len,
        "batch-size": args.batch_size,
        "num-server-rounds": size.max_rounds,
        "clients-per-round": size.per_round,
        "local-steps": args.steps,
        "learning-rate": args.lr,
        "lora-rank": 16,
        "base-rank": 8,
        "backbone-bits": bits,
        "aggregation": "svd",
        "aggregation-weight": "examples-per-step",
        "update-codec": "int8",
        "broadcast-codec": "int8",
        "error-feedback": True,
        "server-test-size": size.server_test_size,
        "tiers": args.tiers,
        "deadline-s": deadline,
        "clock-budget-s": clock_budget,
        "target-score": size.target,
        "client-eval-every": args.client_eval_every,
        "client-ranks": "tier:gpu-24g=16,gpu-32g=16,cpu-edge=4,jetson-nano=2",
        "compute-misfit": args.compute_misfit,
    }
    # not paired with, nor reusing, runs without a misfit (a bad spec fails here, before any run)
    prefix = "" if parse_factor_spread(args.compute_misfit, "--compute-misfit") == NO_MISFIT else "misfit-"
    prefix += "" if args.data == DEFAULT_DATA else f"{args.data}-"
    seeds = args.seeds or choose_seeds(base, size.partitions, size.clients, size.seeds)

    matrix = Matrix("evidence", out, num_supernodes=size.clients)
    refs: list[RunRef] = []
    for seed in seeds:  # seed-major: an interrupted matrix still holds whole pairs
        for partition in size.partitions:
            for arm in size.arms:
                label = f"{prefix}{partition.replace(':', '')}-{arm}"
                keys = {**base, **partition_overrides(partition), **arm_overrides(arm, args.step_fixed_examples)}
                matrix.add(label, keys, [seed])
                refs.append(RunRef(partition, arm, seed, out / "runs" / f"{label}-seed{seed}"))
    if args.dry_run:
        print(
            f"{len(refs)} runs: {len(seeds)} seeds {seeds} x {len(size.partitions)} partitions x {len(size.arms)} arms; "
            f"{size.clients} clients, {size.per_round} per round; deadline {deadline:g} s (reference step "
            f"{step_s:.3g} s); equal clock {clock_budget:g} s; at most {size.max_rounds} rounds; target {size.target:g}"
        )
        return
    started = time.perf_counter()
    if not args.report_only:
        matrix.run()
        dump_cells(out / "cells.json", matrix)
    command = ".venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv if a != "--report-only")
    protocol = Protocol(
        command=command,
        size=args.size,
        settings={
            **asdict(size),
            "seeds": seeds,
            "model": model,
            "data": data.name,
            "items": data.items,
            "tiers": args.tiers,
            "compute_misfit": args.compute_misfit,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "step_fixed_examples": args.step_fixed_examples,
        },
        seeds=seeds,
        target=size.target,
        deadline_s=deadline,
        deadline_steps=None if args.deadline else args.deadline_steps,
        reference_step_s=step_s,
        clock_budget_s=clock_budget,
        server_test_size=size.server_test_size,
        matrix_wall_s=None if args.report_only else time.perf_counter() - started,
    )
    path = write_evidence_report(refs, protocol, report)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
