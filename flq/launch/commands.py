"""The command lines of a deployment, one owner for all three ways of starting it.

``flq launch`` (local processes), the Slurm scripts and the Compose file start the same
``flq-superlink``, ``flq-supernode`` and app-run commands with the same flags as
docs/deployment.md; only hosts, ports and paths differ.
"""

from __future__ import annotations

import json
from pathlib import Path

CONNECTION = "flq-launch"  # the connection name in the launch's own FLWR_HOME
# The files `python -m flq.transport.certs DIR` writes.
CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"
# Flower's switches for a launched process: no update check, no telemetry, and never a `uv sync`
# of the app at run time (it would install CUDA torch); unbuffered logs for the progress display.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
SUPERLINK_READY = "Fleet QUIC API on"  # flq-superlink's log line once QUIC is served
NODE_READY = "SuperNode ID:"  # Flower's log line once a SuperNode has registered


def superlink_command(certs: str, host: str, port: int, database: str, extra=(), program="flq-superlink") -> list[str]:
    return [
        program,
        "--ssl-certfile",
        f"{certs}/{SERVER_CERT}",
        "--ssl-keyfile",
        f"{certs}/{SERVER_KEY}",
        "--ssl-ca-certfile",
        f"{certs}/{CA_CERT}",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        database,
        "--disable-runtime-dependency-installation",
        *extra,
    ]


def supernode_command(
    superlink: str, ca_cert: str, port: int | str, node_config: str, extra=(), program="flq-supernode"
) -> list[str]:
    """``superlink`` is HOST:PORT of the SuperLink's Fleet API (QUIC); ``port`` the node's own local one."""
    return [
        program,
        "--superlink",
        superlink,
        "--root-certificates",
        ca_cert,
        "--port",
        str(port),
        "--node-config",
        node_config,
        *extra,
    ]


def thread_env(cpus: int | None) -> dict[str, str]:
    """OpenMP/MKL threads of a CPU-limited node: what torch starts with before the ClientApp sets its tier's."""
    return {} if cpus is None else {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus)}


def connection_toml(address: str, ca_cert: str) -> str:
    """``$FLWR_HOME/config.toml`` naming the launch's SuperLink (what ``flwr run APP flq-launch`` dials)."""
    return (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {json.dumps(address)}\nroot-certificates = {json.dumps(ca_cert)}\n"
    )


def app_run_command(
    app: str, run_config: str, nodes: int, rounds_file: str, nodes_timeout_s: float, timeout_s: float, python="python"
) -> list[str]:
    """``python -m flq.launch.app_run``: wait for the nodes, ``flwr run``, check the run's status."""
    return [
        python,
        "-m",
        "flq.launch.app_run",
        "--app",
        app,
        "--run-config",
        run_config,
        "--nodes",
        str(nodes),
        "--rounds-file",
        rounds_file,
        "--nodes-timeout",
        f"{nodes_timeout_s:g}",
        "--timeout",
        f"{timeout_s:g}",
    ]


def write_run_config(path: Path, config: dict) -> Path:
    """The run config as a TOML file: ``flwr run -c FILE`` takes it without shell quoting."""
    import tomli_w

    path.write_text(tomli_w.dumps(config))
    return path
