"""From the run config to the task layer's specs (one mapping, used by both apps)."""

from __future__ import annotations

from ..config import RunConfig
from .chat_data import GENERATIVE_TASKS, ChatColumns
from .generate import GenerationSpec
from .lora import LoraSpec
from .models import BackboneSpec
from .partition import DataSpec, load_source


def data_spec(cfg: RunConfig) -> DataSpec:
    return DataSpec(
        source=cfg.data,
        task=cfg.task,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        encoding=cfg.data_encoding,
        chat=ChatColumns(
            prompt=cfg.prompt_column,
            response=cfg.response_column,
            system=cfg.system_column,
            messages=cfg.messages_column,
            system_prompt=cfg.system_prompt,
        ),
        server_test_size=cfg.server_test_size,
        local_test_fraction=cfg.local_test_fraction,
        partitioner=cfg.partitioner,
        dirichlet_alpha=cfg.dirichlet_alpha,
        classes_per_client=cfg.classes_per_client,
        seed=cfg.seed,
    )


def backbone_spec(cfg: RunConfig, bits: int | None = None) -> BackboneSpec:
    num_labels = load_source(data_spec(cfg)).num_labels if cfg.task not in GENERATIVE_TASKS else 0
    return BackboneSpec(
        model=cfg.model,
        task=cfg.task,
        bits=cfg.backbone_bits if bits is None else bits,
        quant_type=cfg.quant_type,
        num_labels=num_labels,
    )


def lora_spec(cfg: RunConfig) -> LoraSpec:
    targets = cfg.lora_target_list()
    return LoraSpec(
        scaling=cfg.lora_scaling,
        targets=targets if isinstance(targets, str) else tuple(targets),
        dropout=cfg.lora_dropout,
    )


def generation_spec(cfg: RunConfig) -> GenerationSpec:
    return GenerationSpec(samples=cfg.generation_samples, max_new_tokens=cfg.max_new_tokens)
