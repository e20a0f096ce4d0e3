"""A real deployment on loopback: `flq-superlink` + 3 `flq-supernode`s of different tiers, and
`flwr run` against it, with the Fleet API on QUIC. Then faults: a SuperNode killed mid-round,
that SuperNode restarted (it must resume with 0-RTT), the SuperLink restarted on its database.

The tests share one deployment and run in file order, each leaving three nodes connected.
Every process is started here in its own session and stopped by its own pid and group (plus
any process Flower spawned from it, found by parent pid), never by name. Timeouts are hang
guards, never assertions.
"""

from __future__ import annotations

import json
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
import pytest

from flq.transport.certs import make_certificates

BIN = Path(sys.executable).parent
APP = Path(__file__).resolve().parent / "apps" / "quic_smoke"
TIERS = ["gpu-24g", "cpu-8t", "jetson-4g"]
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
    def __init__(self, name: str, cmd: list[str], env: dict, log: Path) -> None:
        self.name, self.log = name, log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(cmd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.known: set[int] = set()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _signal_all(self, sig: int) -> None:
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


class Deployment:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.certs = make_certificates(tmp / "certs")
        self.home = tmp / "flwr-home"
        self.home.mkdir()
        self.port = free_tcp_udp_port()
        self.node_ports = [free_tcp_udp_port() for _ in TIERS]
        self.database = tmp / "state.db"
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # the flags below say it
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "quic-test"\n\n[superlink.quic-test]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs["ca_cert"]}"\n')
        self.tls = ssl.create_default_context(cafile=str(self.certs["ca_cert"]))
        self.procs: list[Proc] = []
        self.superlink: Proc | None = None
        self.nodes: list[Proc | None] = [None] * len(TIERS)
        self.runs = 0

    def _start(self, name: str, cmd: list[str]) -> Proc:
        proc = Proc(name, cmd, self.env, self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_superlink(self) -> Proc:
        c = self.certs
        self.superlink = self._start(f"superlink-{len(self.procs)}", [
            str(BIN / "flq-superlink"), "--ssl-certfile", str(c["server_cert"]), "--ssl-keyfile", str(c["server_key"]),
            "--ssl-ca-certfile", str(c["ca_cert"]), "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.database), "--disable-runtime-dependency-installation"])

        def healthy():
            try:
                return httpx.get(f"https://127.0.0.1:{self.port}/health", verify=self.tls, timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, "SuperLink health", proc=self.superlink)
        wait_for(lambda: "Fleet QUIC API on" in self.superlink.text(), "QUIC listener", proc=self.superlink)
        return self.superlink

    def start_node(self, i: int) -> Proc:
        node = self._start(f"supernode{i}-{len(self.procs)}", [
            str(BIN / "flq-supernode"), "--superlink", f"127.0.0.1:{self.port}",
            "--root-certificates", str(self.certs["ca_cert"]), "--port", str(self.node_ports[i]),
            "--node-config", f'partition-id={i} num-partitions={len(TIERS)} tier="{TIERS[i]}"'])
        self.nodes[i] = node
        wait_for(lambda: "SuperNode ID:" in node.text(), f"SuperNode {i} to join", proc=node)
        return node

    def flwr_run(self, **config) -> subprocess.Popen:
        self.runs += 1
        result = self.tmp / f"result-{self.runs}.json"
        config = {"result-file": str(result), **config}
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        log = open(self.tmp / f"flwr-run-{self.runs}.log", "wb")
        proc = subprocess.Popen([str(BIN / "flwr"), "run", str(APP), "quic-test", "--stream", "-c", overrides],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=APP)
        proc.result_file, proc.log_file = result, log  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen) -> dict:
        try:
            proc.wait(GUARD)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
            proc.log_file.close()
        log = Path(proc.log_file.name).read_text(errors="replace")
        # `flwr run` exits 0 even when the run fails: the ServerApp's own record decides.
        assert proc.result_file.is_file(), f"no result file; flwr run said:\n{log[-3000:]}"
        result = json.loads(proc.result_file.read_text())
        assert result["status"] == "ok", result.get("error", log[-3000:])
        return result

    def run(self, **config) -> dict:
        return self.finish(self.flwr_run(**config))

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def tiers_replied(round_record: dict) -> list[str]:
    return sorted(r["tier"] for r in round_record["replied"].values())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("quic-deployment"))
    try:
        dep.start_superlink()
        for i in range(len(TIERS)):
            dep.start_node(i)
        yield dep
    finally:
        dep.close()


def test_federated_job_runs_over_quic(deployment):
    result = deployment.run(**{"num-server-rounds": 2, "round-timeout": 180.0})
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for record in result["rounds"]:
        assert tiers_replied(record) == sorted(TIERS) and record["missed"] == []
    assert result["rounds"][-1]["w_mean"] == pytest.approx(2.0, abs=0.05)  # two FedAvg steps of +1

    log = deployment.superlink.text()
    assert "POST /v1/control/start-run HTTP/1.1" in log  # the HTTP access log is on ...
    assert not FLEET_OVER_HTTP.findall(log)  # ... and no Fleet request went over HTTP
    assert log.count("QUIC connection from") >= len(TIERS)  # every node came over QUIC
    for node in deployment.nodes:
        assert "QUIC connected to" in node.text()


def test_supernode_killed_mid_round(deployment):
    markers = deployment.tmp / "markers-kill"
    markers.mkdir()
    victim = 2
    run = deployment.flwr_run(**{"num-server-rounds": 2, "round-timeout": 25.0, "marker-dir": str(markers),
                                 "slow-tier": TIERS[victim], "slow-round": 1, "slow-seconds": 120.0})
    # Kill the node (and its ClientApp) once it is inside round 1's training.
    wait_for(lambda: (markers / f"started-r1-p{victim}").exists(), "the victim to start training", timeout=GUARD)
    deployment.nodes[victim].kill()
    result = deployment.finish(run)

    first, second = result["rounds"]
    assert tiers_replied(first) == sorted(t for i, t in enumerate(TIERS) if i != victim)
    assert len(first["missed"]) == 1  # the deadline closed the round without the dead node
    assert tiers_replied(second) == tiers_replied(first) and second["missed"] == []
    assert result["rounds"][-1]["w_mean"] == pytest.approx(2.0, abs=0.05)


def test_restarted_supernode_rejoins_with_0rtt(deployment):
    victim = 2
    node = deployment.start_node(victim)
    # Its session ticket survived the crash on disk: the reconnect resumed TLS and sent 0-RTT data.
    assert "QUIC connected to" in node.text()
    assert "(resumed=True, 0-RTT accepted)" in node.text()
    assert "(resumed=True, 0-RTT accepted)" in deployment.superlink.text()
    ticket_files = list((deployment.home / "quic").glob(f"session-*-node{deployment.node_ports[victim]}.json"))
    assert len(ticket_files) == 1

    # The dead node's old ID may still look online for a while: end the round on 3 replies.
    result = deployment.run(**{"num-server-rounds": 1, "round-timeout": 180.0, "quorum": len(TIERS)})
    assert tiers_replied(result["rounds"][0]) == sorted(TIERS)


def test_superlink_restart_keeps_state_and_nodes_reconnect(deployment):
    ids_before = {tier: re.findall(r"SuperNode ID: (\d+)", node.text())[-1]
                  for tier, node in zip(TIERS, deployment.nodes)}
    connects = [node.text().count("QUIC connected to") for node in deployment.nodes]

    deployment.superlink.stop()
    assert deployment.database.is_file()
    superlink = deployment.start_superlink()  # same port, same --database
    for node, count in zip(deployment.nodes, connects):
        wait_for(lambda: node.text().count("QUIC connected to") > count, f"{node.name} to reconnect", proc=node)

    after = deployment.run(**{"num-server-rounds": 1, "round-timeout": 180.0, "quorum": len(TIERS)})
    ids_after = {r["tier"]: node_id for node_id, r in after["rounds"][0]["replied"].items()}
    assert ids_after == ids_before  # the same nodes, known from the database, not re-registered
    assert not FLEET_OVER_HTTP.findall(superlink.text())
    assert all(node.alive() for node in deployment.nodes)
