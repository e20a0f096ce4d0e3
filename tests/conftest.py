"""Shared fixtures: tiny random models on disk, and real ``flwr run`` simulations.

The simulation harness starts Flower's SuperLink in simulation mode itself (the same command
``flwr run . local`` spawns for ``:local:``), on free ports, with ``FLWR_HOME`` in a temp dir,
so every test owns the process it started and stops it by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from flq.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from flq.testing import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a process we started (and its process group), by its own pid."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


@dataclass
class SimulationRun:
    run_dir: Path
    log: str

    def rounds(self) -> list[dict]:
        path = self.run_dir / "rounds.jsonl"
        if not path.is_file():
            raise AssertionError(f"no rounds.jsonl in {self.run_dir}; flwr run output:\n{self.log[-4000:]}")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


class FlowerSimulation:
    """A simulation SuperLink owned by the test, and ``flwr run`` against it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = flower_env(self.home)
        self.superlink = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(self.port), "--database", ":flwr-in-memory:"],
            env=self.env, stdout=open(tmp / "superlink.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"SuperLink exited: {(self.tmp / 'superlink.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("SuperLink did not become ready")

    def run(self, overrides: dict, num_supernodes: int, name: str, app: Path = PROJECT,
            timeout: float = 900.0) -> SimulationRun:
        """``flwr run APP CONN --stream -c ...``; returns the run dir the ServerApp wrote."""
        out = self.tmp / "runs"
        config = {"output-dir": str(out), "run-name": name, **overrides}
        conn = self.home / "config.toml"
        conn.write_text(
            '[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        cmd = [str(BIN / "flwr"), "run", str(app), "test", "--stream",
               "--federation-config", f"num-supernodes={num_supernodes}",
               "-c", " ".join(f"{k}={_toml(v)}" for k, v in config.items())]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=app)
        return SimulationRun(out / name, proc.stdout + proc.stderr)

    def close(self) -> None:
        stop_process(self.superlink)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


@pytest.fixture(scope="module")
def flower_sim(tmp_path_factory):
    sim = FlowerSimulation(tmp_path_factory.mktemp("flwr-sim"))
    try:
        yield sim
    finally:
        sim.close()
