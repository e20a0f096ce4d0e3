"""``flq federations install``: put the project's federations into Flower's config file.

Flower keeps named connections in ``$FLWR_HOME/config.toml`` (default ``~/.flwr``). The
project defines its own in ``federations.toml`` (same format); installing merges those
``[superlink.NAME]`` tables in, replacing only connections of the same name. Relative paths
(``root-certificates``) are made absolute against the federations file's folder.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

PATH_KEYS = ("root-certificates",)


def flwr_config_path() -> Path:
    home = os.environ.get("FLWR_HOME")
    return (Path(home) if home else Path.home() / ".flwr") / "config.toml"


def load_federations(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"no federations file at {path}")
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    connections = data.get("superlink")
    if not isinstance(connections, dict) or not connections:
        raise ValueError(f"{path}: expected [superlink.NAME] tables")
    out = {}
    for name, conn in connections.items():
        if not isinstance(conn, dict) or "address" not in conn:
            raise ValueError(f"{path}: [superlink.{name}] needs an address")
        conn = dict(conn)
        for key in PATH_KEYS:
            if key in conn and not Path(conn[key]).is_absolute():
                conn[key] = str((path.parent / conn[key]).resolve())
        out[name] = conn
    return out


def install(federations_file: Path, config_file: Path | None = None) -> tuple[Path, list[str]]:
    """Merge the federations into Flower's config; return (config path, names installed)."""
    import tomli_w
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    config_file = config_file or flwr_config_path()
    ours = load_federations(federations_file)
    if config_file.is_file():
        with open(config_file, "rb") as fh:
            config = tomllib.load(fh)
    else:
        config = tomllib.loads(DEFAULT_FLOWER_CONFIG_TOML)
    superlink = config.setdefault("superlink", {})
    superlink.setdefault("default", "local")
    superlink.update(ours)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = config_file.with_suffix(".toml.tmp")
    tmp.write_bytes(tomli_w.dumps(config).encode())
    os.replace(tmp, config_file)
    return config_file, sorted(ours)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["install", "show"], help="install: merge into Flower's config; show: print them"
    )
    parser.add_argument(
        "--file", type=Path, default=Path("federations.toml"), help="federations file (default: ./federations.toml)"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        for name, conn in load_federations(args.file).items():
            print(f"{name}: {conn}")
        return 0
    path, names = install(args.file)
    print(f"installed federations {', '.join(names)} into {path}")
    return 0
