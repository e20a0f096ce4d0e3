"""Real deployments on loopback for tests: one `flq-superlink`, `flq-supernode`s, `flwr run`.

Shared by tests/test_deployment_quic.py (a small smoke app) and tests/test_deployment_flq.py
(the FLQ app itself). Every process is started in its own session and stopped by its own pid
and group (plus any process Flower spawned from it, found by parent pid), never by name.
Timeouts are hang guards, never assertions.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flq.simulate import override_string
from flq.transport.certs import make_certificates

BIN = Path(sys.executable).parent
GUARD = 240.0  # hang guard for a whole `flwr run`
FLEET_OVER_HTTP = re.compile(r'"POST /v1/fleet/[a-z-]+ HTTP/1\.1"')  # uvicorn's access-log format


def free_tcp_udp_port() -> int:
    """A port number free for TCP (HTTP API) and UDP (QUIC) at once."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (Flower starts SuperExec and app processes in new sessions)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, cwd: Path | None = None) -> None:
        self.name, self.log = name, log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=cwd)
        self.known: set[int] = set()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _signal_all(self, sig: int) -> None:
        if self.alive():  # once reaped, its pid may belong to someone else: keep the children we saw
            self.known.update(_children(self.popen.pid))
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        for pid in self.known:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye."""
        self._signal_all(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> None:
        if self.alive():
            self._signal_all(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self._signal_all(signal.SIGKILL)  # whatever is left, including Flower's detached children
        self.popen.wait(30)
        self._fh.close()

    def wait(self, timeout: float = GUARD) -> str:
        """Wait for the process to exit by itself (SIGKILL past the hang guard); return its log."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s (hang guard):\n"
                                 f"{self.text()[-3000:]}") from None
        finally:
            if self.alive():
                self.kill()
            self._fh.close()
        return self.text()


def wait_for(predicate, what: str, timeout: float = 120.0, proc: Proc | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.text()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def node_config(partition_id: int, num_partitions: int, tier: str) -> str:
    """A SuperNode's `--node-config`, as docs/deployment.md gives it."""
    return f'partition-id={partition_id} num-partitions={num_partitions} tier="{tier}"'


class Deployment:
    """`flq-superlink` (HTTP APIs on TCP, Fleet API over QUIC on UDP, one port number) and one
    `flq-supernode` per entry of `tiers`, on loopback, with a `FLWR_HOME` of their own whose
    `config.toml` names the SuperLink `connection` (what `flwr run APP CONNECTION` dials)."""

    def __init__(self, tmp: Path, tiers: list[str], connection: str = "quic-test",
                 env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.tiers = list(tiers)
        self.connection = connection
        self.certs = make_certificates(tmp / "certs")
        self.home = tmp / "flwr-home"
        self.home.mkdir()
        self.port = free_tcp_udp_port()
        self.node_ports = [free_tcp_udp_port() for _ in self.tiers]
        self.database = tmp / "state.db"
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
        self.env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # the flags below say it
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs["ca_cert"]}"\n')
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
        c = self.certs
        return [str(BIN / "flq-superlink"), "--ssl-certfile", str(c["server_cert"]), "--ssl-keyfile",
                str(c["server_key"]), "--ssl-ca-certfile", str(c["ca_cert"]), "--host", "127.0.0.1",
                "--port", str(self.port), "--database", str(self.database),
                "--disable-runtime-dependency-installation"]

    def supernode_command(self, i: int) -> list[str]:
        return [str(BIN / "flq-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--root-certificates", str(self.certs["ca_cert"]), "--port", str(self.node_ports[i]),
                "--node-config", node_config(i, len(self.tiers), self.tiers[i])]

    def start_superlink(self) -> Proc:
        self.superlink = self._start(f"superlink-{len(self.procs)}", self.superlink_command(), cwd=self.tmp)

        def healthy():
            try:
                return httpx.get(f"https://127.0.0.1:{self.port}/health", verify=self.tls, timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, "SuperLink health", proc=self.superlink)
        wait_for(lambda: "Fleet QUIC API on" in self.superlink.text(), "QUIC listener", proc=self.superlink)
        return self.superlink

    def start_node(self, i: int) -> Proc:
        node = self._start(f"supernode{i}-{len(self.procs)}", self.supernode_command(i))
        self.nodes[i] = node
        wait_for(lambda: "SuperNode ID:" in node.text(), f"SuperNode {i} to join", proc=node)
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
