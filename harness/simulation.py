"""Run FLQ simulations programmatically: a SuperLink of our own, and real ``flwr run``.

Benchmarks and tests need many runs with different configs. ``LocalSimulation`` starts
Flower's SuperLink in simulation mode (the command ``flwr run . local`` spawns for
``:local:``) on a free port with its own ``FLWR_HOME``, so the caller owns that process and
stops it by its pid, and ``run`` calls the real ``flwr run`` CLI against it.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.processes import BIN, Proc, flower_env, free_port

PROJECT_DIR = Path(__file__).resolve().parents[1]  # the FLQ project: its pyproject.toml is the Flower app


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


def _healthy(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        return True
    except OSError:
        return False


class LocalSimulation:
    """A simulation SuperLink owned by the caller, and ``flwr run`` against it."""

    def __init__(self, workdir: Path, ready_timeout: float = 120.0, **env: str) -> None:
        """``env``: extra environment for the SuperLink and ``flwr run`` (e.g. ``RAY_ADDRESS``)."""
        self.workdir = Path(workdir)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = flower_env(self.home, **env)
        self.superlink = Proc(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                ":flwr-in-memory:",
            ],
            self.env,
            self.workdir / "superlink.log",
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "sim"\n\n[superlink.sim]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        try:
            self.superlink.wait_until(lambda: _healthy(self.port), "SuperLink health", ready_timeout)
        except BaseException:
            self.close()
            raise

    def run(
        self,
        overrides: dict,
        num_supernodes: int,
        name: str,
        out_dir: Path | None = None,
        app: Path = PROJECT_DIR,
        num_cpus: int = 2,
        timeout: float = 3600.0,
    ) -> SimulationRun:
        """``flwr run APP sim --stream`` with these run-config overrides; returns its run dir."""
        out = Path(out_dir or self.workdir / "runs")
        config = {"output-dir": str(out), "run-name": name, **overrides}
        federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={num_cpus}"
        cmd = [
            str(BIN / "flwr"),
            "run",
            str(app),
            "sim",
            "--stream",
            "--federation-config",
            federation,
            "-c",
            override_string(config),
        ]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=app)
        return SimulationRun(out / name, proc.stdout + proc.stderr)

    def last_run_status(self) -> str:
        """Flower's status of the newest run on this SuperLink, e.g. ``finished:completed``."""
        cmd = [str(BIN / "flwr"), "ls", "sim", "--format", "json"]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        runs = json.loads(proc.stdout)["runs"]
        return max(runs, key=lambda r: r["pending-at"])["status"]

    def close(self) -> None:
        self.superlink.stop()

    def __enter__(self) -> LocalSimulation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
