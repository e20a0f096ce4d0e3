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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

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


def export_adapter(
    lm: LoraModel, out_dir: Path, label_names: Sequence[str] | None = None, card: str | None = None
) -> Path:
    """Save ``lm``'s active adapter under ``out_dir`` (see the module doc); returns the adapter folder."""
    out_dir = Path(out_dir)
    name = f"rank{lm.rank}"
    task = lm.backbone_spec.task
    if task != "causal-lm" and label_names:
        # The live model agrees with what is exported (model.config.id2label names the classes).
        lm.base.config.id2label = {i: str(n) for i, n in enumerate(label_names)}
        lm.base.config.label2id = {str(n): i for i, n in enumerate(label_names)}
    lm.model.save_pretrained(out_dir, selected_adapters=[name])
    folder = out_dir / name
    lm.processor.save_pretrained(folder)
    (folder / BASE_CONFIG_FILE).write_text(json.dumps(base_config(lm), indent=2) + "\n", encoding="utf-8")
    if card is not None:
        for target in (folder / CARD_FILE, out_dir / CARD_FILE):
            target.write_text(card, encoding="utf-8")
    return folder
