"""Tiny random models saved as normal Hugging Face folders, for tests and quick checks.

They go through exactly the loading path real models take (``from_pretrained`` on a local
directory); the text models' tokenizer is the offline MiniLM one and the vision model's image
processor config is saved beside it, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from flq.task.model_cache import resolve_model


def _decoder_shape(tokenizer, hidden: int, layers: int, bos: int | None, eos: int | None) -> dict:
    """The config keys every tiny decoder shares: GQA (4 heads, 2 KV), an MLP twice as wide, the tokens."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": bos,
        "eos_token_id": eos,
    }


def make_tiny_llama(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0, tokenizer=None) -> Path:
    """A random 2-layer Llama (GQA, like SmolLM2) with MiniLM's tokenizer (or ``tokenizer``), saved at ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
        bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    config = LlamaConfig(**_decoder_shape(tokenizer, hidden, layers, bos, eos), tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_gemma3(path: Path, tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer Gemma 3 text model (the architecture of Gemma 3 270M/1B) with ``tokenizer``."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    shape = _decoder_shape(tokenizer, hidden, layers, tokenizer.bos_token_id, tokenizer.eos_token_id)
    config = Gemma3TextConfig(**shape, head_dim=hidden // 4, sliding_window=16)
    torch.manual_seed(seed)
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


TINY_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


def make_word_tokenizer(words, adds_bos: bool):
    """A word-level fast tokenizer over ``words`` (+ <pad> <unk> <s> </s>), built offline.

    ``adds_bos``: its default encoding puts <s> first, as Gemma's and Llama's do; otherwise it
    adds nothing, as SmolLM2's and GPT-2's do. Either way it knows <s> as BOS and </s> as EOS.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*TINY_SPECIALS, *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


# The instruction tests' task: name the pet by what it does. Their tokenizer knows these words and
# those of FLQ's fallback chat template.
PET_ANSWERS = {"barks": "dog", "meows": "cat", "sings": "bird", "swims": "fish"}
CHAT_WORDS = ["###", "Instruction", "Response", ":", "which", "pet", *PET_ANSWERS, *PET_ANSWERS.values()]


def make_chat_llama(path: Path) -> Path:
    """A tiny random Llama with a word-level tokenizer (EOS, no chat template: FLQ's fallback applies)."""
    return make_tiny_llama(path, hidden=128, tokenizer=make_word_tokenizer(CHAT_WORDS, adds_bos=False))


def make_tiny_bert(path: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer BERT encoder with MiniLM's tokenizer, saved at ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def make_tiny_mobilevit(path: Path, image_size: int = 32, num_labels: int = 10, seed: int = 0) -> Path:
    """A tiny (0.4M parameters) random MobileViT classifier and its image processor config, at ``path``.

    The shape of ``mobilevit-tiny-random``: narrower ones learn digits much more slowly on
    random features and are no faster (32x32 convolutions dominate a step).
    """
    from flq.task.random_models import MobileViTShape, save_random_mobilevit

    return save_random_mobilevit(Path(path), MobileViTShape(image_size=image_size), num_labels=num_labels, seed=seed)
