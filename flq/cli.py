"""The ``flq`` command: small tools around a run (reports, model cache, federations)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module exposes ``add_arguments(parser)`` and ``run(args)``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "report": ("flq.metrics.report", "summarise and plot one or more run directories"),
    "prepare-model": ("flq.task.model_cache", "convert and cache an embedded model or a GGUF file"),
    "federations": ("flq.federations", "install the project's federations into Flower's config"),
    "launch": ("flq.launch.cli", "start a tiered deployment from an experiment file, or render it for Slurm/Compose"),
    "calibrate": ("flq.launch.calibrate", "measure seconds per training step here and write a calibrated tier file"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="flq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # Import only the chosen subcommand's module: some pull in torch, others only numpy.
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
