"""Real deployments on loopback: one `flq-superlink`, `flq-supernode`s, `flwr run`.

Used by tests/test_deployment_quic.py (a small smoke app) and tests/test_deployment_flq.py
(the FLQ app itself). Every process is a `harness.processes.Proc`: started in its own session
and stopped by its own pid and group (plus any process Flower spawned from it, found by parent
pid), never by name. Timeouts are hang guards, never assertions.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import httpx

from flq.transport.certs import make_certificates
from harness.processes import BIN, Proc, flower_env, free_port
from harness.simulation import override_string

GUARD = 240.0  # hang guard for a whole `flwr run`
FLEET_OVER_HTTP = re.compile(r'"POST /v1/fleet/[a-z-]+ HTTP/1\.1"')  # uvicorn's access-log format


def node_config(partition_id: int, num_partitions: int, tier: str) -> str:
    """A SuperNode's `--node-config`, as docs/deployment.md gives it."""
    return f'partition-id={partition_id} num-partitions={num_partitions} tier="{tier}"'


def superlink_command(certs: dict, host: str, port: int, *extra: str) -> list[str]:
    """``flq-superlink`` as docs/deployment.md starts it: TLS from ``certs``, runtime installs off."""
    return [
        str(BIN / "flq-superlink"),
        "--ssl-certfile",
        str(certs["server_cert"]),
        "--ssl-keyfile",
        str(certs["server_key"]),
        "--ssl-ca-certfile",
        str(certs["ca_cert"]),
        "--host",
        host,
        "--port",
        str(port),
        *extra,
        "--disable-runtime-dependency-installation",
    ]


class Deployment:
    """`flq-superlink` (HTTP APIs on TCP, Fleet API over QUIC on UDP, one port number) and one
    `flq-supernode` per entry of `tiers`, on loopback, with a `FLWR_HOME` of their own whose
    `config.toml` names the SuperLink `connection` (what `flwr run APP CONNECTION` dials)."""

    def __init__(
        self, tmp: Path, tiers: list[str], connection: str = "quic-test", env: dict[str, str] | None = None
    ) -> None:
        self.tmp = tmp
        self.tiers = list(tiers)
        self.connection = connection
        self.certs = make_certificates(tmp / "certs")
        self.home = tmp / "flwr-home"
        self.home.mkdir()
        self.port = free_port()
        self.node_ports = [free_port() for _ in self.tiers]
        self.database = tmp / "state.db"
        # Without FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION: the documented flags below must say it.
        self.env = flower_env(self.home, **{**(env or {}), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": None})
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs["ca_cert"]}"\n'
        )
        self.tls = ssl.create_default_context(cafile=str(self.certs["ca_cert"]))
        self.procs: list[Proc] = []
        self.superlink: Proc | None = None
        self.nodes: list[Proc | None] = [None] * len(self.tiers)
        self.runs = 0

    def _start(self, name: str, cmd: list[str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, cmd, self.env, self.tmp / f"{name}.log", cwd=cwd)
        self.procs.append(proc)
        return proc

    def superlink_command(self) -> list[str]:
        return superlink_command(self.certs, "127.0.0.1", self.port, "--database", str(self.database))

    def supernode_command(self, i: int) -> list[str]:
        return [
            str(BIN / "flq-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--root-certificates",
            str(self.certs["ca_cert"]),
            "--port",
            str(self.node_ports[i]),
            "--node-config",
            node_config(i, len(self.tiers), self.tiers[i]),
        ]

    def start_superlink(self) -> Proc:
        self.superlink = self._start(f"superlink-{len(self.procs)}", self.superlink_command(), cwd=self.tmp)

        def healthy():
            try:
                return httpx.get(f"https://127.0.0.1:{self.port}/health", verify=self.tls, timeout=2).is_success
            except httpx.HTTPError:
                return False

        self.superlink.wait_until(healthy, "SuperLink health")
        self.superlink.wait_for_line("Fleet QUIC API on")
        return self.superlink

    def start_node(self, i: int) -> Proc:
        node = self._start(f"supernode{i}-{len(self.procs)}", self.supernode_command(i))
        self.nodes[i] = node
        node.wait_for_line("SuperNode ID:")
        return node

    def start(self) -> Deployment:
        self.start_superlink()
        for i in range(len(self.tiers)):
            self.start_node(i)
        return self

    def start_flwr_run(self, app: Path, config: dict) -> Proc:
        """`flwr run APP CONNECTION --stream -c CONFIG`, started from the app's folder."""
        self.runs += 1
        cmd = [str(BIN / "flwr"), "run", str(app), self.connection, "--stream", "-c", override_string(config)]
        return self._start(f"flwr-run-{self.runs}", cmd, cwd=app)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
