"""Conversations to token sequences: the tokenizer's chat template, loss on the answers only.

A conversation is rendered with the tokenizer's own chat template (``tokenizer.chat_template``),
or, for tokenizers without one, with ``FALLBACK_CHAT_TEMPLATE`` (``### Instruction:`` /
``### Response:`` sections, each answer followed by EOS). Rendering is incremental: the text up
to each assistant turn (with the template's generation prompt) must be a prefix of the text
with that turn, so the tokens of every assistant turn, and the template's end-of-turn marker
after it, are known exactly; they are the only tokens scored (``labels``), everything else is
context (``IGNORE_INDEX``). The prompt a model is given at generation time is exactly the
tokens before the last answer, so training and generation see the same text.

BOS follows the tokenizer's convention (``flq.task.lm_blocks.adds_bos``): templates that write
BOS themselves (Gemma, Llama) are tokenized without adding another; otherwise a BOS is put first
if the tokenizer adds one by default.

An example longer than ``max-seq-length`` loses the end of its last user message (the article
of a summarisation task, say), never its answer; if that is not enough, the oldest tokens go.
``packing`` joins consecutive short examples into one sequence of up to ``max-seq-length``
tokens (fewer padded positions; attention then crosses examples, as in TRL's classic packing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .chat_data import ChatData
from .data import DataError
from .lm_blocks import IGNORE_INDEX, adds_bos, separator_id

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{% if eos_token %}{{ eos_token }}{% endif %}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
SHORTEN_ATTEMPTS = 4  # re-rendering after cutting the prompt: tokenization at the cut may differ a little


@dataclass
class ChatExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on context tokens

    @property
    def prompt_len(self) -> int:
        """Tokens before the last answer: what a model is given to generate it."""
        end = len(self.labels)
        while end > 0 and self.labels[end - 1] == IGNORE_INDEX:  # the template's text after the answer
            end -= 1
        start = end
        while start > 0 and self.labels[start - 1] != IGNORE_INDEX:
            start -= 1
        return start


def chat_template(tokenizer) -> str:
    """The tokenizer's chat template, or the documented fallback when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    return template or FALLBACK_CHAT_TEMPLATE


def _render_text(tokenizer, template: str, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def render_conversation(tokenizer, messages: list[dict]) -> ChatExample:
    """Tokens and labels of one whole conversation (answers scored, context not), untruncated."""
    template = chat_template(tokenizer)
    pieces: list[tuple[str, bool]] = []  # (text, scored)
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_text(tokenizer, template, messages[:k], generation_prompt=True)
        upto = _render_text(tokenizer, template, messages[: k + 1], generation_prompt=False)
        if not before.startswith(done) or not upto.startswith(before):
            raise DataError(
                "the chat template does not render conversations incrementally (the text before an answer is "
                "not a prefix of the text with it), so the answer tokens cannot be found"
            )
        pieces += [(before[len(done) :], False), (upto[len(before) :], True)]
        done = upto
    tail = _render_text(tokenizer, template, messages, generation_prompt=False)[len(done) :]
    pieces.append((tail, False))
    ids: list[int] = []
    labels: list[int] = []
    for text, scored in pieces:
        if not text:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if scored else [IGNORE_INDEX] * len(piece)
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids, labels = [tokenizer.bos_token_id, *ids], [IGNORE_INDEX, *labels]
    return ChatExample(ids, labels)


def encode_conversation(tokenizer, messages: list[dict], max_len: int) -> ChatExample:
    """``render_conversation`` fitted into ``max_len`` tokens (see the module doc)."""
    example = render_conversation(tokenizer, messages)
    for _ in range(SHORTEN_ATTEMPTS):
        overflow = len(example.input_ids) - max_len
        if overflow <= 0:
            return example
        shorter = _shorten_last_prompt(tokenizer, messages, overflow)
        if shorter is None:
            break
        messages = shorter
        example = render_conversation(tokenizer, messages)
    ids, labels = example.input_ids, example.labels
    if len(ids) <= max_len:
        return example
    if len(ids) - example.prompt_len < max_len:  # the answer fits: drop the oldest context
        keep_bos = adds_bos(tokenizer)
        cut = len(ids) - (max_len - keep_bos)
        head_ids, head_labels = (ids[:1], labels[:1]) if keep_bos else ([], [])
        return ChatExample(head_ids + ids[cut:], head_labels + labels[cut:])
    return ChatExample(ids[:max_len], labels[:max_len])  # the answer alone is too long: its end goes


def _shorten_last_prompt(tokenizer, messages: list[dict], overflow: int) -> list[dict] | None:
    """``messages`` with the last user message before the answer cut by ``overflow`` tokens (and a
    few more, for re-tokenization at the cut), or None if there is none left to cut."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            break
    else:
        return None
    tokens = tokenizer(messages[index]["content"], add_special_tokens=False)["input_ids"]
    keep = len(tokens) - overflow - 2
    if keep <= 0:
        return None
    shorter = [dict(m) for m in messages]
    shorter[index]["content"] = tokenizer.decode(tokens[:keep], skip_special_tokens=True)
    return shorter


@dataclass
class ChatExamples:
    """Variable-length token sequences, padded per batch (right side) to the batch's longest."""

    sequences: list[ChatExample]
    pad_id: int

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(self, index) -> dict:
        chosen = [self.sequences[i] for i in np.arange(len(self.sequences))[index]]
        width = max(len(s.input_ids) for s in chosen)
        input_ids = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(chosen):
            n = len(seq.input_ids)
            input_ids[row, :n] = torch.tensor(seq.input_ids)
            labels[row, :n] = torch.tensor(seq.labels)
            mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else separator_id(tokenizer)


def chat_examples(data: ChatData, tokenizer, max_len: int) -> ChatExamples:
    """Every conversation of ``data`` encoded, one sequence each."""
    return ChatExamples([encode_conversation(tokenizer, c, max_len) for c in data.conversations], pad_id(tokenizer))


def pack(examples: Sequence[ChatExample], max_len: int) -> list[ChatExample]:
    """Consecutive examples joined while they fit in ``max_len`` tokens (none is split)."""
    packed: list[ChatExample] = []
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.input_ids) > max_len:
            packed.append(ChatExample(ids, labels))
            ids, labels = [], []
        ids = ids + example.input_ids
        labels = labels + example.labels
    if ids:
        packed.append(ChatExample(ids, labels))
    return packed


def chat_batches(
    data: ChatData, tokenizer, batch_size: int, max_len: int, seed: int, packing: bool = False
) -> Iterator[dict]:
    """Endless shuffled training batches (reshuffled, and with packing re-packed, every pass)."""
    examples = chat_examples(data, tokenizer, max_len)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(examples))
        if packing:
            sequences = ChatExamples(pack([examples.sequences[i] for i in order], max_len), examples.pad_id)
            order = np.arange(len(sequences))
        else:
            sequences = examples
        for start in range(0, len(sequences), batch_size):
            yield sequences.batch(order[start : start + batch_size])
