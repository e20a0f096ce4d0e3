"""Training and evaluation loops on tiny models: loss goes down, budgets stop early."""

import math

import pytest
import torch

from flq.task.data import TextData
from flq.task.lora import LoraModel, LoraSpec
from flq.task.models import BackboneSpec
from flq.task.train import evaluate, make_batches, train_steps


def toy_classification() -> TextData:
    texts = [f"{w} {w} {w} item {i}" for i in range(40) for w in (["apple"], ["stone"])[i % 2]]
    return TextData(texts, [i % 2 for i in range(40)], ["fruit", "rock"])


def fresh_classifier(tiny_llama_dir):
    """A tiny two-class LoRA classifier at rank 4, the same every time (seeded)."""
    torch.manual_seed(0)
    lm = LoraModel(
        BackboneSpec(str(tiny_llama_dir), "sequence-classification", 32, num_labels=2), LoraSpec(2.0, "auto")
    )
    lm.use_rank(4)
    return lm


@pytest.fixture
def tiny_classifier(tiny_llama_dir):
    return fresh_classifier(tiny_llama_dir)


def test_training_lowers_the_loss_and_reports_what_it_did(tiny_classifier):
    data = toy_classification()
    lm = tiny_classifier
    before = evaluate(lm.model, "sequence-classification", data, lm.tokenizer, 16, 16)
    stats = train_steps(lm.model, make_batches("sequence-classification", data, lm.tokenizer, 8, 16, 0), 30, 5e-3)
    after = evaluate(lm.model, "sequence-classification", data, lm.tokenizer, 16, 16)
    assert stats.steps == 30 and stats.num_examples == 240
    assert stats.loss_after < stats.loss_before
    assert after.loss < before.loss and after.score >= 0.9
    assert stats.peak_mem_mb > 0 and stats.compute_s > 0
    # Beside accuracy: balanced accuracy and macro-F1 from the same predictions.
    assert after.classes.accuracy == after.score and len(after.classes.per_class_accuracy) == 2
    assert after.classes.balanced_accuracy >= 0.9 and after.classes.macro_f1 >= 0.9 and not after.classes.collapsed


def test_a_budget_stops_training_early(tiny_classifier):
    lm = tiny_classifier
    batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
    stats = train_steps(lm.model, batches, 50, 1e-3, should_stop=lambda steps, elapsed: steps >= 3)
    assert stats.steps == 3 and not math.isnan(stats.loss_after)


def test_causal_lm_perplexity_drops(tiny_llama_dir):
    torch.manual_seed(0)
    lm = LoraModel(BackboneSpec(str(tiny_llama_dir), "causal-lm", 32), LoraSpec(2.0, "auto"))
    lm.use_rank(8)
    data = TextData(["the cat sat on the mat. " * 8] * 6, None, None)
    before = evaluate(lm.model, "causal-lm", data, lm.tokenizer, 4, 32)
    train_steps(lm.model, make_batches("causal-lm", data, lm.tokenizer, 4, 32, 0), 25, 1e-2)
    after = evaluate(lm.model, "causal-lm", data, lm.tokenizer, 4, 32)
    assert math.isfinite(before.score) and after.score < before.score
    assert after.classes is None  # perplexity: no classes


def test_a_text_shorter_than_one_block_still_evaluates(tiny_llama_dir):
    lm = LoraModel(BackboneSpec(str(tiny_llama_dir), "causal-lm", 32), LoraSpec(2.0, "auto"))
    lm.use_rank(2)
    stats = evaluate(lm.model, "causal-lm", TextData(["tiny"], None, None), lm.tokenizer, 4, 64)
    assert math.isfinite(stats.loss)
