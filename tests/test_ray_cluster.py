"""Simulation beyond one machine: FLQ's simulation on a Ray cluster that something else started.

Flower's simulation engine calls ``ray.init()``, which joins the cluster named by ``RAY_ADDRESS``
instead of starting its own (docs/launch.md, "Simulation on a Ray cluster"). Here the cluster is a
real single-node Ray head started with ``ray start``, as on a cluster's head node.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness.processes import BIN, free_port
from harness.simulation import LocalSimulation

pytestmark = pytest.mark.e2e


def ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout)


def test_a_simulation_joins_the_ray_cluster_named_by_ray_address(tmp_path, tiny_llama_dir):
    port = free_port()
    # the cluster's session files, so this test finds its own; short: Ray's sockets live there (108-byte limit)
    temp = Path(tempfile.mkdtemp(prefix="flqray-", dir="/tmp"))
    head = ray(
        "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp}",
    )  # fmt: skip
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        with LocalSimulation(tmp_path / "work", RAY_ADDRESS=f"127.0.0.1:{port}") as sim:
            overrides = {
                "model": str(tiny_llama_dir), "num-server-rounds": 2, "local-steps": 2, "lora-rank": 4,
                "max-seq-length": 32, "server-test-size": 60, "clients-per-round": 2, "partitioner": "iid",
            }  # fmt: skip
            run = sim.run(overrides, num_supernodes=2, name="on-ray", num_cpus=1)
            assert sim.last_run_status() == "finished:completed", run.log[-3000:]
        rounds = run.rounds()
        assert [r["server_round"] for r in rounds] == [1, 2] and all(r["num_accepted"] == 2 for r in rounds)
        # the cluster ran it: its session (under our --temp-dir, not Ray's default) holds the client actors' logs
        workers = [p for p in temp.glob("session_*/logs/worker-*") if p.stat().st_size > 0]
        assert workers, f"no worker of the simulation ran on the cluster (session files under {temp})"
    finally:
        ray("stop", "--force")
        shutil.rmtree(temp, ignore_errors=True)
