"""End to end: a real ``flwr run`` of instruction tuning on a tiny model, split by category (Dirichlet)."""

import json
import random

import pytest

from harness.tiny_models import PET_ANSWERS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pet_questions(tmp_path_factory):
    """JSONL rows {prompt, response, pet}: the pet is the category clients are split by."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("pets") / "pets.jsonl"
    rows = []
    for _ in range(240):
        verb = rng.choice(list(PET_ANSWERS))
        rows.append({"prompt": f"which pet {verb}", "response": PET_ANSWERS[verb], "pet": PET_ANSWERS[verb]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def instruction_run(flower_sim, chat_llama_dir, pet_questions):
    overrides = {
        "task": "instruction",
        "model": str(chat_llama_dir),
        "data": str(pet_questions),
        "label-column": "pet",
        "partitioner": "dirichlet",
        "dirichlet-alpha": 1.0,
        "max-seq-length": 32,
        "server-test-size": 40,
        "num-server-rounds": 3,
        "clients-per-round": 3,
        "local-steps": 25,
        "batch-size": 4,
        "learning-rate": 0.01,
        "lora-rank": 8,
        "generation-samples": 8,
        "max-new-tokens": 4,
        "target-score": 0.5,
    }
    return flower_sim.run(overrides, num_supernodes=3, name="instruction")


def test_rounds_are_scored_by_rouge_l_and_the_answer_loss_falls(instruction_run):
    rounds, summary = instruction_run.rounds(), instruction_run.summary()
    assert [r["server_round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["score_name"] == "rouge-l" and 0.0 <= r["score"] <= 1.0
        assert 0.0 <= r["exact_match"] <= 1.0 and r["response_perplexity"] > 1.0
        assert all(c["status"] == "ok" for c in r["clients"])
    assert summary["higher_is_better"] and summary["score_name"] == "rouge-l"
    # The loss on answer tokens of the held-out set falls from the initial adapter's.
    assert rounds[-1]["eval_loss"] < summary["initial"]["eval_loss"]
    assert summary["final_response_perplexity"] == rounds[-1]["response_perplexity"]


def test_every_evaluation_writes_sample_generations(instruction_run):
    lines = (instruction_run.run_dir / "generations.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert {s["server_round"] for s in samples} >= {1, 2, 3}
    for s in samples:
        assert s["reference"] in PET_ANSWERS.values() and s["prompt"].rstrip().endswith("Response :")
        assert isinstance(s["generated"], str) and 0.0 <= s["rouge_l"] <= 1.0


def test_clients_score_their_own_split_by_rouge_l_and_the_adapter_exports(instruction_run):
    last = instruction_run.rounds()[-1]
    assert len(last["client_eval"]) == 3 and all(0.0 <= e["score"] <= 1.0 for e in last["client_eval"])
    folder = instruction_run.run_dir / "adapter" / "rank8"
    assert (folder / "adapter_config.json").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert "pipeline_tag: text-generation" in (folder / "README.md").read_text()
