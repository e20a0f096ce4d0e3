"""Export a trained adapter as a peft folder a user can load on the base model, with its model card.

``adapter/`` (``out_dir``) gets peft's own layout for a named adapter, ``adapter/rank<R>/``:
``adapter_config.json`` (its ``base_model_name_or_path`` is the base model reference) and
``adapter_model.safetensors``, which ``PeftModel.from_pretrained(base, "adapter/rank<R>")`` loads;
beside them FLQ writes

* ``base_config.json``: the base model's config as FLQ trained it (classifiers: ``num_labels``,
  ``id2label``/``label2id`` from the data's label names, the pad token; no quantization, no dtype), so
  ``AutoModel...from_pretrained(base_id, config=AutoConfig.from_pretrained(".../base_config.json"))``
  builds the model the adapter was trained on, with its label names;
* the tokenizer (or image processor), as FLQ used it (pad token included);
* ``README.md``: the run's model card (also written over peft's empty template in ``adapter/``).

No ``config.json``: beside an ``adapter_config.json`` it would tell transformers the folder is a
complete model, and ``AutoModel...from_pretrained("adapter/rank<R>")`` would stop loading the base.

``export_merged`` (run config ``export-merged = true``) also writes the adapter merged into a full
model folder, ``merged/``: ``config.json`` (classifiers: with ``id2label``/``label2id``), safetensors
weights and the tokenizer (or image processor), which ``AutoModel...from_pretrained("merged")``
loads with no peft and no base download. The merge is done into the base loaded afresh in float32,
never into 4/8-bit quantized weights; the folder is saved in bfloat16 when the run's backbone had
fewer than 32 bits, else in float32.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .chat_data import GENERATIVE_TASKS
from .lora import LoraModel

BASE_CONFIG_FILE = "base_config.json"
# How FLQ loaded the base, not what it is: the exported config leaves these to the user.
LOADING_FIELDS = ("quantization_config", "dtype", "torch_dtype", "_name_or_path")
CARD_FILE = "README.md"


def base_model_reference(lm: LoraModel) -> str:
    """What the exported adapter names as its base (a hub id or a local folder)."""
    return str(getattr(lm.base, "name_or_path", "") or lm.backbone_spec.model)


def base_config(lm: LoraModel) -> dict:
    """The base model's config as trained (labels, pad token), without how FLQ loaded it (bits, dtype)."""
    config = lm.base.config.to_diff_dict()
    for field in LOADING_FIELDS:
        config.pop(field, None)
    config["architectures"] = [type(lm.base).__name__]  # the task's class FLQ trained, not the checkpoint's
    return config


def name_labels(config, task: str, label_names: Sequence[str] | None) -> None:
    """A classifier's ``id2label``/``label2id`` from the data's label names (generative tasks have none)."""
    if task not in GENERATIVE_TASKS and label_names:
        config.id2label = {i: str(n) for i, n in enumerate(label_names)}
        config.label2id = {str(n): i for i, n in enumerate(label_names)}


def export_adapter(
    lm: LoraModel, out_dir: Path, label_names: Sequence[str] | None = None, card: str | None = None
) -> Path:
    """Save ``lm``'s active adapter under ``out_dir`` (see the module doc); returns the adapter folder."""
    out_dir = Path(out_dir)
    name = f"rank{lm.rank}"
    # The live model agrees with what is exported (model.config.id2label names the classes).
    name_labels(lm.base.config, lm.backbone_spec.task, label_names)
    lm.model.save_pretrained(out_dir, selected_adapters=[name])
    folder = out_dir / name
    lm.processor.save_pretrained(folder)
    (folder / BASE_CONFIG_FILE).write_text(json.dumps(base_config(lm), indent=2) + "\n", encoding="utf-8")
    if card is not None:
        for target in (folder / CARD_FILE, out_dir / CARD_FILE):
            target.write_text(card, encoding="utf-8")
    return folder


def export_merged(lm: LoraModel, out_dir: Path, label_names: Sequence[str] | None = None) -> Path:
    """Save ``lm``'s active adapter merged into its base as a full model folder ``out_dir``; returns it.

    A second copy of the base is loaded un-quantized (float32, on the CPU) and the adapter's tensors
    (LoRA factors and task head) are loaded into it and merged: ``lm`` itself is left untouched.
    """
    import torch

    out_dir = Path(out_dir)
    spec = lm.backbone_spec
    full = LoraModel(replace(spec, bits=32, device="cpu"), lm.lora_spec)
    full.use_rank(lm.rank)
    full.load_adapter_state(lm.adapter_state())
    model = full.model.merge_and_unload()
    if spec.bits < 32:
        model = model.to(torch.bfloat16)
    name_labels(model.config, spec.task, label_names)  # loaded in float32: no quantization_config to leave out
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        lm.processor.save_pretrained(tmp)  # the tokenizer as FLQ used it (pad token included)
        if out_dir.exists():  # a resumed run writes its merged model again
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
