"""Data sources load into (texts, labels), and bad data fails with a clear message."""

import json

import pytest

from flq.task.data import MAX_TEXT_CHARS, DataError, load_bbc_news, load_text_data


def test_bbc_news_is_the_embedded_default():
    data = load_bbc_news()
    assert len(data.texts) == 2225
    assert data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert sorted(set(data.labels)) == [0, 1, 2, 3, 4]


def test_csv_with_string_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,topic\nhello world,b\nbye world,a\nagain,b\n")
    data = load_text_data(str(path), "sequence-classification", text_column="body", label_column="topic")
    assert data.texts == ["hello world", "bye world", "again"]
    assert data.label_names == ["a", "b"] and data.labels == [1, 0, 1]


def test_jsonl_with_integer_labels_sorts_numerically(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "label": lab}) for i, lab in enumerate([10, 2, 2, 10])))
    data = load_text_data(str(path), "sequence-classification")
    assert data.label_names == ["2", "10"] and data.labels == [1, 0, 0, 1]


def test_folder_per_class(tmp_path):
    for cls in ("neg", "pos"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.txt").write_text(f"{cls} {i}")
    data = load_text_data(str(tmp_path), "sequence-classification")
    assert data.label_names == ["neg", "pos"] and data.labels == [0, 0, 1, 1]


def test_plain_text_for_causal_lm(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first paragraph\n\nsecond one\n\n\nthird")
    data = load_text_data(str(path), "causal-lm")
    assert data.texts == ["first paragraph", "second one", "third"] and data.labels is None


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, "not found"),
        ("text,label\nhi,1\n", {"label_column": "topic"}, r"no label column 'topic' \(columns: \['label', 'text'\]\)"),
        ("txt,label\nhi,1\n", {}, "no text column 'text'"),
        ("text,label\nhi,1\n,0\n", {}, "row 2 has an empty or missing 'text'"),
        ("text,label\nhi,1\nho,1\n", {}, "at least 2 distinct labels"),
        ("text,label\n", {}, "no rows"),
    ],
)
def test_bad_csv_gives_a_clear_error(tmp_path, content, kwargs, message):
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_text_data(str(path), "sequence-classification", **kwargs)


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_text_data(str(path), "sequence-classification")


def test_absurdly_long_text_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "x" * (MAX_TEXT_CHARS + 1), "label": 0}, {"text": "y", "label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"text 0 has 1,000,001 characters"):
        load_text_data(str(path), "sequence-classification")


def test_plain_text_cannot_be_classified(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("words")
    with pytest.raises(DataError, match="plain text has no labels"):
        load_text_data(str(path), "sequence-classification")


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported file type"):
        load_text_data(str(path), "sequence-classification")
