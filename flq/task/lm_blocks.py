"""Causal-LM blocks from documents, following the tokenizer's BOS/EOS conventions.

A model sees at training and evaluation what it sees in use: every document ends with EOS,
and if the tokenizer puts a BOS token first by default (``tokenizer("x").input_ids[0] ==
tokenizer.bos_token_id``: Gemma, Llama), every document also starts with BOS. Gemma-family
models depend on it: without BOS their perplexity is several times higher.

Two packings, by that convention:

* **BOS tokenizers: blocks at document boundaries.** Each block starts with BOS: a document
  longer than a block is cut into pieces of up to ``block_len - 1`` tokens, each behind its own BOS
  (a continuation reads like a document start, never like bare mid-text); whole documents (and
  a long one's last piece) share a block while they fit; what is left of a block is padding,
  masked from attention and loss. BOS is never a loss target (no model generates it).
* **Tokenizers without BOS (SmolLM2, GPT-2, Qwen, BERT-style): one stream.** Documents are
  concatenated, EOS-separated (the pad token where there is no EOS), and cut into full blocks;
  if the text fills no block, one block is padded and the padding masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # labels the loss skips (transformers' convention)


@dataclass
class LmBlocks:
    """``(n, block_len)`` token blocks with their attention mask (0: padding) and labels."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # IGNORE_INDEX where a token is not scored (padding, BOS)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, index) -> dict:
        """The blocks at ``index`` (indices or a slice) as a model batch."""
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
        }

    @property
    def scored_tokens(self) -> int:
        """Tokens the loss predicts: labels past each block's first position that are not ignored."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def adds_bos(tokenizer) -> bool:
    """True if the tokenizer puts its BOS token first by default."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def separator_id(tokenizer) -> int:
    """EOS, or the pad token for tokenizers without one (BERT-style)."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id


def lm_blocks(texts: Sequence[str], tokenizer, block_len: int) -> LmBlocks:
    """Tokenize ``texts`` (one document each) into blocks of ``block_len`` tokens (see the module doc)."""
    if block_len < 2:
        raise ValueError(f"block length must be >= 2, got {block_len}")
    eos = separator_id(tokenizer)
    docs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    if adds_bos(tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return document_blocks(docs, block_len, tokenizer.bos_token_id, eos, pad)
    return stream_blocks(docs, block_len, eos)


def stream_blocks(docs: Sequence[Sequence[int]], block_len: int, eos: int) -> LmBlocks:
    """Concatenate documents, each followed by ``eos``, and cut the stream into full blocks."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(doc)
        ids.append(eos)
    n_blocks = len(ids) // block_len
    if n_blocks == 0:
        # Too little text for one block: pad a single block and mask the padding out.
        valid = len(ids)
        input_ids = torch.tensor([ids + [eos] * (block_len - valid)], dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        mask[:, :valid] = 1
        labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
        return LmBlocks(input_ids, mask, labels)
    input_ids = torch.tensor(ids[: n_blocks * block_len], dtype=torch.long).view(n_blocks, block_len)
    return LmBlocks(input_ids, torch.ones_like(input_ids), input_ids.clone())


def document_blocks(docs: Sequence[Sequence[int]], block_len: int, bos: int, eos: int, pad: int) -> LmBlocks:
    """Blocks that each begin with BOS at a document (or long document's piece) boundary."""
    piece_len = block_len - 1  # room behind a BOS
    blocks: list[list[int]] = []
    starts: list[list[int]] = []  # where each block's BOS tokens are (by position, not by id)
    current: list[int] = []
    current_starts: list[int] = []
    for doc in docs:
        seq = [*doc, eos]
        cuts = list(range(0, len(seq), piece_len)) + [len(seq)]
        if len(cuts) > 2 and piece_len > 1 and cuts[-1] - cuts[-2] == 1:
            cuts[-2] -= 1  # no piece of EOS alone (a "BOS EOS" empty document): the last two share
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            piece = seq[start:end]
            if len(current) + 1 + len(piece) > block_len:
                blocks.append(current)
                starts.append(current_starts)
                current, current_starts = [], []
            current_starts.append(len(current))
            current.extend([bos, *piece])
    if current:
        blocks.append(current)
        starts.append(current_starts)
    input_ids = torch.full((len(blocks), block_len), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, (block, bos_at) in enumerate(zip(blocks, starts, strict=True)):
        input_ids[i, : len(block)] = torch.tensor(block, dtype=torch.long)
        mask[i, : len(block)] = 1
        labels[i, : len(block)] = input_ids[i, : len(block)]
        labels[i, bos_at] = IGNORE_INDEX
    return LmBlocks(input_ids, mask, labels)
