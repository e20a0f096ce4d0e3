"""Local training and evaluation loops (plain PyTorch, no Flower).

Training runs a number of optimizer steps (not epochs), optionally stopped earlier by a
``should_stop(steps_done, measured_seconds)`` callback: that is how a client honours a time
budget on the run's clock. ``loss_before``/``loss_after`` are the loss on the same first
batch before the first update and after the last one, so their difference is a clean
per-round learning signal for the scheduler.

Classification batches come from text (tokenizer) or images (the model's image processor);
the loops themselves do not care which. Frozen BatchNorm layers (vision backbones) keep their
running statistics while training: they are part of the frozen backbone, which never travels,
so every client and the server must normalise alike. With ``autocast`` set (a tier's
``mixed_precision`` hint on a 32-bit backbone) forward passes run in half precision.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics.classification import ClassificationScores, classification_scores
from .chat import chat_batches, chat_examples
from .chat_data import INSTRUCTION_TASK, ChatData
from .data import TaskData, TextData
from .generate import GenerationScores, GenerationSpec, generation_scores
from .images import ImageData, encode_images
from .lm_blocks import IGNORE_INDEX, lm_blocks
from .models import half_dtype, model_device


@dataclass
class TrainStats:
    steps: int
    num_examples: int
    loss_before: float
    loss_after: float
    compute_s: float
    peak_mem_mb: float


@dataclass
class EvalStats:
    loss: float
    score: float  # accuracy; perplexity for causal LM; ROUGE-L for instruction
    num_examples: int
    classes: ClassificationScores | None = None  # balanced accuracy, macro-F1, per class (classification)
    generation: GenerationScores | None = None  # ROUGE-L, exact match, response perplexity (instruction)


# -- batches ----------------------------------------------------------------------------
def classification_batches(data: TaskData, processor, batch_size: int, max_len: int, seed: int) -> Iterator[dict]:
    """Endless shuffled batches (reshuffled every pass) of encoded examples and labels."""
    rng = np.random.default_rng(seed)
    n = len(data)
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield encode_classification(data, idx, processor, max_len)


def encode_classification(data: TaskData, idx, processor, max_len: int) -> dict:
    """A labelled batch: tokenized texts, or images through the model's image processor."""
    if isinstance(data, ImageData):
        return encode_images(data, idx, processor)
    return encode_texts(data, idx, processor, max_len)


def encode_texts(data: TextData, idx, tokenizer, max_len: int) -> dict:
    batch = tokenizer(
        [data.texts[i] for i in idx], truncation=True, max_length=max_len, padding=True, return_tensors="pt"
    )
    batch["labels"] = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
    return dict(batch)


def lm_batches(data: TextData, tokenizer, batch_size: int, max_len: int, seed: int) -> Iterator[dict]:
    """Endless shuffled batches of causal-LM blocks (``flq.task.lm_blocks``: BOS/EOS as the tokenizer does)."""
    blocks = lm_blocks(data.texts, tokenizer, max_len)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(blocks))
        for start in range(0, len(blocks), batch_size):
            yield blocks.batch(order[start : start + batch_size])


def make_batches(
    task: str, data: TaskData, processor, batch_size: int, max_len: int, seed: int, packing: bool = False
) -> Iterator[dict]:
    """Endless training batches; ``processor`` is the tokenizer or the image processor.

    ``packing``: instruction examples joined into sequences of up to ``max_len`` tokens (``flq.task.chat``)."""
    if task == INSTRUCTION_TASK:
        return chat_batches(data, processor, batch_size, max_len, seed, packing)
    if task == "causal-lm":
        return lm_batches(data, processor, batch_size, max_len, seed)
    return classification_batches(data, processor, batch_size, max_len, seed)


# -- training ---------------------------------------------------------------------------
def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Per-class loss weights ``n / (k * n_c)`` over the k classes this client holds: each of its
    classes weighs as much in its loss as the others (a class it lacks gets weight 0, unused)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).float()
    present = counts > 0
    weights = torch.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def restricted_softmax_scale(labels: list[int], num_classes: int, alpha: float) -> torch.Tensor:
    """FedRS's per-class logit scale (Li & Zhan, 2021): 1 for the classes this client holds,
    ``alpha`` for those it lacks. Scaled down, a lacking class's logit draws less of the softmax,
    so local steps push its classifier weights away from this client's features less: a client
    that holds one class no longer teaches the shared head that the other classes are wrong."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes)
    return torch.where(counts > 0, 1.0, float(alpha))


def class_loss_options(
    labels: list[int], num_classes: int, class_weighting: str, restricted_softmax: float
) -> dict[str, torch.Tensor | None]:
    """``train_steps``' ``class_weights`` and ``logit_scale`` for a client's training labels
    under the run's ``class-weighting`` and ``restricted-softmax`` (None where off)."""
    return {
        "class_weights": balanced_class_weights(labels, num_classes) if class_weighting == "balanced" else None,
        "logit_scale": (
            restricted_softmax_scale(labels, num_classes, restricted_softmax) if restricted_softmax != 1.0 else None
        ),
    }


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``mu / 2 * ||w - w_global||^2`` over the trainable tensors (gradient ``mu * (w - w_global)``)."""
    return 0.5 * mu * sum(((p.float() - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))


def train_steps(
    model: torch.nn.Module,
    batches: Iterator[dict],
    max_steps: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    should_stop: Callable[[int, float], bool] | None = None,
    autocast: torch.dtype | None = None,
    proximal_mu: float = 0.0,
    max_grad_norm: float = 0.0,
    class_weights: torch.Tensor | None = None,
    control_correction: Mapping[str, torch.Tensor] | None = None,
    logit_scale: torch.Tensor | None = None,
) -> TrainStats:
    """Run up to ``max_steps`` AdamW steps on the trainable parameters of ``model``.

    ``autocast``: run forward passes under ``torch.autocast`` in this dtype (None: off).
    ``proximal_mu`` > 0: FedProx, a pull towards the adapter the model started from (the
    received global at this client's rank), per step, so it holds whatever the step count.
    ``max_grad_norm`` > 0: clip the gradients' global norm before each step.
    ``class_weights``: re-weight a classifier's cross-entropy by class (``balanced_class_weights``).
    ``logit_scale``: multiply a classifier's logits by class before its cross-entropy
    (``restricted_softmax_scale``).
    ``control_correction``: SCAFFOLD's ``c - c_i`` per trainable parameter, keyed by its name in
    ``model.named_parameters()`` (``LoraModel.parameter_names`` maps adapter keys to those names;
    every trainable parameter needs one). After every optimizer step each parameter moves by
    ``- learning_rate * correction``: under plain SGD that is the paper's ``gradient + c - c_i``;
    under AdamW it is applied to the step rather than the gradient, in the units SCAFFOLD's
    ``(x - y) / (K * lr)`` measures (the mean AdamW step direction; see flq.strategy.scaffold).
    The reported losses are the task's own (unweighted, without the proximal term).
    """
    device = model_device(model)
    inputs_dtype = float_input_dtype(model)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise RuntimeError("the model has no trainable parameters")
    corrections = _corrections(named, control_correction, device) if control_correction is not None else []
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    anchors = [p.detach().float().clone() for p in params] if proximal_mu > 0 else []
    # moved to the model's device once, not every step
    class_weights = class_weights.to(device) if class_weights is not None else None
    logit_scale = logit_scale.to(device) if logit_scale is not None else None
    # float16 gradients underflow without loss scaling (bfloat16 has float32's range).
    scaler = torch.amp.GradScaler(device.type) if autocast == torch.float16 else None
    train_mode(model)
    memory = PeakMemory(device)
    first_batch = None
    loss_before = float("nan")
    steps = examples = 0
    start = time.perf_counter()
    with memory:
        while steps < max_steps:
            if should_stop is not None and should_stop(steps, time.perf_counter() - start):
                break
            batch = _to_device(next(batches), device, inputs_dtype)
            if first_batch is None:
                first_batch = batch
            with _autocast(device, autocast):
                out = model(**batch)
            loss = out.loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {steps + 1}")
            if steps == 0:
                loss_before = loss.item()
            objective = loss
            if class_weights is not None or logit_scale is not None:
                logits = out.logits.float()
                if logit_scale is not None:
                    logits = logits * logit_scale
                objective = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=class_weights)
            if anchors:
                objective = objective + proximal_term(params, anchors, proximal_mu)
            if scaler is None:
                objective.backward()
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
            else:
                scaler.scale(objective).backward()
                if max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if corrections:
                with torch.no_grad():
                    for p, correction in zip(params, corrections, strict=True):
                        p.add_(correction, alpha=-learning_rate)
            steps += 1
            examples += int(batch["labels"].shape[0])
        compute_s = time.perf_counter() - start
        loss_after = _batch_loss(model, first_batch, autocast) if first_batch is not None else float("nan")
    train_mode(model)
    return TrainStats(steps, examples, loss_before, loss_after, compute_s, memory.peak_mb)


def _corrections(
    named: list[tuple[str, torch.nn.Parameter]], correction: Mapping[str, torch.Tensor], device: torch.device
) -> list[torch.Tensor]:
    """``correction`` in the order of ``named`` (the trainable parameters), checked by name and shape."""
    names = [name for name, _ in named]
    missing, extra = sorted(set(names) - set(correction)), sorted(set(correction) - set(names))
    if missing or extra:
        raise ValueError(f"control correction does not match the trainable parameters: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")  # fmt: skip
    out = []
    for name, p in named:
        value = correction[name]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"control correction for {name!r}: shape {tuple(value.shape)}, parameter {tuple(p.shape)}")
        out.append(value.to(device=device, dtype=p.dtype))
    return out


def train_mode(model: torch.nn.Module) -> None:
    """``model.train()``, except that frozen BatchNorm layers keep their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters(recurse=False)
        ):
            module.eval()


def autocast_dtype(mixed_precision: bool, bits: int, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a tier's ``mixed_precision`` hint, or None.

    Mixed precision means float32 weights with half-precision compute, so it applies to a
    32-bit backbone; a 16-bit backbone already computes in half precision and 4/8-bit ones in
    bitsandbytes' compute dtype. bfloat16 where supported, float16 otherwise (a Jetson's GPU).
    """
    return half_dtype(device) if mixed_precision and bits == 32 else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _batch_loss(model: torch.nn.Module, batch: dict, autocast: torch.dtype | None = None) -> float:
    model.eval()
    with torch.no_grad(), _autocast(model_device(model), autocast):
        return float(model(**batch).loss.item())


def float_input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype float inputs (pixel values) must have: the frozen backbone's float weights'."""
    for param in model.parameters():
        if param.is_floating_point() and not param.requires_grad:
            return param.dtype
    return torch.float32


def _to_device(batch: dict, device: torch.device, float_dtype: torch.dtype = torch.float32) -> dict:
    """Move a batch; float tensors (pixel values) take the backbone's dtype, ids stay integers."""
    return {k: v.to(device, dtype=float_dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}


# -- evaluation -------------------------------------------------------------------------
def evaluate(
    model: torch.nn.Module,
    task: str,
    data: TaskData,
    processor,
    batch_size: int,
    max_len: int,
    generation: GenerationSpec | None = None,
) -> EvalStats:
    """Accuracy and mean loss (classification), token perplexity (causal LM), or mean ROUGE-L of
    generated answers and the loss on answer tokens (instruction; ``generation`` says how many)."""
    if task == INSTRUCTION_TASK:
        assert isinstance(data, ChatData)
        model.eval()
        examples = chat_examples(data, processor, max_len)
        loss = scored_token_loss(model, examples, batch_size)
        scores = generation_scores(
            model, processor, examples, data.references(), perplexity(loss), batch_size, generation or GenerationSpec()
        )
        train_mode(model)
        return EvalStats(loss, scores.rouge_l, len(data), generation=scores)
    if task == "causal-lm":
        model.eval()
        mean = scored_token_loss(model, lm_blocks(data.texts, processor, max_len), batch_size)
        train_mode(model)
        return EvalStats(mean, perplexity(mean), len(data.texts))
    device = model_device(model)
    inputs_dtype = float_input_dtype(model)
    model.eval()
    total_loss = 0.0
    count = 0
    labels, predictions, num_classes = [], [], 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = range(start, min(start + batch_size, len(data)))
            batch = _to_device(encode_classification(data, idx, processor, max_len), device, inputs_dtype)
            out = model(**batch)
            total_loss += float(out.loss) * len(idx)
            labels.append(batch["labels"].cpu().numpy())
            predictions.append(out.logits.argmax(-1).cpu().numpy())
            num_classes = int(out.logits.shape[-1])
            count += len(idx)
    train_mode(model)
    classes = classification_scores(np.concatenate(labels), np.concatenate(predictions), num_classes)
    return EvalStats(total_loss / count, classes.accuracy, count, classes)


def scored_token_loss(model: torch.nn.Module, sequences, batch_size: int) -> float:
    """Mean loss per scored token over ``sequences`` (``LmBlocks`` or ``ChatExamples``: a length and
    ``batch(slice)``), each batch weighted by its scored tokens (labels past a row's first position
    that are not ``IGNORE_INDEX``); a batch with none scored has no loss and is skipped."""
    device = model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = _to_device(sequences.batch(slice(start, start + batch_size)), device)
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            if tokens:
                total += float(model(**batch).loss) * tokens
                count += tokens
    return total / max(count, 1)


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))  # capped: an untrained model's loss would overflow exp


# -- memory -----------------------------------------------------------------------------
class PeakMemory:
    """Peak memory over a block: CUDA max allocated, or the process's peak RSS on CPU.

    On Linux the RSS high-water mark is reset on entry (``/proc/self/clear_refs``), so the
    figure is this block's peak, not the process lifetime's; elsewhere it falls back to
    ``ru_maxrss`` (lifetime peak, an upper bound).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = rss_peak_mb()


def _reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def rss_peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_torch_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads (CPU tiers really get fewer cores)."""
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
