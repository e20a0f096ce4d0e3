"""Run a command on a set of cores and under an address-space limit, then get out of the way.

    python -m flq.launch.limits [--cpus 0,2-3] [--memory-mb 4096] -- COMMAND ...

Sets the CPU affinity and RLIMIT_AS of this process, then execs COMMAND in its place (same pid),
so COMMAND and every process it starts (a SuperNode's ClientApp processes) inherit both. A
wrapper rather than ``preexec_fn``: the launcher runs a packet-forwarder thread, and Python
documents ``preexec_fn`` as unsafe in a threaded parent.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Iterable


def parse_cpus(text: str) -> frozenset[int]:
    """``"0,2-3"`` -> {0, 2, 3} (the kernel's cpu-list format)."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad CPU list {text!r}")
        cpus.update(range(int(lo), int(hi if sep else lo) + 1))
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """{0, 2, 3} -> ``"0,2-3"``."""
    out, run = [], []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def allot_cpus(wanted: list[int | None], available: Iterable[int]) -> list[frozenset[int] | None]:
    """Cores for each node that wants some, dealt round-robin from ``available``.

    Nodes get disjoint cores while there are enough; past that they share (each node still runs
    on no more cores than it asked for, which is what a thread-limited tier means)."""
    pool = sorted(available)
    out, nxt = [], 0
    for count in wanted:
        if count is None:
            out.append(None)
            continue
        count = min(count, len(pool))
        out.append(frozenset(pool[(nxt + i) % len(pool)] for i in range(count)))
        nxt = (nxt + count) % len(pool)
    return out


def prefix(cpus: Iterable[int] | None, memory_mb: int | None, python: str = sys.executable) -> list[str]:
    """The command prefix applying these limits (empty when there are none)."""
    if cpus is None and memory_mb is None:
        return []
    out = [python, "-m", "flq.launch.limits"]
    if cpus is not None:
        out += ["--cpus", format_cpus(cpus)]
    if memory_mb is not None:
        out += ["--memory-mb", str(memory_mb)]
    return [*out, "--"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flq.launch.limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=parse_cpus, default=None, help="cores to run on, e.g. 0,2-3")
    parser.add_argument("--memory-mb", type=int, default=None, help="address-space limit (RLIMIT_AS), MiB")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    if args.cpus is not None:
        os.sched_setaffinity(0, args.cpus)
    if args.memory_mb is not None:
        limit = args.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execvp(command[0], command)
    return 127  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
