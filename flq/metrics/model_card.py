"""The model card (README.md) of an exported adapter: what it is, how it was trained, how well it scores.

Built from plain data (the run config as ``RunConfig.to_dict()`` keys, the run's summary, a few
facts about the data and the federation), so it is rebuildable and testable without a model.
The front matter is Hugging Face's model card metadata (``base_model``, ``library_name``,
``pipeline_tag``, ``tags``); the body says what peft's empty template leaves for the user to fill.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PIPELINE_TAGS = {
    "sequence-classification": "text-classification",
    "causal-lm": "text-generation",
    "instruction": "text-generation",
    "image-classification": "image-classification",
}
AUTO_CLASSES = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "instruction": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
}
GENERATIVE = tuple(t for t, c in AUTO_CLASSES.items() if c == "AutoModelForCausalLM")  # no head, no labels
PROJECT_URL = "https://flower.ai"
MAX_LISTED_LABELS = 20


@dataclass(frozen=True)
class CardFacts:
    """What a model card says, gathered by the ServerApp at the end of a run."""

    run_name: str
    base_model: str  # what adapter_config.json's base_model_name_or_path names
    adapter_dir: str  # the peft folder's name inside adapter/, e.g. "rank8"
    config_file: str  # the base model's config as trained (labels), beside the adapter
    config: Mapping[str, Any]  # RunConfig.to_dict(): kebab-case keys
    summary: Mapping[str, Any]  # flq.metrics.summary.summarize(...), plus "initial"
    num_examples: int  # in the data source
    server_test_size: int  # examples in the server's held-out set
    label_names: Sequence[str] | None  # classification only
    num_clients: int  # nodes in the federation
    clients_trained: int  # distinct clients whose update was accepted at least once


def model_card(facts: CardFacts) -> str:
    cfg, summary = facts.config, facts.summary
    task = str(cfg["task"])
    score_name = summary.get("score_name") or {"causal-lm": "perplexity", "instruction": "rouge-l"}.get(
        task, "accuracy"
    )
    front = [
        "---",
        f"base_model: {json.dumps(facts.base_model)}",
        "library_name: peft",
        f"pipeline_tag: {PIPELINE_TAGS.get(task, task)}",
        "tags:",
        f"- {json.dumps('base_model:adapter:' + facts.base_model)}",
        "- lora",
        "- federated-learning",
        "- flower",
        "- flq",
        "---",
        "",
    ]
    what = {
        "sequence-classification": "text classifier",
        "causal-lm": "causal language model",
        "instruction": "instruction-tuned language model",
        "image-classification": "image classifier",
    }.get(task, task)
    body = [
        f"# {facts.run_name}: a federated LoRA {what} on {cfg['model']}",
        "",
        f"A rank-{cfg['lora-rank']} LoRA adapter"
        + (" with its classification head" if task not in GENERATIVE else "")
        + f" for `{facts.base_model}`, trained by federated learning with FLQ (a [Flower]({PROJECT_URL}) app): "
        f"the data stayed with its {facts.num_clients} clients; only adapter updates travelled.",
        "",
        "## Task and data",
        "",
        f"- Task: `{task}`" + _labels_line(facts.label_names),
        f"- Data: `{cfg['data']}`, {facts.num_examples:,} examples"
        + _columns(cfg, task)
        + f"; the server kept {facts.server_test_size:,} of them out as its held-out set",
        f"- Sequence length: {cfg['max-seq-length']} tokens" if task != "image-classification" else None,
        "",
        "## Federation",
        "",
        f"- Clients: {facts.num_clients} ({_per_round(cfg)} per round), {facts.clients_trained} of them trained",
        f"- Partitioner: {_partitioner(cfg)}",
        f"- Rounds: {summary.get('rounds', 0)} of {cfg['num-server-rounds']}, {cfg['local-steps']} local steps "
        f"of batch {cfg['batch-size']} at learning rate {cfg['learning-rate']:g}",
        f"- LoRA: rank {cfg['lora-rank']}, alpha {cfg['lora-alpha']:g}, targets `{cfg['lora-targets']}`; "
        f"backbone at {cfg['backbone-bits']} bits; scheduler `{cfg['scheduler']}`",
        f"- Aggregation: `{cfg['aggregation']}` ({cfg['aggregation-weight']}{_fairness(cfg)}), server optimizer "
        f"`{cfg['server-optimizer']}`; updates sent as `{cfg['update-codec']}`",
        "",
        f"## Results ({score_name} on the server's held-out set)",
        "",
        "| | " + score_name + " |",
        "|---|---|",
        *_result_rows(summary),
        "",
        _target_line(summary, score_name),
        "",
        "## How to load",
        "",
        "```python",
        *_load_snippet(facts, task),
        "```",
        "",
        f"`{facts.config_file}` is the base model's config as FLQ trained it"
        + (" (the number of labels, `id2label`/`label2id`, the pad token)" if task not in GENERATIVE else "")
        + "; the tokenizer or image processor is saved beside the adapter.",
        "",
    ]
    return "\n".join(front + [line for line in body if line is not None]).replace("\n\n\n", "\n\n")


def _labels_line(label_names: Sequence[str] | None) -> str:
    if not label_names:
        return ""
    shown = ", ".join(f"`{n}`" for n in label_names[:MAX_LISTED_LABELS])
    more = f", ... ({len(label_names)} in all)" if len(label_names) > MAX_LISTED_LABELS else ""
    return f", {len(label_names)} classes: {shown}{more}"


def _columns(cfg: Mapping[str, Any], task: str) -> str:
    data = str(cfg["data"])
    if task == "image-classification" or data == "bbc-news" or "." not in data.rsplit("/", 1)[-1]:
        return ""
    label = f", label column `{cfg['label-column']}`" if task == "sequence-classification" else ""
    return f" (text column `{cfg['text-column']}`{label}, read as {cfg.get('data-encoding', 'utf-8')})"


def _per_round(cfg: Mapping[str, Any]) -> str:
    return "all" if int(cfg["clients-per-round"]) == 0 else str(cfg["clients-per-round"])


def _partitioner(cfg: Mapping[str, Any]) -> str:
    name = cfg["partitioner"]
    if name == "dirichlet":
        return f"`dirichlet` by label (alpha={cfg['dirichlet-alpha']:g}: non-IID)"
    if name == "pathological":
        return f"`pathological` ({cfg['classes-per-client']} classes per client: non-IID)"
    return f"`{name}`"


def _fairness(cfg: Mapping[str, Any]) -> str:
    q = float(cfg.get("fairness-q", 0.0))  # absent in runs recorded before the option existed
    return f", x loss^{q:g} (q-FFL)" if q else ""


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _result_rows(summary: Mapping[str, Any]) -> list[str]:
    initial = (summary.get("initial") or {}).get("score")
    rows = [
        f"| initial (round 0) | {_fmt(initial)} |",
        f"| final (round {summary.get('rounds', 0)}) | {_fmt(summary.get('final_score'))} |",
        f"| best | {_fmt(summary.get('best_score'))} |",
    ]
    if summary.get("final_balanced_accuracy") is not None:
        rows.append(f"| final balanced accuracy | {_fmt(summary['final_balanced_accuracy'])} |")
    if summary.get("final_macro_f1") is not None:
        rows.append(f"| final macro-F1 | {_fmt(summary['final_macro_f1'])} |")
    return rows


def _target_line(summary: Mapping[str, Any], score_name: str) -> str:
    target = summary.get("target")
    if target is None:
        return ""
    if summary.get("rounds_to_target") is None:
        return f"Target {score_name} {target:g}: not reached."
    clock = summary.get("clock") or "run"
    return (
        f"Target {score_name} {target:g}: reached at round {summary['rounds_to_target']} "
        f"({summary.get('clock_s_to_target', 0.0):.1f} s on the {clock} clock)."
    )


def _load_snippet(facts: CardFacts, task: str) -> list[str]:
    auto = AUTO_CLASSES.get(task, "AutoModel")
    processor = "AutoImageProcessor" if task == "image-classification" else "AutoTokenizer"
    mismatched = ", ignore_mismatched_sizes=True" if task == "image-classification" else ""
    lines = [
        "from peft import PeftConfig, PeftModel",
        f"from transformers import AutoConfig, {auto}, {processor}",
        "",
        f'path = "adapter/{facts.adapter_dir}"  # this folder',
        "base_id = PeftConfig.from_pretrained(path).base_model_name_or_path",
        f'config = AutoConfig.from_pretrained(f"{{path}}/{facts.config_file}")',
        f"base = {auto}.from_pretrained(base_id, config=config{mismatched})",
        "model = PeftModel.from_pretrained(base, path)",
        f"processor = {processor}.from_pretrained(path)",
    ]
    if task not in GENERATIVE:
        lines.append("# model.config.id2label names the classes of model(...).logits")
    return lines
