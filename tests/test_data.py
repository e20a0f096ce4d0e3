"""Data sources load into (texts, labels), and bad data fails with a clear message."""

import hashlib
import json

import pytest

from flq.task.data import MAX_TEXT_CHARS, DataError, load_bbc_news, load_text_data

# Digests of the embedded BBC News data as loaded (texts, labels, label names) before the
# readers moved to `datasets`' loaders: the main job must see exactly the same examples.
BBC_DIGESTS = {
    "sequence-classification": "5afcacec27a672623d56b703e6a26998bc5a08f5232be60cbc64e93d8b5ad2d7",
    "causal-lm": "34c31e85c26c92749566a2eaa4440b9a281bd45b1b2458e4b2f649315c0fd42e",
}


def test_bbc_news_is_the_embedded_default():
    data = load_bbc_news()
    assert len(data.texts) == 2225
    assert data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert sorted(set(data.labels)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("task", sorted(BBC_DIGESTS))
def test_the_embedded_default_loads_exactly_as_before(task):
    data = load_text_data("bbc-news", task)
    digest = hashlib.sha256(json.dumps([data.texts, data.labels, data.label_names]).encode()).hexdigest()
    assert digest == BBC_DIGESTS[task]


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
    path = tmp_path / "d.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        load_text_data(str(path), "sequence-classification")


# -- data-encoding -------------------------------------------------------------------------
LATIN1_CSV = "body,topic\ncaf\u00e9 cr\u00e8me,b\nna\u00efve,a\nagain,b\n"


def test_a_non_utf8_csv_names_the_key_that_reads_it(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(LATIN1_CSV.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: cannot read as utf-8 text.*0xe9.*set data-encoding"):
        load_text_data(str(path), "sequence-classification", text_column="body", label_column="topic")
    data = load_text_data(
        str(path), "sequence-classification", text_column="body", label_column="topic", encoding="latin-1"
    )
    assert data.texts == ["caf\u00e9 cr\u00e8me", "na\u00efve", "again"]
    assert data.label_names == ["a", "b"] and data.labels == [1, 0, 1]


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16"])
def test_jsonl_and_plain_text_are_decoded_with_data_encoding(tmp_path, encoding):
    rows = [{"text": "\u201csmart\u201d quotes \u20ac5", "label": "x"}, {"text": "plain", "label": "y"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_bytes("\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode(encoding))
    with pytest.raises(DataError, match="set data-encoding"):
        load_text_data(str(jsonl), "sequence-classification")
    data = load_text_data(str(jsonl), "sequence-classification", encoding=encoding)
    assert data.texts == [r["text"] for r in rows] and data.label_names == ["x", "y"]
    txt = tmp_path / "corpus.txt"
    txt.write_bytes("\u201cone\u201d\n\ntwo \u20ac".encode(encoding))
    with pytest.raises(DataError, match="set data-encoding"):
        load_text_data(str(txt), "causal-lm")
    assert load_text_data(str(txt), "causal-lm", encoding=encoding).texts == ["\u201cone\u201d", "two \u20ac"]


def test_a_folder_of_text_files_is_decoded_with_data_encoding(tmp_path):
    for cls in ("neg", "pos"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "0.txt").write_bytes(f"{cls} caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match="set data-encoding"):
        load_text_data(str(tmp_path), "sequence-classification")
    data = load_text_data(str(tmp_path), "sequence-classification", encoding="latin-1")
    assert data.texts == ["neg caf\u00e9", "pos caf\u00e9"]


# -- datasets' loaders ---------------------------------------------------------------------
def test_csv_cells_stay_strings_as_written(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,n\nNone,01,1\nNA,1,2\n123,1,3\n")
    data = load_text_data(str(path), "sequence-classification")
    assert data.texts == ["None", "NA", "123"]  # no "missing value" guessing, no numbers
    assert data.label_names == ["1", "01"] or data.label_names == ["01", "1"]
    assert len(set(data.labels)) == 2  # "01" and "1" stay two labels


def test_a_csv_with_a_byte_order_mark_keeps_its_first_column_a_string(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\n01,a\n2,b\n".encode("utf-8-sig"))
    data = load_text_data(str(path), "sequence-classification")
    assert data.texts == ["01", "2"] and data.label_names == ["a", "b"]


def test_a_quoted_multiline_csv_cell(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"line one\nline two, with comma",a\nsecond,b\n')
    data = load_text_data(str(path), "sequence-classification")
    assert data.texts == ["line one\nline two, with comma", "second"]


def test_a_json_array_file_and_mixed_label_types(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]))
    assert load_text_data(str(path), "sequence-classification").texts == ["a", "b"]
    mixed = tmp_path / "m.jsonl"
    mixed.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "two"}\n')
    data = load_text_data(str(mixed), "sequence-classification")
    assert data.label_names == ["1", "two"] and data.labels == [0, 1]


def test_parquet_keeps_its_class_label_names(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["sport", "arts", "tech"])})
    Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [2, 0, 1, 2]}, features=features).to_parquet(
        tmp_path / "d.parquet"
    )
    data = load_text_data(str(tmp_path / "d.parquet"), "sequence-classification")
    assert data.texts == ["a", "b", "c", "d"]
    assert data.label_names == ["sport", "arts", "tech"] and data.labels == [2, 0, 1, 2]
    plain = tmp_path / "p.parquet"
    Dataset.from_dict({"body": ["x", "y"], "topic": ["b", "a"]}).to_parquet(plain)
    data = load_text_data(str(plain), "sequence-classification", text_column="body", label_column="topic")
    assert data.label_names == ["a", "b"] and data.labels == [1, 0]
    assert load_text_data(str(plain), "causal-lm", text_column="body").texts == ["x", "y"]
