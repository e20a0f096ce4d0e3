"""Instruction data: chat templates, answer-only labels, BOS, truncation, packing (flq.task.chat, chat_data)."""

import json

import pytest
import torch

from flq.task.chat import (
    FALLBACK_CHAT_TEMPLATE,
    ChatExample,
    chat_examples,
    chat_template,
    encode_conversation,
    pack,
    render_conversation,
)
from flq.task.chat_data import ChatColumns, ChatData, bbc_headlines, load_chat_data
from flq.task.data import DataError
from flq.task.lm_blocks import IGNORE_INDEX
from harness.tiny_models import make_word_tokenizer

WORDS = "the cat sat on a mat dog ran to park ### Instruction Response : user assistant system be kind".split()
# A template in the style of ChatML/Gemma: it writes BOS itself, and marks turns with role names.
BOS_WRITING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
CHAT = [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": "on a mat"}]


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def scored(example):
    return [t for t in example.labels if t != IGNORE_INDEX]


@pytest.mark.parametrize("adds_bos", [True, False])
def test_the_fallback_template_scores_the_answer_and_eos_only(adds_bos):
    tok = make_word_tokenizer(WORDS, adds_bos=adds_bos)
    assert chat_template(tok) == FALLBACK_CHAT_TEMPLATE  # no template of its own
    example = render_conversation(tok, CHAT)
    answer = tok("on a mat", add_special_tokens=False)["input_ids"]
    assert scored(example) == [*answer, tok.eos_token_id]
    names = tokens(tok, example.input_ids)
    assert names.count("<s>") == (1 if adds_bos else 0) and (names[0] == "<s>") == adds_bos
    # The generation prompt is everything before the answer: "... ### Response :".
    assert tokens(tok, example.input_ids[: example.prompt_len])[-3:] == ["###", "Response", ":"]
    assert example.input_ids[example.prompt_len :][: len(answer)] == answer


def test_a_template_that_writes_bos_gets_no_second_one():
    tok = make_word_tokenizer(WORDS, adds_bos=True)
    tok.chat_template = BOS_WRITING_TEMPLATE
    example = render_conversation(tok, CHAT)
    names = tokens(tok, example.input_ids)
    assert names[0] == "<s>" and names.count("<s>") == 1
    assert tokens(tok, scored(example)) == ["on", "a", "mat", "</s>"]
    assert tokens(tok, example.input_ids[: example.prompt_len])[-2:] == ["assistant", ":"]


def test_every_assistant_turn_is_scored_and_no_user_or_system_turn():
    tok = make_word_tokenizer(WORDS, adds_bos=False)
    tok.chat_template = BOS_WRITING_TEMPLATE.replace("{{ bos_token }}", "")
    conversation = [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "sat"},
        {"role": "user", "content": "the dog"},
        {"role": "assistant", "content": "ran to park"},
    ]
    example = render_conversation(tok, conversation)
    assert tokens(tok, scored(example)) == ["sat", "</s>", "ran", "to", "park", "</s>"]
    # The prompt for generation ends before the last answer and holds the first one as context.
    prompt = tokens(tok, example.input_ids[: example.prompt_len])
    assert prompt[-2:] == ["assistant", ":"] and "sat" in prompt and "ran" not in prompt


def test_a_template_that_is_not_incremental_is_refused():
    tok = make_word_tokenizer(WORDS, adds_bos=False)
    # Renders the conversation backwards: the text before an answer is not a prefix of the text with it.
    tok.chat_template = "{% for m in messages|reverse %}{{ m['content'] }} {% endfor %}"
    with pytest.raises(DataError, match="incrementally"):
        render_conversation(tok, CHAT)


def test_a_long_prompt_loses_its_end_never_the_answer():
    tok = make_word_tokenizer(WORDS, adds_bos=True)
    long_prompt = " ".join(["the cat sat on a mat"] * 20)
    conversation = [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "dog ran to park"}]
    full = render_conversation(tok, conversation)
    example = encode_conversation(tok, conversation, max_len=24)
    assert len(full.input_ids) > 24 >= len(example.input_ids)
    assert scored(example) == scored(full)  # the whole answer, and its EOS
    names = tokens(tok, example.input_ids)
    assert names[0] == "<s>" and names[1:4] == ["###", "Instruction", ":"]  # the prompt's start is kept
    assert tokens(tok, example.input_ids[: example.prompt_len])[-3:] == ["###", "Response", ":"]


def test_an_answer_longer_than_the_block_keeps_its_beginning():
    tok = make_word_tokenizer(WORDS, adds_bos=False)
    conversation = [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "dog ran " * 20}]
    example = encode_conversation(tok, conversation, max_len=16)
    assert len(example.input_ids) == 16 and scored(example)[:2] == tok("dog ran", add_special_tokens=False)["input_ids"]


def test_packing_joins_examples_without_splitting_any():
    seqs = [ChatExample([1] * n, [IGNORE_INDEX] * (n - 1) + [n]) for n in (3, 4, 5, 2, 6)]
    packed = pack(seqs, max_len=8)
    assert [len(p.input_ids) for p in packed] == [7, 7, 6]  # 3+4, 5+2, 6
    assert sorted(t for p in packed for t in p.labels if t != IGNORE_INDEX) == [2, 3, 4, 5, 6]


def test_batches_pad_on_the_right_and_mask_padding():
    tok = make_word_tokenizer(WORDS, adds_bos=False)
    data = ChatData([CHAT, [{"role": "user", "content": "the"}, {"role": "assistant", "content": "cat"}]])
    examples = chat_examples(data, tok, 64)
    batch = examples.batch([0, 1])
    lengths = [len(s.input_ids) for s in examples.sequences]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths) :] == IGNORE_INDEX).all()
    assert (batch["input_ids"][short, min(lengths) :] == tok.pad_token_id).all()
    assert torch.equal(batch["labels"][short, : min(lengths)], torch.tensor(examples.sequences[short].labels))


# -- data ---------------------------------------------------------------------------------
def test_prompt_response_rows_with_system_and_category(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,response,system,topic\nhi,hello,be brief,greet\nbye,see you,,leave\nyo,hey,,greet\n")
    data = load_chat_data(str(path), ChatColumns(), label_column="topic")
    assert data.conversations[0] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert data.conversations[1][0]["role"] == "user"  # an empty system cell adds none
    assert data.labels == [0, 1, 0] and data.label_names == ["greet", "leave"]
    assert data.references() == ["hello", "see you", "hey"]
    assert data.take([2]).conversations[0][-1]["content"] == "hey"


def test_messages_rows_and_a_default_system_prompt(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "c"},
                      {"role": "assistant", "content": "d"}]},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_chat_data(str(path), ChatColumns(system_prompt="be kind"))
    assert data.conversations[0][0] == {"role": "system", "content": "be kind"}
    assert data.conversations[1][0] == {"role": "system", "content": "own"}  # its own system message stays
    assert data.labels is None


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "a"}], "last message must be a non-empty assistant answer"),
        ([{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}], "role 'robot'"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}], "text content"),
        ("not a list", "non-empty list"),
    ],
)
def test_bad_conversations_are_refused_naming_the_row(tmp_path, messages, message):
    path = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match=rf"row 2.*{message}"):
        load_chat_data(str(path))


def test_rows_without_the_columns_say_which_keys_to_set(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match="prompt-column and response-column"):
        load_chat_data(str(path))
    data = load_chat_data(str(path), ChatColumns(prompt="question", response="answer"))
    assert data.references() == ["a"]


def test_bbc_headlines_pairs_each_article_with_its_title():
    data = bbc_headlines()
    assert len(data) == 2225 and data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    first = data.conversations[0]
    assert first[-1] == {"role": "assistant", "content": "Ad sales boost Time Warner profit"}
    assert first[0]["content"].startswith("Write the headline") and "Ad sales boost" not in first[0]["content"]
