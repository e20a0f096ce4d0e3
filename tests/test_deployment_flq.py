"""The FLQ app itself on a real deployment on loopback: `flq-superlink`, three `flq-supernode`s
(Fleet API over QUIC), each with its tier in `--node-config`, and `flwr run <project> flq-deploy`
with a tiny random Llama: the commands of docs/deployment.md, "Running FLQ itself".

Checked on the files the ServerApp writes (`flwr run` exits 0 even when a run fails): the clock
is the real one, every node's tier is the one its node config gave, a CPU tier trains with its
own number of torch threads, and under `policy=drop` a node that has not replied by the
deadline (the Grid's timeout) is recorded late while the round completes with the others.

The tests share one deployment; the drop test runs last (its straggler is still training when
the run ends, and the fixture's teardown stops it). Processes are started and stopped by the
harness (harness/deployment.py), by their own pids; timeouts are hang guards only.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from flq.federations import load_federations
from flq.sim.clock import real_clock_description
from flq.sim.tiers import load_tiers
from harness.deployment import FLEET_OVER_HTTP, Deployment, node_config
from harness.simulation import PROJECT_DIR, SimulationRun
from tests.test_e2e_simulation import TINY

pytestmark = pytest.mark.e2e  # a real deployment: flq-superlink, flq-supernodes, `flwr run`

TIERS = ["gpu-24g", "gpu-32g", "cpu-edge"]  # node i: partition-id=i, tier=TIERS[i]
CONNECTION = "flq-deploy"  # the connection name of federations.toml and docs/deployment.md
NODE_THREADS = 1  # the nodes' OMP_NUM_THREADS: torch's thread count where a tier sets none
# Hang guard for one `flwr run`. In a deployment every message to a node starts a ClientApp
# process that imports torch, transformers and flwr-datasets and loads the model (~10-15 CPU
# seconds each here), so a run of a few tiny rounds takes minutes on a loaded 2-core machine.
RUN_GUARD = 600.0

# The drop run's straggler: the cpu-edge node, its profile replaced (tier-file) by a single-thread
# CPU that trains on whole-partition batches (hundreds of examples) of 128 tokens, where the
# other nodes train on batches of 8: each of its steps is tens of times theirs. The deadline
# is 1.5 x the slowest reply of the first run (this machine's speed, measured: mostly starting
# the ClientApp process and loading model and data), so the two GPU tiers, which do little more
# work than then, make it, and the straggler's STRAGGLER_STEPS big steps take it far past it.
STRAGGLER_TIER = """
[tiers.cpu-edge]
description = "a slow single-thread CPU training on whole-partition batches (the test's straggler)"
compute_factor = 4.0
threads = 1
batch_size = 4096
uplink_mbps = 5.0
downlink_mbps = 25.0
rtt_ms = 60.0
"""
STRAGGLER_STEPS = 30


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(
        tmp_path_factory.mktemp("flq-deployment"),
        TIERS,
        connection=CONNECTION,
        env={"OMP_NUM_THREADS": str(NODE_THREADS)},
    )
    try:
        yield dep.start()
    finally:
        dep.close()


def run_flq(deployment: Deployment, model_dir: Path, name: str, **overrides) -> SimulationRun:
    """`flwr run <project> flq-deploy` with the tiny model; the run's own files, once it ends."""
    out = deployment.tmp / "runs"
    config = {
        **TINY,
        "model": str(model_dir),
        "lora-rank": 4,
        "clients-per-round": len(TIERS),
        "output-dir": str(out),
        "run-name": name,
        **overrides,
    }
    log = deployment.start_flwr_run(PROJECT_DIR, config).wait(RUN_GUARD)
    run = SimulationRun(out / name, log)
    assert (run.run_dir / "summary.json").is_file(), (
        f"the run wrote no summary; flwr run said:\n{log[-3000:]}\nSuperLink:\n{deployment.superlink.text()[-3000:]}"
    )
    return run


@pytest.fixture(scope="module")
def wait_run(deployment, tiny_llama_dir):
    return run_flq(deployment, tiny_llama_dir, "wait", **{"num-server-rounds": 2, "local-steps": 3})


def by_partition(clients: list[dict]) -> dict[int, dict]:
    return {c["partition_id"]: c for c in clients}


def test_flq_runs_on_a_deployment_on_the_real_clock_with_every_nodes_tier(deployment, wait_run):
    rounds = wait_run.rounds()
    assert [r["server_round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["clock"] == "real" and r["policy"] == "wait" and r["deadline_s"] is None
        assert r["num_sampled"] == r["num_accepted"] == len(TIERS)
        assert r["score_name"] == "accuracy" and 0.0 <= r["score"] <= 1.0 and math.isfinite(r["eval_loss"])
        clients = by_partition(r["clients"])
        assert {p: c["tier"] for p, c in clients.items()} == dict(enumerate(TIERS))
        for c in clients.values():
            assert c["status"] == "ok" and c["on_time"] and c["steps"] == 3 and c["rank"] == 4
            assert c["bytes_up"] > 0 and c["bytes_down"] > 0
            # Real clock: compute is what the node measured, the round its reply's arrival.
            assert c["compute_s"] == c["measured_compute_s"] > 0
            assert c["round_s"] >= c["compute_s"]
    # The final adapter was evaluated on every node's own test split.
    assert {p: e["tier"] for p, e in by_partition(rounds[-1]["client_eval"]).items()} == dict(enumerate(TIERS))

    summary = wait_run.summary()
    assert summary["clock"] == "real" and summary["rounds"] == 2
    assert summary["final_score"] == rounds[-1]["score"]
    info = json.loads((wait_run.run_dir / "run.json").read_text())
    assert info["clock"] == real_clock_description()
    assert sorted(n["tier"] for n in info["nodes"]) == sorted(TIERS)
    assert not any(n["simulated"] for n in info["nodes"])

    # FLQ's Fleet traffic (its adapters, both ways) went over QUIC, none over HTTP.
    superlink = deployment.superlink.text()
    assert "POST /v1/control/start-run HTTP/1.1" in superlink
    assert not FLEET_OVER_HTTP.findall(superlink)


def test_a_cpu_tier_trains_with_its_own_torch_threads(wait_run):
    tiers = load_tiers()
    assert tiers["cpu-edge"].threads not in (None, NODE_THREADS)  # else this test could not fail
    for r in wait_run.rounds():
        for c in r["clients"]:
            assert c["threads"] == (tiers[c["tier"]].threads or NODE_THREADS), c


def test_a_node_past_the_deadline_is_dropped_and_the_round_goes_on(deployment, tiny_llama_dir, wait_run):
    tier_file = deployment.tmp / "straggler-tiers.toml"
    tier_file.write_text(STRAGGLER_TIER)
    deadline = float(math.ceil(1.5 * max(c["round_s"] for r in wait_run.rounds() for c in r["clients"])))
    run = run_flq(
        deployment,
        tiny_llama_dir,
        "drop",
        **{
            "num-server-rounds": 1,
            "policy": "drop",
            "deadline-s": deadline,
            "tier-file": str(tier_file),
            "max-seq-length": 128,
            "local-steps": STRAGGLER_STEPS,
        },
    )
    (r,) = run.rounds()
    assert r["clock"] == "real" and r["policy"] == "drop" and r["deadline_s"] == deadline
    clients = by_partition(r["clients"])
    straggler = TIERS.index("cpu-edge")
    # The Grid stopped waiting at the deadline: the straggler is late, with nothing measured.
    late = clients.pop(straggler)
    assert late["tier"] == "cpu-edge" and late["status"] == "late" and not late["on_time"], late
    assert late["reason"] == f"no reply by the deadline ({deadline:.1f}s)"
    assert late["bytes_up"] == 0 and late["steps"] == 0
    # The round completed with the other two, on time, and the global adapter was scored.
    assert {p: (c["tier"], c["status"], c["on_time"], c["steps"]) for p, c in clients.items()} == {
        p: (TIERS[p], "ok", True, STRAGGLER_STEPS) for p in clients
    }, r["clients"]
    assert r["num_sampled"] == len(TIERS) and r["num_accepted"] == len(TIERS) - 1
    assert r["round_s"] == deadline  # the round ended at the deadline, not at the straggler's reply
    assert r["score"] is not None and r["train_loss"] is not None
    summary = run.summary()
    assert summary["dropped_per_tier"] == {"cpu-edge": 1, "gpu-24g": 0, "gpu-32g": 0}
    assert summary["within_deadline_share"] == 0.0


def test_the_documented_commands_are_the_ones_tested_and_match_flq_deploy(tmp_path):
    """docs/deployment.md's "Running FLQ itself" block, federations.toml's flq-deploy and this test agree."""
    docs = (PROJECT_DIR / "docs" / "deployment.md").read_text()
    section = docs.split("## 5. Running FLQ itself on a deployment", 1)[1].split("\n## ", 1)[0]
    commands = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    superlink = next(line for line in commands.splitlines() if line.startswith("flq-superlink"))
    supernodes = [line for line in commands.splitlines() if line.startswith("flq-supernode")]
    connection = load_federations(PROJECT_DIR / "federations.toml")[CONNECTION]

    # `flwr run` dials the Control API (TCP) at the SuperLink's --host:--port ...
    host = re.search(r"--host (\S+)", superlink)[1]
    port = re.search(r"--port (\d+)", superlink)[1]
    assert connection["address"] == f"{host}:{port}"
    assert Path(connection["root-certificates"]) == PROJECT_DIR / re.search(r"--ssl-ca-certfile (\S+)", superlink)[1]
    assert f"flwr run . {CONNECTION}" in commands
    # ... and the SuperNodes its Fleet API (QUIC, UDP) at the same address, with this test's tiers.
    assert [re.search(r"--superlink (\S+)", line)[1] for line in supernodes] == [connection["address"]] * len(TIERS)
    assert [re.search(r"--node-config '([^']*)'", line)[1] for line in supernodes] == [
        node_config(i, len(TIERS), tier) for i, tier in enumerate(TIERS)
    ]
    assert len({re.search(r"--port (\d+)", line)[1] for line in supernodes}) == len(TIERS)
    # The processes this module starts take the documented flags (only ports and paths differ).
    tested = Deployment(tmp_path, TIERS, connection=CONNECTION)  # not started: only its commands
    assert flags(superlink) == flags(" ".join(tested.superlink_command()))
    assert [flags(line) for line in supernodes] == [flags(" ".join(tested.supernode_command(i))) for i in range(3)]


def flags(command: str) -> list[str]:
    return sorted(re.findall(r"(?:^|\s)(--[a-z][a-z-]*)", command))
