"""Run FLQ simulations programmatically: a SuperLink of our own, and real ``flwr run``.

Benchmarks and tests need many runs with different configs. ``LocalSimulation`` starts
Flower's SuperLink in simulation mode (the command ``flwr run . local`` spawns for
``:local:``) on a free port with its own ``FLWR_HOME``, so the caller owns that process and
stops it by its pid, and ``run`` calls the real ``flwr run`` CLI against it.
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

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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
    """Stop a process we started in its own session (and everything in it), by its pid."""
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


def to_toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def override_string(config: dict) -> str:
    """A run-config dict as the value of ``flwr run -c``."""
    return " ".join(f"{k}={to_toml(v)}" for k, v in config.items())


@dataclass
class SimulationRun:
    run_dir: Path
    log: str

    def rounds(self) -> list[dict]:
        path = self.run_dir / "rounds.jsonl"
        if not path.is_file():
            raise RuntimeError(f"no rounds.jsonl in {self.run_dir}; flwr run output:\n{self.log[-4000:]}")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def summary(self) -> dict:
        path = self.run_dir / "summary.json"
        if not path.is_file():
            raise RuntimeError(f"no summary.json in {self.run_dir}; flwr run output:\n{self.log[-4000:]}")
        return json.loads(path.read_text())


class LocalSimulation:
    """A simulation SuperLink owned by the caller, and ``flwr run`` against it."""

    def __init__(self, workdir: Path, ready_timeout: float = 120.0) -> None:
        self.workdir = Path(workdir)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = flower_env(self.home)
        self._log = open(self.workdir / "superlink.log", "wb")
        self.superlink = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(self.port), "--database", ":flwr-in-memory:"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "sim"\n\n[superlink.sim]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"SuperLink exited: {(self.workdir / 'superlink.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("SuperLink did not become ready")

    def run(self, overrides: dict, num_supernodes: int, name: str, out_dir: Path | None = None,
            app: Path = PROJECT_DIR, num_cpus: int = 2, timeout: float = 3600.0) -> SimulationRun:
        """``flwr run APP sim --stream`` with these run-config overrides; returns its run dir."""
        out = Path(out_dir or self.workdir / "runs")
        config = {"output-dir": str(out), "run-name": name, **overrides}
        federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus}"
        cmd = [str(BIN / "flwr"), "run", str(app), "sim", "--stream",
               "--federation-config", federation, "-c", override_string(config)]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=app)
        return SimulationRun(out / name, proc.stdout + proc.stderr)

    def close(self) -> None:
        stop_process(self.superlink)
        self._log.close()

    def __enter__(self) -> LocalSimulation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
