"""Causal-LM blocks follow the tokenizer's BOS/EOS conventions (flq.task.lm_blocks)."""

import math

import pytest
import torch

from flq.task.data import TextData
from flq.task.lm_blocks import IGNORE_INDEX, adds_bos, lm_blocks
from harness.tiny_models import make_tiny_gemma3, make_tiny_llama, make_word_tokenizer

WORDS = "the cat sat on a mat dog ran to park in rain sun".split()
DOCS = [
    "the cat sat on a mat",
    "a dog ran to the park in the rain and the sun",  # "and" is <unk>: still one token
    "sun",
    "the cat ran to a dog on the mat in the park on a sun",
]


@pytest.fixture(params=[True, False], ids=["bos-tokenizer", "no-bos-tokenizer"])
def tokenizer(request):
    return make_word_tokenizer(WORDS, adds_bos=request.param)


def doc_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_convention_is_read_from_the_tokenizer(tokenizer):
    ids = tokenizer("the cat")["input_ids"]
    assert adds_bos(tokenizer) == (ids[0] == tokenizer.bos_token_id)


@pytest.mark.parametrize("block_len", [4, 6, 8, 64])
def test_with_bos_every_block_and_document_starts_with_bos_and_every_document_ends_with_eos(block_len):
    tok = make_word_tokenizer(WORDS, adds_bos=True)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    blocks = lm_blocks(DOCS, tok, block_len)
    assert blocks.input_ids.shape[1] == block_len
    assert (blocks.input_ids[:, 0] == bos).all()  # every block begins at a boundary, behind BOS
    # Reading the blocks back (BOS dropped, padding dropped) gives each document then EOS, in order.
    stream = []
    for ids, mask in zip(blocks.input_ids.tolist(), blocks.attention_mask.tolist(), strict=True):
        real = [t for t, m in zip(ids, mask, strict=True) if m]
        assert all(m == 0 for m in mask[len(real) :])  # padding only at the end
        assert all(t == pad for t, m in zip(ids, mask, strict=True) if not m)
        stream.extend(t for t in real if t != bos)
    expected = [t for text in DOCS for t in [*doc_ids(tok, text), eos]]
    assert stream == expected
    # Every document's first token follows a BOS (no document starts mid-block without one).
    for b, ids in enumerate(blocks.input_ids.tolist()):
        for i in range(1, block_len):
            if ids[i - 1] == eos and blocks.attention_mask[b, i]:
                assert ids[i] == bos
    # No piece is an EOS alone behind BOS (an empty document).
    for ids in blocks.input_ids.tolist():
        for i in range(block_len - 1):
            assert not (ids[i] == bos and ids[i + 1] == eos)


def test_with_bos_labels_skip_bos_and_padding_and_score_every_other_token():
    tok = make_word_tokenizer(WORDS, adds_bos=True)
    blocks = lm_blocks(DOCS, tok, 8)
    ids, labels, mask = blocks.input_ids, blocks.labels, blocks.attention_mask
    ignored = labels == IGNORE_INDEX
    assert torch.equal(ignored, (ids == tok.bos_token_id) | (mask == 0))
    assert torch.equal(labels[~ignored], ids[~ignored])
    assert blocks.scored_tokens == sum(len(doc_ids(tok, d)) + 1 for d in DOCS)  # every token and EOS


def test_with_bos_short_documents_share_a_block():
    tok = make_word_tokenizer(WORDS, adds_bos=True)
    blocks = lm_blocks(["the cat", "a dog", "sun"], tok, 16)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    ids = doc_ids(tok, "the cat") + [eos]
    assert len(blocks) == 1
    assert blocks.input_ids[0, :4].tolist() == [bos, *ids]
    assert int((blocks.input_ids[0] == bos).sum()) == 3 and int(blocks.attention_mask.sum()) == 3 + 2 + 2 + 1 + 3


def test_without_bos_documents_are_one_eos_separated_stream_cut_into_full_blocks():
    tok = make_word_tokenizer(WORDS, adds_bos=False)
    eos = tok.eos_token_id
    stream = [t for text in DOCS for t in [*doc_ids(tok, text), eos]]
    blocks = lm_blocks(DOCS, tok, 8)
    n = len(stream) // 8
    assert torch.equal(blocks.input_ids, torch.tensor(stream[: n * 8]).view(n, 8))
    assert torch.equal(blocks.labels, blocks.input_ids) and bool(blocks.attention_mask.all())
    assert not (blocks.input_ids == tok.bos_token_id).any()


def test_without_bos_too_little_text_gives_one_padded_block():
    tok = make_word_tokenizer(WORDS, adds_bos=False)
    blocks = lm_blocks(["the cat"], tok, 8)
    assert len(blocks) == 1
    assert blocks.attention_mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (blocks.labels[0, 3:] == IGNORE_INDEX).all() and blocks.scored_tokens == 2


def test_shipped_tokenizers_conventions():
    from transformers import AutoTokenizer

    from flq.task.model_cache import resolve_model

    for name in ("smollm2-135m", "minilm-l6"):  # SmolLM2 (GPT-2 style) and BERT add no BOS
        assert not adds_bos(AutoTokenizer.from_pretrained(resolve_model(name)))


# -- with a model: evaluation measures what the model sees in use ---------------------------
@pytest.fixture(scope="module", params=["llama", "gemma3"])
def bos_llama(tmp_path_factory, request):
    """A tiny BOS-tokenizer causal LM: Llama's architecture, and Gemma 3's (whose models depend on BOS)."""
    from flq.task.lora import LoraModel, LoraSpec
    from flq.task.models import BackboneSpec

    make = make_tiny_llama if request.param == "llama" else make_tiny_gemma3
    path = make(tmp_path_factory.mktemp(f"bos-{request.param}"), tokenizer=make_word_tokenizer(WORDS, True))
    torch.manual_seed(0)
    lm = LoraModel(BackboneSpec(str(path), "causal-lm", 32), LoraSpec(2.0, "auto"))
    lm.use_rank(4)
    return lm


def test_perplexity_of_a_document_is_its_direct_measurement_with_bos(bos_llama):
    from flq.task.train import evaluate

    lm, tok = bos_llama, bos_llama.tokenizer
    assert adds_bos(tok)
    text = "the cat sat on a mat"
    stats = evaluate(lm.model, "causal-lm", TextData([text], None, None), tok, 4, 32)
    # The direct measurement: the tokenizer's own encoding (BOS first) plus EOS, every token scored.
    ids = torch.tensor([tok(text)["input_ids"] + [tok.eos_token_id]])
    lm.model.eval()
    with torch.no_grad():
        direct = float(lm.model(input_ids=ids, labels=ids).loss)
    assert stats.loss == pytest.approx(direct, rel=1e-5)
    assert stats.score == pytest.approx(math.exp(direct), rel=1e-5)


def test_training_on_bos_blocks_lowers_the_loss(bos_llama):
    from flq.task.train import evaluate, make_batches, train_steps

    lm, tok = bos_llama, bos_llama.tokenizer
    data = TextData(DOCS * 4, None, None)
    before = evaluate(lm.model, "causal-lm", data, tok, 8, 12)
    batch = next(make_batches("causal-lm", data, tok, 4, 12, seed=0))
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    stats = train_steps(lm.model, make_batches("causal-lm", data, tok, 4, 12, seed=0), 30, 1e-2)
    after = evaluate(lm.model, "causal-lm", data, tok, 8, 12)
    assert math.isfinite(stats.loss_before) and after.loss < before.loss
