"""Backbones: any Hugging Face model (hub id or local dir) at 4, 8, 16 or 32 bits.

The backbone is frozen; only LoRA factors and the task head train (see ``flq.task.lora``).
4 and 8 bits go through bitsandbytes on CPU and CUDA (linear layers only: convolutions of
vision models keep the compute precision); 16 bits is bfloat16 (float16 on a GPU without
bf16), 32 bits is float32. The task head is never quantized: it trains and travels.

Text models come with their tokenizer, image classifiers with the image processor saved
beside them (``preprocessor_config.json``): ``load_backbone`` returns (model, processor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .. import logs  # noqa: F401  (installs the bitsandbytes log filters)
from .chat_data import GENERATIVE_TASKS, INSTRUCTION_TASK
from .images import IMAGE_TASK
from .model_cache import resolve_model

log = logging.getLogger(__name__)

# Module names of task heads across architectures (seq-cls heads; never quantized).
HEAD_MODULES = ("score", "classifier")


@dataclass(frozen=True)
class BackboneSpec:
    model: str  # embedded name, local dir or hub id
    task: str  # sequence-classification | causal-lm | instruction | image-classification
    bits: int  # 4 | 8 | 16 | 32
    quant_type: str = "nf4"  # 4-bit only
    num_labels: int = 2  # classification tasks only
    device: str = "auto"  # auto | cpu | cuda[:N]


class ModelTaskError(ValueError):
    """The model cannot do the configured task (e.g. a text model for image classification)."""


# Per task: the transformers auto class, its architecture mapping, and what its models are called.
_AUTO_CLASSES = {
    "sequence-classification": (
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING",
        "a text classifier",
    ),
    "causal-lm": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING", "a causal language model"),
    INSTRUCTION_TASK: ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING", "a causal language model"),
    IMAGE_TASK: ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING", "an image classifier"),
}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def half_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where supported (every recent CPU path, Ampere+ GPUs), else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def load_backbone(spec: BackboneSpec):
    """Load (model, processor) for ``spec``, frozen; the processor is a tokenizer (with a pad
    token set) for text tasks and the model's own image processor for image classification."""
    if spec.bits not in (4, 8, 16, 32):
        raise ValueError(f"backbone bits must be 4, 8, 16 or 32, got {spec.bits}")
    if spec.task not in _AUTO_CLASSES:
        raise ValueError(f"unknown task {spec.task!r}")
    device = resolve_device(spec.device)
    path = resolve_model(spec.model)
    auto_class = _check_task(spec, path)
    kwargs = _quantization_kwargs(spec, device)
    if spec.task in GENERATIVE_TASKS:
        model = auto_class.from_pretrained(path, **kwargs)
    elif spec.task == IMAGE_TASK:
        # A pretrained head of another size (e.g. ImageNet's 1,000 classes) is replaced.
        model = auto_class.from_pretrained(path, num_labels=spec.num_labels, ignore_mismatched_sizes=True, **kwargs)
    else:
        model = auto_class.from_pretrained(path, num_labels=spec.num_labels, **kwargs)
    processor = _load_image_processor(spec, path) if spec.task == IMAGE_TASK else _load_tokenizer(path)
    if spec.task != IMAGE_TASK:
        model.config.pad_token_id = processor.pad_token_id
    if spec.bits >= 16 and model.device != device:
        model.to(device)
    disable_bnb_cpu_repack(model)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, processor


def _check_task(spec: BackboneSpec, path: str):
    """The task's auto class, after checking the model's architecture can do the task."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    class_name, mapping_name, what = _AUTO_CLASSES[spec.task]
    config = AutoConfig.from_pretrained(path)
    if type(config) not in getattr(modeling_auto, mapping_name):
        hint = (
            'e.g. model="mobilevit-tiny-random" (offline, random init) or "apple/mobilevit-xx-small"'
            if spec.task == IMAGE_TASK
            else 'e.g. model="smollm2-135m" or "minilm-l6"'
        )
        raise ModelTaskError(
            f"{spec.model}: a {config.model_type!r} model is not {what}, which task {spec.task} needs ({hint})"
        )
    return getattr(transformers, class_name)


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _load_image_processor(spec: BackboneSpec, path: str):
    from transformers import AutoImageProcessor

    try:
        # The PIL backend everywhere: every client resizes images identically, with or
        # without torchvision installed.
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError) as exc:
        raise ModelTaskError(
            f"{spec.model}: no usable image processor config (preprocessor_config.json) beside the model: {exc}"
        ) from exc


def _quantization_kwargs(spec: BackboneSpec, device: torch.device) -> dict:
    if spec.bits == 32:
        return {"dtype": torch.float32}
    compute = half_dtype(device)
    if spec.bits == 16:
        return {"dtype": compute}
    from transformers import BitsAndBytesConfig

    # Task heads train and lm_head is usually tied to the embeddings: keep them full precision.
    skip = [*HEAD_MODULES, "lm_head"]
    if spec.bits == 8:
        quant = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        if spec.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"4-bit quant type must be nf4 or fp4, got {spec.quant_type!r}")
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quant_type,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip,
        )
    device_map = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    return {"quantization_config": quant, "dtype": compute, "device_map": device_map}


def disable_bnb_cpu_repack(model: torch.nn.Module) -> int:
    """Work around a silent bitsandbytes 0.50 bug on CPUs with AVX512-BF16.

    The first no-grad eval forward of a ``Linear4bit`` repacks its weight in place into a
    CPU-only layout; afterwards no gradient flows through any frozen 4-bit layer, so LoRA
    silently stops learning after the first evaluation. Turning the fast path off before
    any forward keeps gradients flowing (regression test: tests/test_models.py).
    Returns how many layers were patched.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
