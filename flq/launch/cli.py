"""``flq launch EXPERIMENT.toml``: a tiered deployment on this host, or its Slurm or Compose rendering.

Exit status: 0 the run completed; 1 it failed (or a process did); 2 the experiment file is bad or
this host cannot give what it asks for; 130 interrupted (everything started was stopped).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .experiment import Experiment, ExperimentError, load_experiment

RENDERINGS = ("slurm", "compose")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="the experiment file (docs/launch.md)")
    parser.add_argument(
        "--render", choices=RENDERINGS, help="write Slurm batch scripts or a Docker Compose file instead of launching"
    )
    parser.add_argument(
        "--out", type=Path, help="with --render: the folder to write (default: <results>/<name>-<kind>)"
    )
    parser.add_argument(
        "--results", type=Path, help="the launch's results folder (default: <experiment.results>/<name>-<UTC time>)"
    )
    parser.add_argument(
        "--no-network", action="store_true", help="ignore [network] emulate: every node on the host's own network"
    )
    parser.add_argument("--check", action="store_true", help="check the experiment file, print the plan, start nothing")


def plan(exp: Experiment) -> str:
    lines = [f"experiment {exp.name}: app {exp.app}, results under {exp.results}"]
    for node in exp.nodes():
        g = node.group
        limits = [f"{g.cpus} cores" if g.cpus else "no core limit"]
        if g.cpus and g.tier.threads and g.tier.threads != g.cpus:
            limits[0] += f" (torch runs the tier's {g.tier.threads} threads on them)"
        if g.gpus:
            limits.append(f"{g.gpus} GPU (clusters)")
        if g.memory_mb:
            limits.append(f"{g.memory_mb} MiB")
        lines.append(f"  {node.name}: node config {node.node_config}; {', '.join(limits)}")
    lines.append(f"  run config: {exp.run_config}")
    if exp.network.emulate:
        who = "each node" if exp.network.link == "node" else "each [[supernodes]] group"
        lines.append(f"  network: an emulated link for {who} (queue {exp.network.queue_ms:g} ms)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        exp = load_experiment(args.experiment)
    except ExperimentError as exc:
        print(f"flq launch: {exc}")
        return 2
    if args.check:
        print(plan(exp))
        return 0
    if args.render:
        return _render(exp, args)
    emulate = exp.network.emulate and not args.no_network
    if emulate:
        from ..netem.star import unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"flq launch: [network] emulate = true, but {reason}; run as root or pass --no-network")
            return 2
    from .local import LocalLaunch

    folder = args.results or exp.results / f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if folder.exists() and any(folder.iterdir()):
        print(f"flq launch: results folder {folder} is not empty")
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    print(plan(exp), flush=True)
    return LocalLaunch(exp, folder, emulate).run()


def _render(exp: Experiment, args: argparse.Namespace) -> int:
    out = (args.out or exp.results / f"{exp.name}-{args.render}").resolve()
    if args.render == "slurm":
        from .render_slurm import render_slurm as render
    else:
        from .render_compose import render_compose as render
    files = render(exp, out)
    for path in files:
        print(path)
    return 0
