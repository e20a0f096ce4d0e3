"""Image classification: the same strategy, codec and schedulers on a tiny random MobileViT and digits.

Data sources and their errors, LoRA placement, learning on digits, the adapter through the
update codec and the cross-rank aggregation rules, the jetson-nano tier's hints, and one real
``flwr run`` federation with mixed ranks.
"""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from flq.adapter import adapter_rank, is_lora_key, truncate_to_rank
from flq.client_app import LocalTraining, local_training
from flq.codec.flower_records import adapter_to_array_record, array_record_nbytes, array_record_to_adapter
from flq.config import RunConfig
from flq.sim.tiers import load_tiers
from flq.strategy.aggregation import AGGREGATION_RULES, aggregate
from flq.task.data import DataError
from flq.task.images import IMAGE_TASK, encode_images, load_image_data
from flq.task.lora import LoraModel, LoraSpec
from flq.task.model_cache import resolve_model
from flq.task.models import BackboneSpec, ModelTaskError, load_backbone
from flq.task.partition import DataSpec, client_split, load_source, server_and_pool_indices, server_test_data
from flq.task.train import evaluate, make_batches, train_steps
from harness.simulation import PROJECT_DIR
from harness.tiny_models import make_tiny_mobilevit

DIGITS = DataSpec("digits", IMAGE_TASK, server_test_size=300, partitioner="dirichlet", dirichlet_alpha=0.5)
ATTENTION_TARGETS = {
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
}
TRANSFORMER_LAYERS = 2 + 4 + 3  # MobileViT's three transformer blocks


@pytest.fixture(scope="module")
def mobilevit_dir(tmp_path_factory):
    return make_tiny_mobilevit(tmp_path_factory.mktemp("tiny-mobilevit"))


def make(model_dir, bits=32, rank=4, seed=0) -> LoraModel:
    torch.manual_seed(seed)
    lm = LoraModel(BackboneSpec(str(model_dir), IMAGE_TASK, bits, num_labels=10), LoraSpec(2.0, "auto"))
    lm.use_rank(rank)
    return lm


def lora_module_names(lm: LoraModel) -> list[str]:
    return sorted(n for n, m in lm.model.named_modules() if hasattr(m, "lora_A") and f"rank{lm.rank}" in m.lora_A)


def accuracy_and_loss(lm: LoraModel, data) -> tuple[float, float]:
    stats = evaluate(lm.model, IMAGE_TASK, data, lm.processor, 100, 0)
    return stats.score, stats.loss


# -- data ----------------------------------------------------------------------------------
def test_digits_are_rgb_images_that_the_models_processor_resizes(mobilevit_dir):
    data = load_image_data("digits")
    assert len(data) == 1797 and data.label_names == [str(i) for i in range(10)]
    assert data.images[0].shape == (8, 8, 3) and data.images[0].dtype == np.uint8
    assert max(int(img.max()) for img in data.images) == 255  # 16 -> 255
    assert sorted(set(data.labels)) == list(range(10))
    _, processor = load_backbone(BackboneSpec(str(mobilevit_dir), IMAGE_TASK, 32, num_labels=10))
    batch = encode_images(data, [0, 1, 2], processor)
    assert tuple(batch["pixel_values"].shape) == (3, 3, 32, 32)
    assert batch["labels"].tolist() == data.labels[:3]


def test_npz_sources_grayscale_floats_and_channels_first(tmp_path):
    gray = np.random.default_rng(0).random((6, 5, 7))  # floats in [0, 1]
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.array(["cat", "dog", "cat", "dog", "ant", "ant"]))
    data = load_image_data(str(tmp_path / "gray.npz"))
    assert data.label_names == ["ant", "cat", "dog"] and data.labels == [1, 2, 1, 2, 0, 0]
    assert data.images[0].shape == (5, 7, 3) and data.images[0].dtype == np.uint8
    np.testing.assert_array_equal(data.images[0][..., 0], np.rint(gray[0] * 255))

    chw = np.zeros((4, 3, 6, 6), dtype=np.uint8)
    chw[:, 0] = 200  # red channel
    np.savez(tmp_path / "chw.npz", images=chw, labels=np.array([0, 1, 1, 0]), label_names=np.array(["no", "yes"]))
    data = load_image_data(str(tmp_path / "chw.npz"))
    assert data.label_names == ["no", "yes"] and data.labels == [0, 1, 1, 0]
    assert data.images[0].shape == (6, 6, 3) and data.images[0][0, 0].tolist() == [200, 0, 0]


def test_folder_per_class_of_images_of_any_size(tmp_path):
    for name, color in (("circle", (255, 0, 0)), ("square", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for i, size in enumerate([(10, 12), (20, 8), (16, 16)]):
            Image.new("RGB", size, color).save(tmp_path / name / f"{i}.png")
        (tmp_path / name / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()  # a class without images gets no label
    data = load_image_data(str(tmp_path))
    assert data.label_names == ["circle", "square"] and data.labels == [0, 0, 0, 1, 1, 1]
    assert data.images[1].shape == (8, 20, 3) and data.images[3][0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((4, 8, 8))}, r"missing array\(s\) \['labels'\]"),
        ({"pixels": np.zeros((4, 8, 8)), "y": np.arange(4)}, r"missing array\(s\) \['images', 'labels'\]"),
        ({"images": np.zeros((4, 8)), "labels": np.arange(4)}, r"'images': expected shape"),
        ({"images": np.zeros((4, 8, 8)), "labels": np.arange(3)}, r"one label per image"),
        ({"images": np.full((4, 8, 8), 300), "labels": np.arange(4)}, r"pixel values must lie in 0\.\.255"),
        ({"images": np.zeros((4, 8, 8)), "labels": np.zeros(4, dtype=int)}, r"at least 2 distinct labels"),
        (
            {"images": np.array([np.zeros((2, 2)), np.zeros((3, 3))], dtype=object), "labels": np.arange(2)},
            r"not Python objects",
        ),
    ],
)
def test_bad_npz_gives_a_clear_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_image_data(str(path))


def test_bad_image_sources_give_clear_errors(tmp_path):
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "one.txt").write_text("hello")
    with pytest.raises(DataError, match="the class folders contain no images"):
        load_image_data(str(tmp_path / "texts"))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="expected one sub-folder per class"):
        load_image_data(str(tmp_path / "flat"))
    for name in ("a", "b"):
        (tmp_path / "broken" / name).mkdir(parents=True)
    (tmp_path / "broken" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png: not a readable image"):
        load_image_data(str(tmp_path / "broken"))
    with pytest.raises(DataError, match="'bbc-news' is text"):
        load_source(DataSpec("bbc-news", IMAGE_TASK))
    with pytest.raises(DataError, match="not found"):
        load_image_data(str(tmp_path / "missing.npz"))


def test_dirichlet_and_pathological_partitioning_as_for_text():
    test_idx, pool = server_and_pool_indices(DIGITS)
    data = load_source(DIGITS)
    assert len(test_idx) == 300 and set(test_idx).isdisjoint(pool)
    assert sorted(set(data.labels[i] for i in test_idx)) == list(range(10))  # stratified
    splits = [client_split(DIGITS, p, 3) for p in range(3)]
    assert sum(len(s.train) + len(s.test) for s in splits) == len(pool)
    pathological = DataSpec(
        "digits", IMAGE_TASK, server_test_size=300, partitioner="pathological", classes_per_client=2
    )
    for p in range(5):
        split = client_split(pathological, p, 5)
        assert len(set(split.train.labels) | set(split.test.labels)) <= 2


# -- models and LoRA ---------------------------------------------------------------------------
def test_lora_attaches_to_the_attention_and_projection_layers_and_the_head_trains(mobilevit_dir):
    lm = make(mobilevit_dir, rank=4)
    assert lm.targets == ["query", "key", "value", "attention.output.dense"] and lm.heads == ["classifier"]
    names = lora_module_names(lm)
    assert len(names) == 4 * TRANSFORMER_LAYERS
    assert {re.sub(r"^.*\.transformer\.layer\.\d+\.", "", n) for n in names} == ATTENTION_TARGETS
    state = lm.adapter_state()
    assert sorted(k for k in state if not is_lora_key(k)) == [
        "base_model.model.classifier.bias",
        "base_model.model.classifier.weight",
    ]
    assert adapter_rank(state) == 4 and state["base_model.model.classifier.weight"].shape == (10, 384)
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "classifier.modules_to_save" in n for n in trainable)
    assert not any(p.requires_grad for n, p in lm.model.named_parameters() if "convolution" in n or "intermediate" in n)


def test_a_text_model_is_refused_for_images_and_an_image_model_for_text(mobilevit_dir, tiny_bert_dir, tmp_path):
    with pytest.raises(ModelTaskError, match="'bert' model is not an image classifier"):
        load_backbone(BackboneSpec(str(tiny_bert_dir), IMAGE_TASK, 32, num_labels=10))
    with pytest.raises(ModelTaskError, match="'mobilevit' model is not a text classifier"):
        load_backbone(BackboneSpec(str(mobilevit_dir), "sequence-classification", 32, num_labels=10))
    bare = tmp_path / "no-processor"
    shutil.copytree(mobilevit_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(ModelTaskError, match="no usable image processor"):
        load_backbone(BackboneSpec(str(bare), IMAGE_TASK, 32, num_labels=10))


def test_the_offline_random_mobilevit_is_generated_once_and_seeded(tmp_path, monkeypatch, mobilevit_dir):
    monkeypatch.setenv("FLQ_CACHE_DIR", str(tmp_path))
    path = resolve_model("mobilevit-tiny-random")
    weights = tmp_path / "models" / "mobilevit-tiny-random-v1" / "model.safetensors"
    assert path == str(weights.parent) and (weights.parent / "preprocessor_config.json").is_file()
    built = weights.stat().st_mtime_ns
    assert resolve_model("mobilevit-tiny-random") == path and weights.stat().st_mtime_ns == built
    ours, tests = load_file(weights), load_file(mobilevit_dir / "model.safetensors")
    assert ours.keys() == tests.keys()
    assert all(np.array_equal(ours[k], tests[k]) for k in ours)  # same seed, same shape: same backbone


def test_training_on_digits_lowers_the_loss_and_raises_accuracy(mobilevit_dir):
    spec = DataSpec("digits", IMAGE_TASK, server_test_size=300, partitioner="iid")
    lm = make(mobilevit_dir, rank=4)
    test = server_test_data(spec)
    acc_before, loss_before = accuracy_and_loss(lm, test)
    batches = make_batches(IMAGE_TASK, client_split(spec, 0, 2).train, lm.processor, 16, 0, seed=0)
    stats = train_steps(lm.model, batches, 36, 3e-3)  # 36 full batches: the split has 599 images
    acc_after, loss_after = accuracy_and_loss(lm, test)
    assert stats.steps == 36 and stats.num_examples == 36 * 16
    assert stats.loss_after < 0.8 * stats.loss_before
    assert loss_after < loss_before and acc_after > acc_before + 0.2


def test_the_trained_head_is_exported_with_the_adapter(mobilevit_dir, tmp_path):
    from peft import PeftModel

    lm = make(mobilevit_dir, rank=4)
    head = lm.adapter_state()["base_model.model.classifier.weight"]
    batches = make_batches(IMAGE_TASK, client_split(DIGITS, 0, 3).train, lm.processor, 16, 0, seed=0)
    train_steps(lm.model, batches, 5, 3e-3)
    assert not np.allclose(lm.adapter_state()["base_model.model.classifier.weight"], head)
    lm.model.save_pretrained(tmp_path, selected_adapters=["rank4"])
    saved = load_file(tmp_path / "rank4" / "adapter_model.safetensors")
    assert any("classifier" in k for k in saved) and any("attention.output.dense.lora_A" in k for k in saved)
    base, processor = load_backbone(BackboneSpec(str(mobilevit_dir), IMAGE_TASK, 32, num_labels=10))
    reloaded = PeftModel.from_pretrained(base, tmp_path / "rank4")
    pixels = encode_images(load_source(DIGITS), range(8), processor)["pixel_values"]
    lm.model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, lm.model(pixel_values=pixels).logits)


# -- the federated pieces: codec and cross-rank aggregation ---------------------------------
@pytest.fixture(scope="module")
def one_round(mobilevit_dir):
    """One round by hand: a rank-8 global adapter, three clients at ranks 2, 4, 8 on their own splits."""
    lm = make(mobilevit_dir, rank=8, seed=1)
    initial = lm.adapter_state()
    states, weights = [], []
    for partition, rank in enumerate((2, 4, 8)):
        split = client_split(DIGITS, partition, 3)
        lm.use_rank(rank)
        lm.load_adapter_state(truncate_to_rank(initial, rank))
        torch.manual_seed(partition)
        stats = train_steps(
            lm.model, make_batches(IMAGE_TASK, split.train, lm.processor, 16, 0, seed=partition), 25, 3e-3
        )
        states.append(lm.adapter_state())
        weights.append(stats.num_examples)
    lm.use_rank(8)
    return lm, initial, states, weights, server_test_data(DIGITS)


def test_the_adapter_round_trips_through_the_update_codec(one_round):
    lm, _, states, _, test = one_round
    state = states[2]  # the rank-8 client's
    lossless = array_record_to_adapter(adapter_to_array_record(state, "fp32"))
    assert all(np.array_equal(lossless[k], v) for k, v in state.items())
    int8_record = adapter_to_array_record(state, "int8")
    decoded = array_record_to_adapter(int8_record)
    for key, value in state.items():
        assert decoded[key].shape == value.shape
        assert np.abs(decoded[key] - value).max() <= np.abs(value).max() / 254 + 1e-7  # half an int8 step
    assert array_record_nbytes(int8_record) < array_record_nbytes(adapter_to_array_record(state, "fp32")) / 3
    lm.load_adapter_state(state)
    reference = accuracy_and_loss(lm, test)
    lm.load_adapter_state(decoded)
    assert accuracy_and_loss(lm, test)[0] == pytest.approx(reference[0], abs=0.02)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_mixed_rank_adapters_aggregate_into_a_better_global_adapter(one_round, rule):
    lm, initial, states, weights, test = one_round
    merged = aggregate(rule, states, weights, initial, r_max=8)
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in initial.items()}
    head = "base_model.model.classifier.weight"
    expected = sum(w * s[head].astype(np.float64) for s, w in zip(states, weights)) / sum(weights)
    np.testing.assert_allclose(merged[head], expected, rtol=1e-5, atol=1e-6)
    if rule == "rank-wise":  # components 4..7: only the rank-8 client trained them
        key = next(k for k in merged if k.endswith("lora_A.weight"))
        np.testing.assert_allclose(merged[key][4:], states[2][key][4:], rtol=1e-6)
    lm.load_adapter_state(initial)
    _, loss_initial = accuracy_and_loss(lm, test)
    lm.load_adapter_state(merged)
    _, loss_merged = accuracy_and_loss(lm, test)
    assert loss_merged < loss_initial
    lm.use_rank(2)  # next round's rank-2 client loads the truncated global
    lm.load_adapter_state(truncate_to_rank(merged, 2))
    lm.use_rank(8)


# -- the jetson-nano tier ------------------------------------------------------------------------
def test_jetson_nano_sets_batch_size_rank_ceiling_and_mixed_precision():
    tiers = load_tiers()
    cfg = RunConfig(task=IMAGE_TASK, batch_size=8)
    cpu = torch.device("cpu")
    assert local_training(cfg, tiers["jetson-nano"], 32, cpu) == LocalTraining(16, torch.bfloat16)
    assert local_training(cfg, tiers["jetson-nano"], 16, cpu) == LocalTraining(16, None)  # already half
    assert local_training(cfg, tiers["reference"], 32, cpu) == LocalTraining(8, None)
    assert tiers["jetson-nano"].max_rank == 4  # enforced by the strategy: see the e2e test below


def test_a_scheduler_batch_cap_only_ever_lowers_the_batch():
    tiers = load_tiers()
    cfg = RunConfig(task=IMAGE_TASK, batch_size=8)
    cpu = torch.device("cpu")
    assert local_training(cfg, tiers["reference"], 32, cpu, batch_cap=3).batch_size == 3
    assert local_training(cfg, tiers["jetson-nano"], 32, cpu, batch_cap=12).batch_size == 12  # below its 16
    assert local_training(cfg, tiers["reference"], 32, cpu, batch_cap=20).batch_size == 8  # never above
    assert local_training(cfg, tiers["reference"], 32, cpu, batch_cap=0).batch_size == 8  # 0: none asked


@pytest.mark.parametrize("autocast, dtype", [(None, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_mixed_precision_trains_in_half_precision_with_float32_adapters(mobilevit_dir, autocast, dtype):
    lm = make(mobilevit_dir, rank=4)
    query = lm.model.get_submodule(lora_module_names(lm)[0])
    seen = []
    hook = query.base_layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    batches = make_batches(IMAGE_TASK, client_split(DIGITS, 0, 3).train, lm.processor, 16, 0, seed=0)
    stats = train_steps(lm.model, batches, 2, 3e-3, autocast=autocast)
    hook.remove()
    assert seen and set(seen) == {dtype} and np.isfinite(stats.loss_after)
    assert all(p.dtype == torch.float32 for p in lm.trainable_parameters())


# -- the documented overrides and a real federation ------------------------------------------
def test_the_documented_vision_overrides_are_a_valid_run_config():
    from flwr.common.config import parse_config_args

    doc = (PROJECT_DIR / "docs" / "vision.md").read_text()
    command = re.search(r"flwr run \. flq-local .*?-c '(.*?)'", doc, re.S)
    assert command, "docs/vision.md lost its flwr run command"
    cfg = RunConfig.from_flower(parse_config_args([command.group(1)]))
    assert cfg.task == IMAGE_TASK and cfg.model == "mobilevit-tiny-random" and cfg.data == "digits"


VISION = {
    "task": IMAGE_TASK,
    "data": "digits",
    "backbone-bits": 32,
    "lora-rank": 8,
    "num-server-rounds": 2,
    "scheduler": "table",
    "client-ranks": "list:8,2,4",
    "tiers": "list:jetson-nano,reference,reference",
    "clients-per-round": 3,
    "local-steps": 8,
    "batch-size": 8,
    "learning-rate": 0.003,
    "eval-batch-size": 100,
    "server-test-size": 300,
    "partitioner": "dirichlet",
    "dirichlet-alpha": 0.5,
    "update-codec": "int8",
}


@pytest.fixture(scope="module")
def vision_run(flower_sim, mobilevit_dir):  # a real `flwr run`: its tests are e2e
    return flower_sim.run({**VISION, "model": str(mobilevit_dir)}, num_supernodes=3, name="vision")


@pytest.mark.e2e
def test_a_vision_federation_reports_accuracy_every_round(vision_run):
    rounds = vision_run.rounds()
    assert [r["server_round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["score_name"] == "accuracy" and 0.0 <= r["score"] <= 1.0
        assert r["num_accepted"] == 3 and r["rejected"] == []
    summary = vision_run.summary()
    assert rounds[-1]["eval_loss"] < summary["initial"]["eval_loss"]
    assert sorted(e["partition_id"] for e in rounds[-1]["client_eval"]) == [0, 1, 2]
    config = json.loads((vision_run.run_dir / "adapter" / "rank8" / "adapter_config.json").read_text())
    assert config["r"] == 8 and "classifier" in config["modules_to_save"]


@pytest.mark.e2e
def test_mixed_ranks_and_the_jetsons_hints_hold_in_the_federation(vision_run):
    for r in vision_run.rounds():
        clients = {c["partition_id"]: c for c in r["clients"]}
        assert [clients[p]["tier"] for p in range(3)] == ["jetson-nano", "reference", "reference"]
        # The table asks rank 8 of the Jetson; its ceiling (max_rank 4) wins.
        assert [clients[p]["rank"] for p in range(3)] == [4, 2, 4]
        assert all(c["status"] == "ok" and c["steps"] == 8 for c in clients.values())
        # Batch 16 on the Jetson (its hint), the run's 8 elsewhere.
        assert [clients[p]["num_examples"] for p in range(3)] == [8 * 16, 8 * 8, 8 * 8]
        assert clients[2]["bytes_up"] > clients[1]["bytes_up"]  # rank 4 sends more than rank 2
