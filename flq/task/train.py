"""Local training and evaluation loops (plain PyTorch, no Flower).

Training runs a number of optimizer steps (not epochs), optionally stopped earlier by a
``should_stop(steps_done, measured_seconds)`` callback: that is how a client honours a time
budget on the run's clock. ``loss_before``/``loss_after`` are the loss on the same first
batch before the first update and after the last one, so their difference is a clean
per-round learning signal for the scheduler.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .data import TextData
from .models import model_device


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
    score: float            # accuracy, or perplexity for causal LM
    num_examples: int


# -- batches ----------------------------------------------------------------------------
def classification_batches(data: TextData, tokenizer, batch_size: int, max_len: int, seed: int) -> Iterator[dict]:
    """Endless shuffled batches (reshuffled every pass) of tokenized texts and labels."""
    rng = np.random.default_rng(seed)
    n = len(data.texts)
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield encode_classification(data, idx, tokenizer, max_len)


def encode_classification(data: TextData, idx, tokenizer, max_len: int) -> dict:
    batch = tokenizer(
        [data.texts[i] for i in idx], truncation=True, max_length=max_len, padding=True, return_tensors="pt"
    )
    batch["labels"] = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
    return dict(batch)


def lm_blocks(data: TextData, tokenizer, block_len: int) -> torch.Tensor:
    """Concatenate texts (eos-separated) and cut them into full blocks of ``block_len`` tokens."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    ids: list[int] = []
    for text in data.texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    n_blocks = len(ids) // block_len
    if n_blocks == 0:
        # Too little text for one block: pad a single block and mask the padding out of the loss.
        return torch.tensor([ids + [eos] * (block_len - len(ids))], dtype=torch.long), len(ids)
    return torch.tensor(ids[: n_blocks * block_len], dtype=torch.long).view(n_blocks, block_len), None


def lm_batches(data: TextData, tokenizer, batch_size: int, max_len: int, seed: int) -> Iterator[dict]:
    blocks, valid = lm_blocks(data, tokenizer, max_len)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(blocks))
        for start in range(0, len(blocks), batch_size):
            yield _lm_batch(blocks[order[start : start + batch_size]], valid)


def _lm_batch(input_ids: torch.Tensor, valid: int | None) -> dict:
    labels = input_ids.clone()
    if valid is not None:
        labels[:, valid:] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def make_batches(task: str, data: TextData, tokenizer, batch_size: int, max_len: int, seed: int) -> Iterator[dict]:
    if task == "causal-lm":
        return lm_batches(data, tokenizer, batch_size, max_len, seed)
    return classification_batches(data, tokenizer, batch_size, max_len, seed)


# -- training ---------------------------------------------------------------------------
def train_steps(
    model: torch.nn.Module,
    batches: Iterator[dict],
    max_steps: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    should_stop: Callable[[int, float], bool] | None = None,
) -> TrainStats:
    """Run up to ``max_steps`` AdamW steps on the trainable parameters of ``model``."""
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    model.train()
    memory = PeakMemory(device)
    first_batch = None
    loss_before = float("nan")
    steps = examples = 0
    start = time.perf_counter()
    with memory:
        while steps < max_steps:
            if should_stop is not None and should_stop(steps, time.perf_counter() - start):
                break
            batch = _to_device(next(batches), device)
            if first_batch is None:
                first_batch = batch
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {steps + 1}")
            if steps == 0:
                loss_before = loss.item()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            examples += int(batch["input_ids"].shape[0])
        compute_s = time.perf_counter() - start
        loss_after = _batch_loss(model, first_batch) if first_batch is not None else float("nan")
    model.train()
    return TrainStats(steps, examples, loss_before, loss_after, compute_s, memory.peak_mb)


def _batch_loss(model: torch.nn.Module, batch: dict) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss.item())


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# -- evaluation -------------------------------------------------------------------------
def evaluate(model: torch.nn.Module, task: str, data: TextData, tokenizer, batch_size: int, max_len: int) -> EvalStats:
    """Accuracy and mean loss (classification) or token perplexity (causal LM)."""
    device = model_device(model)
    model.eval()
    total_loss = 0.0
    count = correct = 0
    with torch.no_grad():
        if task == "causal-lm":
            blocks, valid = lm_blocks(data, tokenizer, max_len)
            for start in range(0, len(blocks), batch_size):
                batch = _to_device(_lm_batch(blocks[start : start + batch_size], valid), device)
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                total_loss += float(model(**batch).loss) * tokens
                count += tokens
            model.train()
            mean = total_loss / max(count, 1)
            return EvalStats(mean, math.exp(min(mean, 50.0)), len(data.texts))
        for start in range(0, len(data.texts), batch_size):
            idx = range(start, min(start + batch_size, len(data.texts)))
            batch = _to_device(encode_classification(data, idx, tokenizer, max_len), device)
            out = model(**batch)
            total_loss += float(out.loss) * len(idx)
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            count += len(idx)
    model.train()
    return EvalStats(total_loss / count, correct / count, count)


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
