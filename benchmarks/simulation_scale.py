"""Simulation scale: one ``flwr run`` with many simulated clients, its wall time and peak memory.

A real simulation (SuperLink, Flower's simulation engine, ClientApp actors) of the main job's task
(SmolLM2 on BBC News) with ``--clients`` SuperNodes, ``--per-round`` sampled each round, and every
client evaluating its own split in the final round. Memory is sampled every 0.5 s as the summed
resident set size of the SuperLink and all its descendants (the simulation, Ray and its actors);
the peak is reported with the run's wall time and what its records say.

    .venv/bin/python benchmarks/simulation_scale.py --clients 100 --per-round 10 --rounds 2
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import psutil
from matrix import markdown_table, write_report

from harness.simulation import LocalSimulation

RESULTS = Path(__file__).parent / "results"


class TreeMemory:
    """Peak summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.root, self.every_s = psutil.Process(pid), every_s
        self.peak_mb, self.peak_processes = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            if total / 2**20 > self.peak_mb:
                self.peak_mb, self.peak_processes = total / 2**20, len(procs)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "tmp" / "simulation_scale")
    parser.add_argument("--report", type=Path, default=RESULTS / "simulation_scale.md")
    args = parser.parse_args()

    overrides = {
        "num-server-rounds": args.rounds,
        "clients-per-round": args.per_round,
        "local-steps": args.local_steps,
        "partitioner": "iid",  # 19 examples a client at 100 clients: Dirichlet leaves some with too few
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalSimulation(args.out / "work") as sim, TreeMemory(sim.superlink.popen.pid) as memory:
        start = time.perf_counter()
        run = sim.run(overrides, args.clients, f"scale-{args.clients}", out_dir=args.out / "runs")
        wall_s = time.perf_counter() - start
    rounds = run.rounds()
    last = rounds[-1]
    evaluated = len(last["client_eval"])
    row = [
        args.clients, args.per_round, len(rounds), f"{wall_s:.0f}", f"{memory.peak_mb / 1024:.2f}",
        memory.peak_processes, f"{sum(r['num_accepted'] for r in rounds)}/{sum(r['num_sampled'] for r in rounds)}",
        evaluated, f"{last['score']:.3f}",
    ]  # fmt: skip
    header = [
        "clients", "per round", "rounds", "wall s", "peak RSS GiB (SuperLink tree)", "processes at peak",
        "updates accepted", "clients evaluated (final round)", "final accuracy",
    ]  # fmt: skip
    command = (
        f"    .venv/bin/python benchmarks/simulation_scale.py --clients {args.clients} --per-round {args.per_round} "
        f"--rounds {args.rounds} --local-steps {args.local_steps}"
    )
    protocol = __doc__.split("\n\n", 1)[1].split("    .venv")[0] + f"\nCommand:\n\n{command}\n"
    write_report(args.report, "Simulation scale", protocol, markdown_table(header, [row]))
    if evaluated != args.clients or last["num_accepted"] != args.per_round:
        raise SystemExit(f"the run did not complete as asked: {evaluated} clients evaluated, see {run.run_dir}")


if __name__ == "__main__":
    main()
