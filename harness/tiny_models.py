"""Tiny random models saved as normal Hugging Face folders, for tests and quick checks.

They go through exactly the loading path real models take (``from_pretrained`` on a local
directory); the text models' tokenizer is the offline MiniLM one and the vision model's image
processor config is saved beside it, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from flq.task.model_cache import resolve_model


def make_tiny_llama(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer Llama (GQA, like SmolLM2) with MiniLM's tokenizer, saved at ``path``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


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
