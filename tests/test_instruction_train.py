"""Instruction tuning on a tiny model: the answer loss falls and generated answers improve (flq.task.generate)."""

import math

import pytest
import torch

from flq.task.chat_data import ChatData
from flq.task.generate import GenerationSpec, spread_indices
from flq.task.lora import LoraModel, LoraSpec
from flq.task.models import BackboneSpec
from flq.task.train import evaluate, make_batches, train_steps
from harness.tiny_models import PET_ANSWERS

PAIRS = [(f"which pet {verb}", pet) for verb, pet in PET_ANSWERS.items()]


def pet_data(repeat: int = 4) -> ChatData:
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in PAIRS * repeat]
    return ChatData(conversations)


@pytest.mark.parametrize("packing", [False, True])
def test_the_answer_loss_falls_and_answers_improve(chat_llama_dir, packing):
    torch.manual_seed(0)
    lm = LoraModel(BackboneSpec(str(chat_llama_dir), "instruction", 32), LoraSpec(2.0, "auto"))
    lm.use_rank(8)
    data, spec = pet_data(), GenerationSpec(samples=4, max_new_tokens=4)
    before = evaluate(lm.model, "instruction", data, lm.processor, 8, 32, spec)
    batches = make_batches("instruction", data, lm.processor, 4, 32, seed=0, packing=packing)
    train_steps(lm.model, batches, 100, 1e-2)
    after = evaluate(lm.model, "instruction", data, lm.processor, 8, 32, spec)
    assert math.isfinite(before.loss) and after.loss < before.loss
    assert after.generation.response_perplexity < before.generation.response_perplexity
    # The random model answers none right; after training some one-word answers are exactly right.
    assert after.score == after.generation.rouge_l and 0.0 <= before.score < after.score <= 1.0
    assert after.generation.exact_match > before.generation.exact_match
    assert len(after.generation.samples) == 4
    for sample in after.generation.samples:
        assert sample["prompt"].rstrip().endswith("Response :")  # the prompt ends where the answer starts
        assert sample["reference"] in {a for _, a in PAIRS} and 0.0 <= sample["rouge_l"] <= 1.0


def test_generation_samples_spread_over_the_data():
    assert spread_indices(10, 3) == [0, 4, 9]  # linspace 0, 4.5, 9, rounded half to even
    assert spread_indices(3, 10) == [0, 1, 2]
    assert spread_indices(0, 4) == [] and spread_indices(5, 0) == []
