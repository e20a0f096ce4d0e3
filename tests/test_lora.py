"""LoRA adapters: only trainable tensors travel, round trips are exact, every rank trains fully."""

import numpy as np
import pytest
import torch

from flq.adapter import adapter_rank, is_lora_key, truncate_to_rank
from flq.task.lora import LoraModel, LoraSpec, resolve_targets
from flq.task.models import BackboneSpec
from flq.task.train import make_batches, train_steps


def make(model_dir, bits=32, task="sequence-classification", targets="auto", scaling=2.0, num_labels=3):
    torch.manual_seed(0)
    return LoraModel(BackboneSpec(str(model_dir), task, bits, num_labels=num_labels), LoraSpec(scaling, targets))


def batch(lm, texts=("alpha beta gamma", "delta epsilon", "zeta")):
    return lm.tokenizer(list(texts), return_tensors="pt", padding=True)


def logits(lm, enc):
    lm.model.eval()
    with torch.no_grad():
        return lm.model(**enc).logits.clone()


def test_only_lora_factors_and_the_head_are_exchanged(tiny_llama_dir):
    lm = make(tiny_llama_dir)
    lm.use_rank(4)
    state = lm.adapter_state()
    heads = [k for k in state if not is_lora_key(k)]
    assert heads == ["base_model.model.score.weight"]
    assert adapter_rank(state) == 4
    assert all(v.dtype == np.float32 for v in state.values())
    backbone_params = sum(p.numel() for n, p in lm.model.named_parameters() if not p.requires_grad)
    assert sum(v.size for v in state.values()) < backbone_params / 10


def test_round_trip_into_a_fresh_model_gives_identical_outputs(tiny_llama_dir):
    a = make(tiny_llama_dir)
    a.use_rank(4)
    for p in a.trainable_parameters():  # make B non-zero so the adapter matters
        p.data.normal_()
    state = a.adapter_state()
    b = make(tiny_llama_dir)
    b.use_rank(4)
    enc = batch(a)
    assert not torch.allclose(logits(a, enc), logits(b, enc))
    b.load_adapter_state(state)
    torch.testing.assert_close(logits(a, enc), logits(b, enc))
    for key, value in b.adapter_state().items():
        np.testing.assert_array_equal(value, state[key])


@pytest.mark.parametrize("bits", [16, 4])
def test_round_trip_on_quantized_backbones(tiny_llama_dir, bits):
    a = make(tiny_llama_dir, bits=bits)
    a.use_rank(2)
    for p in a.trainable_parameters():
        p.data.normal_(std=0.1)
    state = a.adapter_state()
    b = make(tiny_llama_dir, bits=bits)
    b.use_rank(2)
    b.load_adapter_state(state)
    torch.testing.assert_close(logits(a, batch(a)), logits(b, batch(b)))


def test_same_scaling_at_every_rank_so_truncation_keeps_meaning(tiny_llama_dir):
    """A rank-8 adapter with components 4..7 zeroed == the same adapter truncated to rank 4."""
    lm = make(tiny_llama_dir)
    lm.use_rank(8)
    for p in lm.trainable_parameters():
        p.data.normal_(std=0.2)
    full = lm.adapter_state()
    zeroed = {k: v.copy() for k, v in full.items()}
    for k, v in zeroed.items():
        if k.endswith("lora_A.weight"):
            v[4:] = 0
    lm.load_adapter_state(zeroed)
    expected = logits(lm, batch(lm))
    lm.use_rank(4)
    lm.load_adapter_state(truncate_to_rank(full, 4))
    torch.testing.assert_close(logits(lm, batch(lm)), expected)


def test_after_a_low_rank_round_a_high_rank_round_trains_every_component(tiny_llama_dir):
    """FedRankLite left rank masks in place after a low-rank round; FLQ must not."""
    from flq.task.partition import DataSpec, client_split

    split = client_split(DataSpec("bbc-news", "sequence-classification", server_test_size=100), 0, 8)
    lm = make(tiny_llama_dir, num_labels=5)
    for rank in (2, 8):
        lm.use_rank(rank)
        before = lm.adapter_state()
        train_steps(lm.model, make_batches("sequence-classification", split.train, lm.tokenizer, 4, 24, 0), 3, 1e-2)
        after = lm.adapter_state()
        for key in before:
            if key.endswith("lora_B.weight"):
                changed_columns = np.abs(after[key] - before[key]).sum(axis=0) > 0
                assert changed_columns.all(), f"rank {rank}: untrained components in {key}"


def test_loading_a_wrong_adapter_is_refused(tiny_llama_dir):
    lm = make(tiny_llama_dir)
    lm.use_rank(4)
    state = lm.adapter_state()
    with pytest.raises(ValueError, match="shape"):
        lm.load_adapter_state(truncate_to_rank(state, 2))
    with pytest.raises(ValueError, match="missing"):
        lm.load_adapter_state({k: v for k, v in list(state.items())[1:]})


def test_targets(tiny_llama_dir, tiny_bert_dir):
    lm = make(tiny_llama_dir)
    assert resolve_targets(lm.base, "auto") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_targets(lm.base, ("q_proj",)) == ["q_proj"]
    with pytest.raises(ValueError, match="not found"):
        resolve_targets(lm.base, ("query",))
    bert = make(tiny_bert_dir)
    bert.use_rank(2)
    state = bert.adapter_state()
    assert any(k.endswith("value.lora_B.weight") for k in state) and any("classifier" in k for k in state)


def test_causal_lm_has_no_head_and_all_linear_targets(tiny_llama_dir):
    lm = make(tiny_llama_dir, task="causal-lm", targets="all-linear")
    lm.use_rank(2)
    state = lm.adapter_state()
    assert all(is_lora_key(k) for k in state)
    assert any("mlp.down_proj" in k for k in state)
