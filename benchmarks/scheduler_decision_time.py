"""Scheduler decision time per round: ``bandit`` vs ``solver`` (and ``lite``, ``tier``, ``fixed``).

Clients in thirds over the packaged tiers ``gpu-24g``, ``gpu-32g`` and ``cpu-edge``
(flq/sim/tiers.toml); a 120 s deadline; r_max 64; 8 local steps. Each round every scheduler
assigns (timed), a synthetic round is played from its assignments (untimed: compute from the
tier's factor and a measured step time with 10% noise, transfer from the rank's bytes over the
tier's links, 3% of clients failing, losses falling), and the scheduler observes the reports
(timed). The schedulers take their rounds in turn, so a change in machine load hits them all
alike. Reported: the median over the measured rounds (after warm-up rounds) of assign, observe
and their sum, and solver/bandit ratios per size.

    .venv/bin/python benchmarks/scheduler_decision_time.py            # writes results/scheduler_decision_time.md
    .venv/bin/python benchmarks/scheduler_decision_time.py --quick    # 10,100 clients, results/tmp/
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# One BLAS thread unless the caller says otherwise (set before numpy loads OpenBLAS): on a
# shared 2-core machine multi-threaded BLAS collapses when other processes hold the cores.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import cvxpy  # noqa: E402
import numpy as np  # noqa: E402

from flq.scheduler import (  # noqa: E402  # noqa: E402
    Assignment,
    ClientInfo,
    ClientReport,
    RankScheduler,
    RoundOutcome,
    SchedulerDefaults,
    build_scheduler,
)
from flq.sim.tiers import load_tiers  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEDULER_NAMES = ("bandit", "solver", "lite", "tier", "fixed")
TIER_MIX = ("gpu-24g", "gpu-32g", "cpu-edge")
DEADLINE_S = 120.0
DEFAULTS = SchedulerDefaults(rank=8, rank_max=64, rank_min=1, bits=16, local_steps=8)
# Reference seconds per step (SmolLM2-135M, batch 8x128, 2 cores; docs/environment notes):
# fp32/16-bit 2.2 s, nf4 3.25 s; 8-bit taken between them.
STEP_TIME_PRIOR = {4: 3.25, 8: 2.7, 16: 2.2}
BYTES_PER_RANK = 3.7e6 / 8  # SmolLM2 LoRA on q,k,v,o: 3.7 MB in fp32 at rank 8
FAILURE_SHARE = 0.03


@dataclass
class Timings:
    assign_s: list[float] = field(default_factory=list)
    observe_s: list[float] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return len(self.assign_s)

    def median_ms(self, which: str) -> float:
        return 1e3 * statistics.median(self._values(which))

    def min_ms(self, which: str) -> float:
        return 1e3 * min(self._values(which))

    def _values(self, which: str) -> list[float]:
        return {
            "assign": self.assign_s,
            "observe": self.observe_s,
            "total": [a + o for a, o in zip(self.assign_s, self.observe_s)],
        }[which]


class SyntheticRound:
    """Plays a round from assignments: what each client would report (not timed)."""

    def __init__(self, clients: Sequence[ClientInfo], tiers: dict, seed: int) -> None:
        self.clients = clients
        self.tiers = tiers
        self.rng = random.Random(seed)
        self.loss = 2.0

    def play(self, server_round: int, assignments: dict[int, Assignment]) -> tuple[list[ClientReport], RoundOutcome]:
        reports = [self._report(c, assignments[c.node_id]) for c in self.clients]
        on_time = [r.round_s for r in reports if r.status == "ok"]
        round_s = DEADLINE_S if len(on_time) < len(reports) else max(on_time, default=0.0)
        before, self.loss = self.loss, 0.2 + (self.loss - 0.2) * 0.95
        return reports, RoundOutcome(server_round, round_s, DEADLINE_S, before, self.loss)

    def _report(self, client: ClientInfo, a: Assignment) -> ClientReport:
        tier = self.tiers[client.tier]
        if self.rng.random() < FAILURE_SHARE:
            return ClientReport(client.node_id, "failed", a.rank, a.bits, client.tier)
        compute = a.local_steps * STEP_TIME_PRIOR[a.bits] * tier.compute_factor * self.rng.lognormvariate(0, 0.1)
        megabits = a.rank * BYTES_PER_RANK * 8e-6
        transfer = 2 * tier.rtt_ms / 1e3 + megabits * (1 / tier.downlink_mbps + 1 / tier.uplink_mbps)
        total = compute + transfer
        status = "ok" if total <= DEADLINE_S else "late"
        return ClientReport(
            client.node_id,
            status,
            a.rank,
            a.bits,
            client.tier,
            a.local_steps,
            8 * a.local_steps,
            compute,
            transfer,
            total,
            int(a.rank * BYTES_PER_RANK),
            int(a.rank * BYTES_PER_RANK),
            self.loss,
            self.loss * 0.97,
            status == "ok",
        )


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection inside a timed call (as ``timeit`` does): the synthetic rounds
    allocate ~10^5 report objects, and a collection they trigger would be charged to
    whichever scheduler happened to be running. Collected just before instead."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def federation(num_clients: int) -> list[ClientInfo]:
    """Clients in thirds over the tier mix (contiguous groups, like the run config's groups:)."""
    return [
        ClientInfo(
            node_id=1000 + i,
            tier=TIER_MIX[i * len(TIER_MIX) // num_clients],
            partition_id=i,
            num_partitions=num_clients,
            num_examples=100,
        )
        for i in range(num_clients)
    ]


def measure_size(
    num_clients: int, names: Sequence[str], warmup: int, rounds: int, solver_rounds: int, seed: int
) -> dict[str, Timings]:
    tiers = load_tiers()
    clients = federation(num_clients)
    schedulers: dict[str, RankScheduler] = {
        name: build_scheduler(
            name, DEFAULTS, tiers=tiers, step_time_prior=STEP_TIME_PRIOR, bytes_per_rank=BYTES_PER_RANK, seed=seed
        )
        for name in names
    }
    games = {name: SyntheticRound(clients, tiers, seed) for name in names}
    timings = {name: Timings() for name in names}
    for server_round in range(1, warmup + rounds + 1):
        for name, scheduler in schedulers.items():
            budget = solver_rounds if name == "solver" else rounds
            if server_round > warmup + budget:
                continue
            with collector_paused():
                start = time.perf_counter()
                assignments = scheduler.assign(server_round, clients, DEADLINE_S)
                assigned = time.perf_counter()
            reports, outcome = games[name].play(server_round, assignments)
            with collector_paused():
                observe_start = time.perf_counter()
                scheduler.observe(server_round, reports, outcome)
                observed = time.perf_counter()
            if server_round > warmup:
                timings[name].assign_s.append(assigned - start)
                timings[name].observe_s.append(observed - observe_start)
        print(f"  {num_clients} clients: round {server_round} done", file=sys.stderr, flush=True)
    return timings


def markdown_report(results: dict[int, dict[str, Timings]], context: dict[str, str]) -> str:
    lines = ["# Scheduler decision time per round", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        "",
        "Median over the measured rounds (after warm-up), milliseconds:",
        "",
        "| clients | scheduler | rounds | assign (ms) | observe (ms) | assign + observe (ms) | "
        "fastest round, assign + observe (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size, by_name in results.items():
        for name, t in by_name.items():
            lines.append(
                f"| {size} | {name} | {t.rounds} | {t.median_ms('assign'):.3f} | "
                f"{t.median_ms('observe'):.3f} | {t.median_ms('total'):.3f} | {t.min_ms('total'):.3f} |"
            )
    if all({"bandit", "solver"} <= set(by_name) for by_name in results.values()):
        lines += [
            "",
            "bandit vs solver, same run (ratio = solver time / bandit time; bandit/solver is its inverse):",
            "",
            "| clients | bandit (ms) | solver (ms) | solver / bandit (x) | bandit / solver | "
            "assign only: solver / bandit (x) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for size, by_name in results.items():
            b, s = by_name["bandit"], by_name["solver"]
            total_ratio = s.median_ms("total") / b.median_ms("total")
            assign_ratio = s.median_ms("assign") / b.median_ms("assign")
            lines.append(
                f"| {size} | {b.median_ms('total'):.3f} | {s.median_ms('total'):.3f} | "
                f"{total_ratio:.1f} | {1 / total_ratio:.4f} | {assign_ratio:.1f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,100,1000,10000", help="comma-separated client counts")
    parser.add_argument("--schedulers", default=",".join(SCHEDULER_NAMES))
    parser.add_argument("--warmup", type=int, default=2, help="rounds not timed first (new clients, imports)")
    parser.add_argument("--rounds", type=int, default=21, help="measured rounds per scheduler")
    parser.add_argument(
        "--solver-rounds-at-10000",
        type=int,
        default=7,
        help="measured solver rounds at 10,000 clients and more (each may take seconds)",
    )
    parser.add_argument("--quick", action="store_true", help="10 and 100 clients, 3 rounds: a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.rounds, args.warmup = "10,100", 3, 1
    if args.out is None:
        args.out = RESULTS_DIR / ("tmp" if args.quick else "") / "scheduler_decision_time.md"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(c) for c in args.clients.split(",")]
    names = [n.strip() for n in args.schedulers.split(",") if n.strip()]
    load_before = os.getloadavg()[0]
    results = {}
    started = time.perf_counter()
    for size in sizes:
        solver_rounds = min(args.rounds, args.solver_rounds_at_10000) if size >= 10_000 else args.rounds
        results[size] = measure_size(size, names, args.warmup, args.rounds, solver_rounds, args.seed)
    context = {
        "federation": f"clients in thirds over {', '.join(TIER_MIX)} (flq/sim/tiers.toml); deadline {DEADLINE_S:.0f} s; "
        f"r_max {DEFAULTS.rank_max}, run rank {DEFAULTS.rank}, {DEFAULTS.local_steps} local steps; "
        f"{FAILURE_SHARE:.0%} of clients fail each round",
        "rounds": f"{args.warmup} warm-up + {args.rounds} measured per scheduler "
        f"(solver at >= 10,000 clients: {min(args.rounds, args.solver_rounds_at_10000)}); schedulers interleaved "
        f"round by round; garbage collection paused inside timed calls; seed {args.seed}",
        "solver": f"cvxpy {cvxpy.__version__}, {build_scheduler('solver', DEFAULTS).solver} "
        f"(installed: {', '.join(cvxpy.installed_solvers())})",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}, "
        f"numpy {np.__version__}, BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS')}",
        "load average (1 min)": f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after",
        "wall time of the whole benchmark": f"{time.perf_counter() - started:.0f} s",
    }
    report = markdown_report(results, context)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
