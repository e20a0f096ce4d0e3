"""The exported adapter loads with peft on its base, with label names, and carries a filled model card."""

import json

import pytest
import torch

from flq.config import RunConfig
from flq.metrics.model_card import CardFacts, model_card
from flq.metrics.records import ClientRoundRecord, RoundRecord
from flq.metrics.summary import summarize
from flq.task.export import BASE_CONFIG_FILE, CARD_FILE

LABELS = ["economy", "election", "football"]  # the keyword CSV's labels, sorted


def round_record(server_round: int, score: float, nodes=(11, 12)) -> RoundRecord:
    return RoundRecord(
        server_round=server_round,
        clock="virtual",
        clock_s=10.0 * server_round,
        round_s=10.0,
        wall_s=1.0 * server_round,
        deadline_s=None,
        policy="wait",
        score_name="accuracy",
        score=score,
        eval_loss=1.0 - score,
        train_loss=0.5,
        bytes_up=100,
        bytes_down=100,
        num_sampled=len(nodes),
        num_accepted=len(nodes),
        clients=[ClientRoundRecord(node_id=n, status="ok", partition_id=n - 11) for n in nodes],
        balanced_accuracy=score - 0.01,
        macro_f1=score - 0.02,
    )


@pytest.fixture(scope="module")
def exported(tiny_llama_dir, keyword_csv, tmp_path_factory):
    from flq.server_app import ServerEvaluator

    cfg = RunConfig(
        model=str(tiny_llama_dir),
        data=str(keyword_csv),
        server_test_size=60,
        max_seq_length=32,
        backbone_bits=32,  # as the user's reload below: outputs compare exactly
        lora_rank=4,
        num_server_rounds=3,
        clients_per_round=2,
        partitioner="dirichlet",
        dirichlet_alpha=0.5,
    )
    run_dir = tmp_path_factory.mktemp("runs") / "keywords-run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"nodes": [{"node_id": n} for n in (11, 12, 13)]}))
    records = [round_record(1, 0.5), round_record(2, 0.8), round_record(3, 0.9, nodes=(12, 13))]
    summary = summarize(records, cfg.target_score, True) | {"initial": {"score": 0.33, "eval_loss": 1.1}}
    evaluator = ServerEvaluator(cfg)
    state = evaluator.initial_adapter()
    head = next(k for k in state if "score" in k)
    state[head] = state[head] + 0.5  # a head unlike a fresh one: the loaded model must carry it
    folder = evaluator.export(state, run_dir / "adapter", evaluator.card(run_dir, records, summary))
    return evaluator, folder, run_dir


def test_the_adapter_lives_in_adapter_rank_r_and_names_its_base(exported, tiny_llama_dir):
    _, folder, run_dir = exported
    assert folder == run_dir / "adapter" / "rank4"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama_dir) and config["r"] == 4
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    # No config.json: beside adapter_config.json it would make transformers take the folder for a full model.
    assert not (folder / "config.json").exists()
    config = json.loads((folder / BASE_CONFIG_FILE).read_text())
    assert config["id2label"] == {"0": "economy", "1": "election", "2": "football"}
    assert config["label2id"] == {"economy": 0, "election": 1, "football": 2}
    assert config["pad_token_id"] == exported[0].model.processor.pad_token_id
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert not {"quantization_config", "dtype", "_name_or_path"} & set(config)  # how FLQ loaded it: not exported


def test_peft_loads_it_on_the_base_with_label_names_and_the_same_outputs(exported):
    from peft import PeftConfig, PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    evaluator, folder, _ = exported
    # What the model card says to do.
    base_id = PeftConfig.from_pretrained(folder).base_model_name_or_path
    config = AutoConfig.from_pretrained(folder / BASE_CONFIG_FILE)
    base = AutoModelForSequenceClassification.from_pretrained(base_id, config=config)
    model = PeftModel.from_pretrained(base, folder)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {name: i for i, name in enumerate(LABELS)}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["the economy grew", "a football game today"], padding=True, return_tensors="pt")
    model.eval()
    evaluator.model.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, evaluator.model.model(**batch).logits)
    assert evaluator.model.model.config.id2label == dict(enumerate(LABELS))  # the live model agrees


def test_the_model_card_is_filled_in_not_peft_s_template(exported, keyword_csv, tiny_llama_dir):
    _, folder, run_dir = exported
    card = (folder / CARD_FILE).read_text()
    assert (run_dir / "adapter" / CARD_FILE).read_text() == card  # over peft's template in adapter/
    assert "Model Card for Model ID" not in card and "[More Information Needed]" not in card
    assert card.startswith("---\n") and f"base_model: {json.dumps(str(tiny_llama_dir))}" in card
    assert "pipeline_tag: text-classification" in card and "library_name: peft" in card
    assert "# keywords-run: a federated LoRA text classifier" in card
    assert "- Task: `sequence-classification`, 3 classes: `economy`, `election`, `football`" in card
    assert f"- Data: `{keyword_csv}`, 600 examples (text column `text`, label column `label`, read as utf-8)" in card
    assert "the server kept 60 of them out" in card
    assert "- Clients: 3 (2 per round), 3 of them trained" in card
    assert "- Partitioner: `dirichlet` by label (alpha=0.5: non-IID)" in card
    assert "- Rounds: 3 of 3" in card
    assert "| initial (round 0) | 0.3300 |" in card and "| final (round 3) | 0.9000 |" in card
    assert "| final macro-F1 | 0.8800 |" in card
    assert "Target accuracy 0.85: reached at round 3 (" in card and "s on the virtual clock)." in card
    assert 'path = "adapter/rank4"' in card and "PeftModel.from_pretrained(base, path)" in card


def facts(**changes) -> CardFacts:
    base = {
        "run_name": "lm",
        "base_model": "org/model",
        "adapter_dir": "rank8",
        "config_file": BASE_CONFIG_FILE,
        "config": RunConfig(task="causal-lm", partitioner="iid", target_score=20.0, data="c.txt").to_dict(),
        "summary": summarize([], 20.0, False) | {"rounds": 2, "final_score": 25.5, "score_name": "perplexity"},
        "num_examples": 1000,
        "server_test_size": 300,
        "label_names": None,
        "num_clients": 6,
        "clients_trained": 5,
    }
    return CardFacts(**(base | changes))


def test_a_language_model_card_reports_perplexity_and_how_to_load_it():
    card = model_card(facts())
    assert "pipeline_tag: text-generation" in card and "a federated LoRA causal language model" in card
    assert "with its classification head" not in card and "classes" not in card
    assert "## Results (perplexity on the server's held-out set)" in card and "| final (round 2) | 25.5000 |" in card
    assert "Target perplexity 20: not reached." in card
    assert "- Partitioner: `iid`" in card and "AutoModelForCausalLM.from_pretrained(base_id, config=config)" in card


def test_long_label_lists_are_cut_in_the_card():
    card = model_card(facts(label_names=[f"c{i}" for i in range(30)], config=RunConfig().to_dict()))
    assert "30 classes: `c0`" in card and "`c19`, ... (30 in all)" in card and "`c20`" not in card


def test_an_image_classifier_card_loads_with_a_replaced_head():
    config = RunConfig(task="image-classification", data="digits").to_dict()
    card = model_card(facts(config=config, label_names=[str(i) for i in range(10)]))
    assert "pipeline_tag: image-classification" in card and "Sequence length" not in card
    load = "AutoModelForImageClassification.from_pretrained(base_id, config=config, ignore_mismatched_sizes=True)"
    assert load in card


# -- export-merged: the adapter merged into a full model folder -----------------------------------
def lora_model_with_trained_look(model_dir, task: str, bits: int, state=None):
    """A LoraModel on ``model_dir`` whose LoRA factors are all nonzero (a fresh B is zero: nothing to merge)."""
    from flq.task.lora import LoraModel, LoraSpec
    from flq.task.models import BackboneSpec

    torch.manual_seed(1)
    lm = LoraModel(BackboneSpec(str(model_dir), task, bits, num_labels=3, device="cpu"), LoraSpec(2.0, "auto"))
    lm.use_rank(4)
    if state is None:
        rng = torch.Generator().manual_seed(2)
        state = {k: (torch.randn(v.shape, generator=rng) * 0.2).numpy() for k, v in lm.adapter_state().items()}
    lm.load_adapter_state(state)
    return lm, state


def logits_of(model, tokenizer):
    batch = tokenizer(["the economy grew", "a football game today"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def test_a_merged_classifier_loads_without_peft_with_label_names_and_the_adapter_s_logits(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flq.task.export import export_merged

    lm, state = lora_model_with_trained_look(tiny_llama_dir, "sequence-classification", 32)
    expected = logits_of(lm.model, lm.processor)
    merged = export_merged(lm, tmp_path / "run" / "merged", LABELS)
    assert merged == tmp_path / "run" / "merged"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in merged.iterdir()}
    assert not (merged / "adapter_config.json").exists()  # a full model, not an adapter
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and "quantization_config" not in config
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {name: i for i, name in enumerate(LABELS)}
    tokenizer = AutoTokenizer.from_pretrained(merged)
    torch.testing.assert_close(logits_of(model, tokenizer), expected)
    # The run's own model is left as it was: merged on a copy, its adapter still live.
    torch.testing.assert_close(logits_of(lm.model, lm.processor), expected)
    assert all((lm.adapter_state()[k] == v).all() for k, v in state.items())


def test_a_4_bit_backbone_is_merged_into_the_un_quantized_base_saved_in_bfloat16(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from flq.task.export import export_merged

    lm4, state = lora_model_with_trained_look(tiny_llama_dir, "causal-lm", 4)
    merged = export_merged(lm4, tmp_path / "merged")
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.bfloat16 and not any("lora" in n for n, _ in model.named_parameters())
    # The reference: the same adapter on the base in float32 (what the merge adds to, rounded to bfloat16).
    lm32, _ = lora_model_with_trained_look(tiny_llama_dir, "causal-lm", 32, state)
    expected = logits_of(lm32.model, lm32.processor)
    got = logits_of(model, lm32.processor)
    torch.testing.assert_close(got, expected, atol=0.02, rtol=0)  # bfloat16 rounding only
    # Not merged into the 4-bit weights: those are much further from the base the adapter was meant for.
    assert (got - expected).abs().max() < (logits_of(lm4.model, lm4.processor) - expected).abs().max() / 3
    # The merge changed the weights: the base alone gives other logits.
    with lm32.model.disable_adapter():
        assert (logits_of(lm32.model, lm32.processor) - expected).abs().max() > 0.1
