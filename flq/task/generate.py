"""Evaluation of an instruction-tuned model: response perplexity, and generation on held-out prompts.

* **Response perplexity**: the loss on answer tokens only (the same labels training uses), over
  every example (``flq.task.train.evaluate`` measures it, as it does a causal LM's perplexity).
* **Generation**: greedy decoding (deterministic, so rounds compare) of up to ``max_new_tokens``
  for ``samples`` prompts spread evenly over the data (data sources are often sorted by
  category), each scored against its reference with ROUGE-L and exact match
  (``flq.metrics.generation``). The run's score is the mean ROUGE-L.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..metrics.generation import exact_match, rouge_l
from .chat import ChatExamples
from .models import model_device

SAMPLES_KEPT = 4  # generations written to the run directory per evaluation


@dataclass(frozen=True)
class GenerationSpec:
    samples: int = 32  # prompts answered per evaluation
    max_new_tokens: int = 32


@dataclass
class GenerationScores:
    rouge_l: float
    exact_match: float
    response_perplexity: float
    samples: list[dict] = field(default_factory=list)  # a few {prompt, reference, generated, rouge_l}


def generation_scores(
    model: torch.nn.Module,
    tokenizer,
    examples: ChatExamples,
    references: list[str],
    response_perplexity: float,
    batch_size: int,
    spec: GenerationSpec,
) -> GenerationScores:
    """Greedy answers to ``spec.samples`` of ``examples``' prompts scored against their ``references``."""
    chosen = spread_indices(len(examples), spec.samples)
    prompts = [examples.sequences[i].input_ids[: examples.sequences[i].prompt_len] for i in chosen]
    generated = generate(model, tokenizer, prompts, spec.max_new_tokens, batch_size)
    answers = [references[i] for i in chosen]
    rouges = [rouge_l(g, r) for g, r in zip(generated, answers, strict=True)]
    matches = [exact_match(g, r) for g, r in zip(generated, answers, strict=True)]
    samples = [  # spread over the answered prompts too, so they show several categories
        {"prompt": tokenizer.decode(prompts[i]), "reference": answers[i], "generated": generated[i],
         "rouge_l": rouges[i]}
        for i in spread_indices(len(prompts), SAMPLES_KEPT)
    ]  # fmt: skip
    return GenerationScores(
        rouge_l=float(np.mean(rouges)) if rouges else 0.0,
        exact_match=float(np.mean(matches)) if matches else 0.0,
        response_perplexity=response_perplexity,
        samples=samples,
    )


def spread_indices(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)``."""
    if n <= 0 or k <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n)).round()})


def stop_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (chat models end turns with their own)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def generate(model: torch.nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int):
    """Greedy answers to token ``prompts`` (batched, left-padded), decoded without special tokens."""
    from transformers import GenerationConfig

    device = model_device(model)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=pad
    )
    answers: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, prompt in enumerate(chunk):
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
            for row in out[:, width:].tolist():
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers
