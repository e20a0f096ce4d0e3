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
import re
from pathlib import Path

import pytest

from harness.deployment import FLEET_OVER_HTTP, GUARD, Deployment
from harness.processes import Proc, wait_for

pytestmark = pytest.mark.e2e  # a real deployment: flq-superlink, flq-supernodes, `flwr run`

APP = Path(__file__).resolve().parent / "apps" / "quic_smoke"
TIERS = ["gpu-24g", "cpu-edge", "jetson-nano"]  # the smoke app only echoes them


class SmokeDeployment(Deployment):
    """The shared deployment, plus runs of the smoke app and the result file its ServerApp writes."""

    def flwr_run(self, **config) -> Proc:
        result = self.tmp / f"result-{self.runs + 1}.json"
        run = self.start_flwr_run(APP, {"result-file": str(result), **config})
        run.result_file = result  # type: ignore[attr-defined]
        return run

    def finish(self, run: Proc) -> dict:
        log = run.wait(GUARD)
        # `flwr run` exits 0 even when the run fails: the ServerApp's own record decides.
        assert run.result_file.is_file(), f"no result file; flwr run said:\n{log[-3000:]}"
        result = json.loads(run.result_file.read_text())
        assert result["status"] == "ok", result.get("error", log[-3000:])
        return result

    def run(self, **config) -> dict:
        return self.finish(self.flwr_run(**config))


def tiers_replied(round_record: dict) -> list[str]:
    return sorted(r["tier"] for r in round_record["replied"].values())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = SmokeDeployment(tmp_path_factory.mktemp("quic-deployment"), TIERS)
    try:
        yield dep.start()
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
    run = deployment.flwr_run(
        **{
            "num-server-rounds": 2,
            "round-timeout": 25.0,
            "marker-dir": str(markers),
            "slow-tier": TIERS[victim],
            "slow-round": 1,
            "slow-seconds": 120.0,
        }
    )
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
    ids_before = {
        tier: re.findall(r"SuperNode ID: (\d+)", node.text())[-1] for tier, node in zip(TIERS, deployment.nodes)
    }
    connects = [node.text().count("QUIC connected to") for node in deployment.nodes]

    deployment.superlink.stop()
    assert deployment.database.is_file()
    superlink = deployment.start_superlink()  # same port, same --database
    for node, count in zip(deployment.nodes, connects, strict=True):
        reconnected = lambda node=node, count=count: node.text().count("QUIC connected to") > count  # noqa: E731
        wait_for(reconnected, f"{node.name} to reconnect", proc=node)

    after = deployment.run(**{"num-server-rounds": 1, "round-timeout": 180.0, "quorum": len(TIERS)})
    ids_after = {r["tier"]: node_id for node_id, r in after["rounds"][0]["replied"].items()}
    assert ids_after == ids_before  # the same nodes, known from the database, not re-registered
    assert not FLEET_OVER_HTTP.findall(superlink.text())
    assert all(node.alive() for node in deployment.nodes)
