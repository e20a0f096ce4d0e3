"""End to end: real ``flwr run`` simulations of the FLQ app on a tiny random Llama.

These check the files the ServerApp writes (``flwr run`` exits 0 even when a run fails).
"""

import json

import numpy as np
import pytest

from flq.run_recorder import load_checkpoint

pytestmark = pytest.mark.e2e  # real `flwr run` simulations (SuperLink, SuperNodes, ClientApp processes)

TINY = {
    "max-seq-length": 32,
    "server-test-size": 150,
    "local-steps": 6,
    "batch-size": 8,
    "learning-rate": 0.01,
    "clients-per-round": 3,
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
}


@pytest.fixture(scope="module")
def foundation_run(flower_sim, tiny_llama_dir):
    overrides = {**TINY, "model": str(tiny_llama_dir), "num-server-rounds": 3, "lora-rank": 4}
    return flower_sim.run(overrides, num_supernodes=4, name="foundation")


def test_every_round_is_recorded_with_measured_bytes(foundation_run):
    rounds = foundation_run.rounds()
    assert [r["server_round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["num_sampled"] == 3 and r["num_accepted"] == 3
        assert r["score_name"] == "accuracy" and 0.0 <= r["score"] <= 1.0
        assert r["bytes_up"] == sum(c["bytes_up"] for c in r["clients"]) > 0
        assert r["bytes_down"] == sum(c["bytes_down"] for c in r["clients"]) > 0
        for c in r["clients"]:
            assert c["status"] == "ok" and c["rank"] == 4 and c["steps"] == 6
            assert c["compute_s"] > 0 and c["peak_mem_mb"] > 0
            assert c["partition_id"] in range(4)
    assert rounds[-1]["wall_s"] > rounds[0]["wall_s"]


def test_the_training_loss_goes_down(foundation_run):
    rounds = foundation_run.rounds()

    def mean_loss_before(r):
        return np.mean([c["loss_before"] for c in r["clients"]])

    # The loss each client sees on arrival falls as the global adapter learns.
    assert mean_loss_before(rounds[-1]) < mean_loss_before(rounds[0])
    assert rounds[-1]["eval_loss"] < rounds[0]["eval_loss"]


def test_fairness_is_measured_on_every_clients_own_test_split(foundation_run):
    last = foundation_run.rounds()[-1]
    assert sorted(e["partition_id"] for e in last["client_eval"]) == [0, 1, 2, 3]
    assert all(0.0 <= e["score"] <= 1.0 and e["num_examples"] > 0 for e in last["client_eval"])


def test_summary_checkpoint_and_peft_adapter_are_written(foundation_run):
    run_dir = foundation_run.run_dir
    summary = foundation_run.summary()
    assert summary["rounds"] == 3 and summary["final_score"] == foundation_run.rounds()[-1]["score"]
    state, meta = load_checkpoint(run_dir)
    assert meta["server_round"] == 3
    assert all(v.dtype == np.float32 for v in state.values())
    config = json.loads((run_dir / "adapter" / "rank4" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    base_config = json.loads((run_dir / "adapter" / "rank4" / "base_config.json").read_text())
    names = ["business", "entertainment", "politics", "sports", "tech"]  # bbc-news, the default data
    assert base_config["id2label"] == {str(i): name for i, name in enumerate(names)}
    card = (run_dir / "adapter" / "rank4" / "README.md").read_text()
    assert "- Clients: 4 (3 per round)" in card and "- Rounds: 3 of 3" in card and "Model Card for Model ID" not in card
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["lora-rank"] == 4 and "clock" in info


def test_a_finished_run_resumes_without_retraining_and_a_reused_name_is_refused(
    flower_sim, foundation_run, tiny_llama_dir
):
    overrides = {**TINY, "model": str(tiny_llama_dir), "num-server-rounds": 4, "lora-rank": 4}
    clash = flower_sim.run(overrides, num_supernodes=4, name="foundation")
    assert "already holds a run" in clash.log
    assert len(foundation_run.rounds()) == 3  # nothing overwritten
    resumed = flower_sim.run({**overrides, "resume": True}, num_supernodes=4, name="foundation")
    rounds = resumed.rounds()
    assert [r["server_round"] for r in rounds] == [1, 2, 3, 4]
    assert rounds[3]["clock_s"] > rounds[2]["clock_s"]


def test_a_missing_data_file_ends_the_run_with_one_clear_line(flower_sim, tiny_llama_dir, tmp_path):
    run = flower_sim.run(
        {**TINY, "model": str(tiny_llama_dir), "data": str(tmp_path / "nope.csv")}, num_supernodes=2, name="no-data"
    )
    assert run.log.count("FLQ cannot run: data source") == 1 and "not found" in run.log
    # Flower records the run as failed; the traceback it prints is the ServerApp's raise alone,
    # not the library frames where the error was found.
    assert flower_sim.last_run_status() == "finished:failed"
    assert "flq/task/" not in run.log and "During handling" not in run.log
    assert not (run.run_dir / "rounds.jsonl").exists()


def test_when_no_client_can_start_the_run_says_why(flower_sim, tiny_llama_dir, tmp_path):
    data = tmp_path / "small.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{i % 2}\n" for i in range(12)))
    overrides = {
        **TINY,
        "model": str(tiny_llama_dir),
        "data": str(data),
        "server-test-size": 4,
        "partitioner": "iid",
        "clients-per-round": 2,
    }
    run = flower_sim.run(overrides, num_supernodes=8, name="tiny-partitions")
    assert "FLQ cannot run: no client can take part" in run.log
    assert flower_sim.last_run_status() == "finished:failed"
    assert "too few to train and test" in run.log
