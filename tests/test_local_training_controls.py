"""Local training under skew: the round learning-rate schedule, FedProx's term, gradient clipping."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from flq.config import ConfigError, RunConfig
from flq.task.data import TextData
from flq.task.lr_schedule import round_learning_rate
from flq.task.train import (
    balanced_class_weights,
    class_loss_options,
    evaluate,
    make_batches,
    proximal_term,
    restricted_softmax_scale,
    train_steps,
)
from tests.test_train import fresh_classifier, toy_classification


def test_warmup_then_constant_by_hand():
    rates = [round_learning_rate(0.01, "constant", r, 6, 2) for r in range(1, 7)]
    assert rates == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01, 0.01])


def test_cosine_decays_towards_a_tenth_and_every_round_trains():
    rates = [round_learning_rate(1.0, "cosine", r, 5, 0) for r in range(1, 6)]
    # progress (r - 1) / 5: cos(0) = 1 -> 1.0; then 0.1 + 0.9 * (1 + cos(pi k / 5)) / 2.
    assert rates[0] == 1.0 and rates == sorted(rates, reverse=True)
    assert rates[2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + 0.30901699437))  # cos(2 pi / 5)
    assert rates[-1] > 0.1


def test_no_schedule_is_todays_constant_rate():
    assert all(round_learning_rate(0.002, "constant", r, 10, 0) == 0.002 for r in range(1, 11))


def test_the_proximal_gradient_is_mu_times_the_distance_to_the_global():
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    anchor = torch.tensor([0.0, 1.0, 0.5])
    proximal_term([w], [anchor], mu=0.1).backward()
    torch.testing.assert_close(w.grad, 0.1 * (w.detach() - anchor))


def distance_moved(tiny_llama_dir, mu):
    """How far 20 local steps take the adapter from where it started, at proximal weight ``mu``."""
    lm = fresh_classifier(tiny_llama_dir)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
    assert train_steps(lm.model, batches, 20, 5e-3, proximal_mu=mu).steps == 20
    return sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(params, start, strict=True)) ** 0.5


def test_fedprox_keeps_local_training_near_the_received_adapter(tiny_llama_dir):
    assert distance_moved(tiny_llama_dir, 10.0) < 0.8 * distance_moved(tiny_llama_dir, 0.0)


def test_clipping_bounds_every_steps_gradient_norm(tiny_llama_dir):
    lm = fresh_classifier(tiny_llama_dir)
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
        train_steps(lm.model, batches, 5, 5e-3, max_grad_norm=1e-3)
        clipped = list(norms)
        norms.clear()
        batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
        train_steps(lm.model, batches, 5, 5e-3)
    finally:
        handle.remove()
    assert len(clipped) == 5 and max(clipped) <= 1e-3 * (1 + 1e-4)
    assert max(norms) > 1e-2  # without clipping the same steps have much larger gradients


def test_the_run_config_checks_the_local_training_controls():
    cfg = RunConfig()
    assert (cfg.lr_schedule, cfg.lr_warmup_rounds, cfg.max_grad_norm, cfg.proximal_mu) == ("constant", 0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="lr-schedule must be one of"):
        cfg.replace(lr_schedule="step")
    with pytest.raises(ConfigError, match="proximal-mu must be >= 0"):
        cfg.replace(proximal_mu=-1.0)


def test_balanced_class_weights_by_hand():
    # 6 of class 0, 2 of class 2, none of class 1: n / (k * n_c) over the k = 2 classes held.
    weights = balanced_class_weights([0, 0, 0, 0, 0, 0, 2, 2], num_classes=3)
    torch.testing.assert_close(weights, torch.tensor([8 / 12, 0.0, 8 / 4]))


def test_balanced_weighting_lifts_a_clients_minority_class(tiny_llama_dir):
    # A skewed client: 36 examples of class 0, 4 of class 1. Weighted, the minority class's
    # examples carry the loss and the model moves towards predicting them.
    data = toy_classification()
    skewed = TextData(
        [t for t, y in zip(data.texts, data.labels, strict=True) if y == 0][:18] * 2
        + [t for t, y in zip(data.texts, data.labels, strict=True) if y == 1][:4],
        [0] * 36 + [1] * 4,
        data.label_names,
    )

    def minority_recall(class_weights):
        lm = fresh_classifier(tiny_llama_dir)
        batches = make_batches("sequence-classification", skewed, lm.tokenizer, 8, 16, 0)
        torch.manual_seed(0)
        train_steps(lm.model, batches, 8, 1e-3, class_weights=class_weights)
        stats = evaluate(lm.model, "sequence-classification", skewed, lm.tokenizer, 16, 16)
        return stats.classes.per_class_accuracy[1]

    weighted = minority_recall(balanced_class_weights(skewed.labels, 2))
    plain = minority_recall(None)
    assert weighted > plain


def test_class_weighting_is_for_classifiers_only():
    with pytest.raises(ConfigError, match="class-weighting applies to classification"):
        RunConfig().replace(task="causal-lm", class_weighting="balanced")


def test_restricted_softmax_scale_by_hand():
    # classes 0 and 2 held, 1 and 3 lacking: 1 where held, alpha where lacking.
    scale = restricted_softmax_scale([0, 0, 2, 2, 2], num_classes=4, alpha=0.5)
    torch.testing.assert_close(scale, torch.tensor([1.0, 0.5, 1.0, 0.5]))


def test_class_loss_options_are_off_by_default():
    assert class_loss_options([0, 1], 3, "none", 1.0) == {"class_weights": None, "logit_scale": None}
    options = class_loss_options([0, 0, 1], 3, "balanced", 0.0)
    torch.testing.assert_close(options["class_weights"], balanced_class_weights([0, 0, 1], 3))
    torch.testing.assert_close(options["logit_scale"], torch.tensor([1.0, 1.0, 0.0]))


def lacking_class_logit_drop(tiny_llama_dir, logit_scale):
    """How far 8 steps on a one-class client lower the held-out mean logit of the class it lacks,
    relative to the class it holds."""
    data = toy_classification()
    texts = [t for t, y in zip(data.texts, data.labels, strict=True) if y == 0]
    only_zero = TextData(texts, [0] * len(texts), data.label_names)
    lm = fresh_classifier(tiny_llama_dir)
    probe = lm.tokenizer(data.texts, padding=True, truncation=True, max_length=16, return_tensors="pt")

    def margin():
        lm.model.eval()
        with torch.no_grad():
            logits = lm.model(**probe).logits
        return float((logits[:, 1] - logits[:, 0]).mean())

    before = margin()
    torch.manual_seed(0)
    batches = make_batches("sequence-classification", only_zero, lm.tokenizer, 8, 16, 0)
    train_steps(lm.model, batches, 8, 1e-3, logit_scale=logit_scale)
    return before - margin()


def test_restricted_softmax_pushes_a_lacking_class_down_less(tiny_llama_dir):
    # A client holding class 0 only: plain softmax raises class 0's logit and lowers class 1's;
    # FedRS at alpha 0 holds class 1's logit at 0 in the loss, so training only raises class 0's.
    plain = lacking_class_logit_drop(tiny_llama_dir, None)
    restricted = lacking_class_logit_drop(tiny_llama_dir, torch.tensor([1.0, 0.0]))
    assert plain > 0
    assert restricted < plain


def test_restricted_softmax_is_checked_and_for_classifiers_only():
    with pytest.raises(ConfigError, match=r"restricted-softmax must be in \[0, 1\]"):
        RunConfig().replace(restricted_softmax=1.5)
    with pytest.raises(ConfigError, match="restricted-softmax applies to classification"):
        RunConfig().replace(task="causal-lm", restricted_softmax=0.5)
