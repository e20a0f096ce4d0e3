"""LoRA adapters on a frozen backbone, one adapter per rank, exchanged as numpy dicts.

A ``LoraModel`` holds one backbone and creates a peft adapter per LoRA rank on demand
(``use_rank``); switching rank activates another adapter instead of masking components of
a bigger one, so every rank a client is asked for really trains all its components. The
task head (``score``/``classifier``, of text and image classifiers alike) is a peft
``modules_to_save`` copy per adapter: it trains and travels with the LoRA factors. Nothing
else ever leaves the process.

Every rank shares one scaling (``lora_alpha = rank * scaling``), see docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..adapter import AdapterState
from .chat_data import GENERATIVE_TASKS, INSTRUCTION_TASK
from .models import HEAD_MODULES, BackboneSpec, load_backbone

log = logging.getLogger(__name__)

# LoRA target modules when the run config says "auto", by transformers model_type.
AUTO_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],  # Gemma 3 270M/1B (text only)
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    # Vision transformers: attention q, k, v and the attention output projection (a dotted
    # suffix, so the MLP's own `output.dense` stays frozen).
    "mobilevit": ["query", "key", "value", "attention.output.dense"],
    "vit": ["query", "key", "value", "attention.output.dense"],
    "deit": ["query", "key", "value", "attention.output.dense"],
}

# peft task types by FLQ task; image classification has none (a plain PeftModel).
PEFT_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM", INSTRUCTION_TASK: "CAUSAL_LM"}


@dataclass(frozen=True)
class LoraSpec:
    scaling: float  # alpha / rank, the same for every rank
    targets: tuple[str, ...] | str  # module names, "all-linear" or "auto"
    dropout: float = 0.0


class LoraModel:
    """A frozen backbone with per-rank LoRA adapters (and task heads)."""

    def __init__(self, backbone: BackboneSpec, lora: LoraSpec) -> None:
        from peft import PeftModel  # noqa: F401  (import error early, with a clear name)

        self.backbone_spec = backbone
        self.lora_spec = lora
        self.base, self.processor = load_backbone(backbone)
        self.targets = resolve_targets(self.base, lora.targets)
        self.heads = [name for name in HEAD_MODULES if hasattr(self.base, name)]
        if backbone.task not in GENERATIVE_TASKS and not self.heads:
            raise ValueError(f"{backbone.model}: no classification head found (looked for {HEAD_MODULES})")
        self.peft = None
        self.rank: int | None = None

    # -- adapters -----------------------------------------------------------------------
    def use_rank(self, rank: int) -> None:
        """Activate the adapter for ``rank``, creating it on first use."""
        from peft import LoraConfig, get_peft_model

        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        name = _adapter_name(rank)
        config = LoraConfig(
            r=rank,
            lora_alpha=rank * self.lora_spec.scaling,
            lora_dropout=self.lora_spec.dropout,
            target_modules=self.targets,
            modules_to_save=list(self.heads) or None,  # peft extends this list in place
            task_type=PEFT_TASK_TYPES.get(self.backbone_spec.task),
        )
        if self.peft is None:
            self.peft = get_peft_model(self.base, config, adapter_name=name)
            self._cast_heads_to_fp32_inputs()
        elif name not in self.peft.peft_config:
            self.peft.add_adapter(name, config)
        self.peft.set_adapter(name)
        # Adapters train in float32 whatever the backbone's precision.
        for param in self.trainable_parameters():
            if param.dtype != torch.float32:
                param.data = param.data.float()
        self.rank = rank

    @property
    def tokenizer(self):
        """The text models' name for ``processor``."""
        return self.processor

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def model(self):
        if self.peft is None:
            raise RuntimeError("call use_rank() before using the model")
        return self.peft

    def adapter_state(self) -> AdapterState:
        """The active adapter's trainable tensors as float32 numpy (peft key names)."""
        from peft import get_peft_model_state_dict

        tensors = get_peft_model_state_dict(self.model, adapter_name=_adapter_name(self.rank))
        return {k: v.detach().to(torch.float32).cpu().numpy().copy() for k, v in tensors.items()}

    def parameter_names(self) -> dict[str, str]:
        """Each ``adapter_state`` key -> the name of its trainable parameter in ``model``.

        peft names the active adapter's parameters ``<module>.lora_A.<adapter>.weight`` (B alike)
        and a task head's trained copy ``<head>.modules_to_save.<adapter>.weight``;
        ``get_peft_model_state_dict`` drops ``.modules_to_save.<adapter>`` and ``.<adapter>`` to
        key the adapter (``<module>.lora_A.weight``, ``<head>.weight``). This applies that rule
        and checks it against peft: the keys must be exactly ``adapter_state``'s, and each must
        name the very tensor the state dict reads (same storage), or it raises.
        """
        from peft import get_peft_model_state_dict

        adapter = _adapter_name(self.rank)
        params = dict(self.model.named_parameters())
        names: dict[str, str] = {}
        for name, param in params.items():
            if param.requires_grad:
                key = name.replace(f".modules_to_save.{adapter}.", ".").replace(f".{adapter}.", ".")
                if key in names:
                    raise ValueError(f"parameters {names[key]!r} and {name!r} both map to adapter key {key!r}")
                names[key] = name
        state = get_peft_model_state_dict(self.model, adapter_name=adapter)
        if set(names) != set(state):
            unmatched = sorted(set(names) ^ set(state))
            raise ValueError(f"trainable parameters and adapter keys differ: {unmatched[:3]}")
        for key, name in names.items():
            if state[key].data_ptr() != params[name].data_ptr():
                raise ValueError(f"adapter key {key!r} is not parameter {name!r}")
        return names

    def load_adapter_state(self, state: AdapterState) -> None:
        """Overwrite the active adapter with ``state``; keys and shapes must match exactly."""
        from peft import set_peft_model_state_dict

        current = self.adapter_state()
        missing = sorted(set(current) - set(state))
        extra = sorted(set(state) - set(current))
        if missing or extra:
            raise ValueError(
                f"adapter keys do not match the rank-{self.rank} model: "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(current[key].shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)} != model {tuple(current[key].shape)}")
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
        result = set_peft_model_state_dict(self.model, tensors, adapter_name=_adapter_name(self.rank))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"peft did not load {result.unexpected_keys[:3]}")

    def _cast_heads_to_fp32_inputs(self) -> None:
        # The head trains in float32; a bf16/4-bit backbone hands it bf16 hidden states.
        for name in self.heads:
            wrapper = getattr(self.peft.base_model.model, name)
            wrapper.register_forward_pre_hook(_inputs_to_fp32)


def _inputs_to_fp32(_module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _adapter_name(rank: int | None) -> str:
    if rank is None:
        raise RuntimeError("no active adapter: call use_rank() first")
    return f"rank{rank}"


def resolve_targets(model: torch.nn.Module, targets: tuple[str, ...] | str) -> list[str] | str:
    """Resolve ``auto`` by architecture and check named targets exist in the model.

    A target is a module name or a dotted suffix of one (peft matches ``name == t`` or
    ``name.endswith("." + t)``), e.g. ``attention.output.dense``.
    """
    if targets == "all-linear":
        return "all-linear"
    if targets == "auto":
        model_type = getattr(model.config, "model_type", "")
        if model_type not in AUTO_TARGETS:
            log.warning("no LoRA target defaults for model type %r: using all-linear", model_type)
            return "all-linear"
        names = AUTO_TARGETS[model_type]
    else:
        names = list(targets)
    module_names = [n for n, _ in model.named_modules()]
    unknown = [t for t in names if not any(n == t or n.endswith("." + t) for n in module_names)]
    if unknown:
        raise ValueError(f"LoRA target modules {unknown} not found in {type(model).__name__}")
    return list(names)


# -- a small per-process cache: simulation actors serve many clients ------------------------
_CACHE: OrderedDict[tuple, LoraModel] = OrderedDict()
_CACHE_SIZE = 2


def get_lora_model(backbone: BackboneSpec, lora: LoraSpec) -> LoraModel:
    """A cached ``LoraModel`` for this backbone/LoRA spec (LRU of two backbones)."""
    key = (backbone, lora)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    model = LoraModel(backbone, lora)
    _CACHE[key] = model
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return model


def clear_cache() -> None:
    _CACHE.clear()
