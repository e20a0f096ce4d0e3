"""Instruction data: conversations whose last message is the answer to learn.

Every source becomes a ``ChatData``: one conversation per example (a list of
``{"role", "content"}`` messages, roles ``system``/``user``/``assistant``, the last one an
``assistant`` answer), with optional integer labels (a category: what ``dirichlet`` and
``pathological`` split clients by). Rows give either

* a ``prompt`` and a ``response`` column (and optionally a ``system`` one), or
* a ``messages`` column: a chat as a list of ``{"role", "content"}`` (JSON/JSONL/Parquet),

under the names the run config's ``prompt-column``/``response-column``/``system-column``/
``messages-column`` set. ``bbc-headlines`` is the embedded task: the prompt is a BBC News
article, the response its title (the article's first line), the label its category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import ROW_BUILDERS, DataError, load_bbc_news, read_hub_rows, read_rows, row_labels

INSTRUCTION_TASK = "instruction"
# Tasks a causal LM does (no head, no labels for the model): plain text, and instruction/answer pairs.
GENERATIVE_TASKS = ("causal-lm", INSTRUCTION_TASK)
ROLES = ("system", "user", "assistant")
EMBEDDED_CHAT = ("bbc-headlines",)
HEADLINE_INSTRUCTION = "Write the headline of this news article.\n\n"


@dataclass(frozen=True)
class ChatColumns:
    """Where a row keeps its conversation (the run config's column keys)."""

    prompt: str = "prompt"
    response: str = "response"
    system: str = "system"
    messages: str = "messages"
    system_prompt: str = ""  # a system message for conversations that carry none


@dataclass
class ChatData:
    conversations: list[list[dict]]
    labels: list[int] | None = None
    label_names: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.conversations:
            raise DataError("the data source contains no conversations")
        if self.labels is not None and len(self.labels) != len(self.conversations):
            raise DataError("conversations and labels differ in length")

    @property
    def num_labels(self) -> int:
        return len(self.label_names or [])

    def __len__(self) -> int:
        return len(self.conversations)

    def take(self, indices: Sequence[int]) -> ChatData:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return ChatData([self.conversations[i] for i in indices], labels, self.label_names)

    def references(self) -> list[str]:
        """Each conversation's answer (its last message's content)."""
        return [c[-1]["content"] for c in self.conversations]


def load_chat_data(
    source: str, columns: ChatColumns = ChatColumns(), label_column: str = "label", encoding: str = "utf-8"
) -> ChatData:
    """Load ``source`` (``bbc-headlines``, a CSV/JSON/JSONL/Parquet file, or ``hf:NAME[:SPLIT]``); rows
    with a ``label_column`` give each conversation a category (for label partitioners)."""
    if source == "bbc-headlines":
        data = bbc_headlines()
    elif source.startswith("hf:"):
        data = chats_from_rows(*read_hub_rows(source[3:]), columns, label_column)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"data source {source!r} not found (a file, 'bbc-headlines' or 'hf:NAME'); set data")
        if path.suffix.lower() not in ROW_BUILDERS:
            raise DataError(
                f"{path}: instruction data must be a {'/'.join(ROW_BUILDERS)} file of prompt/response rows "
                "or chat messages"
            )
        rows, features = read_rows(path, encoding)
        data = chats_from_rows(str(path), rows, features, columns, label_column)
    if columns.system_prompt:
        data.conversations = [with_system_prompt(c, columns.system_prompt) for c in data.conversations]
    return data


def bbc_headlines() -> ChatData:
    """BBC News as headline generation: prompt = instruction + article body, response = its title."""
    news = load_bbc_news()
    conversations = []
    for i, text in enumerate(news.texts):
        title, _, body = text.strip().partition("\n")
        if not title.strip() or not body.strip():
            raise DataError(f"bbc-news article {i} has no title line and body")
        conversations.append(
            [
                {"role": "user", "content": HEADLINE_INSTRUCTION + body.strip()},
                {"role": "assistant", "content": title.strip()},
            ]
        )
    return ChatData(conversations, news.labels, news.label_names)


def chats_from_rows(
    where: str, rows: list[dict], features: dict, columns: ChatColumns, label_column: str = "label"
) -> ChatData:
    """Conversations from rows of a messages column, or of prompt/response(/system) columns; a
    ``label_column`` gives each a category (``datasets`` ``features`` keep a ClassLabel's names)."""
    if not rows:
        raise DataError(f"{where}: no rows")
    first = rows[0]
    if columns.messages in first:
        messages = columns.messages
        conversations = [check_messages(row.get(messages), f"{where}: row {i}") for i, row in enumerate(rows, 1)]
    elif columns.prompt in first and columns.response in first:
        conversations = [_prompt_response(row, columns, f"{where}: row {i}") for i, row in enumerate(rows, 1)]
    else:
        raise DataError(
            f"{where}: no {columns.messages!r} column and no {columns.prompt!r}/{columns.response!r} columns "
            f"(columns: {sorted(first)}); set messages-column, or prompt-column and response-column"
        )
    if label_column not in first:
        return ChatData(conversations)
    labels, names = row_labels(where, rows, label_column, features)
    return ChatData(conversations, labels, names)


def _prompt_response(row: dict, columns: ChatColumns, where: str) -> list[dict]:
    messages = []
    system = row.get(columns.system)
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    for role, key in (("user", columns.prompt), ("assistant", columns.response)):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where} has an empty or missing {key!r}")
        messages.append({"role": role, "content": value})
    return messages


def check_messages(messages, where: str) -> list[dict]:
    """A conversation as FLQ needs it: known roles, text contents, ending with an assistant answer."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}}")
    out = []
    for j, message in enumerate(messages, 1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {j} must be {{role, content}} with text content")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: message {j} has role {role!r} (use one of {ROLES})")
        out.append({"role": role, "content": message["content"]})
    if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
        raise DataError(f"{where}: the last message must be a non-empty assistant answer (what is learnt)")
    return out


def with_system_prompt(conversation: list[dict], system_prompt: str) -> list[dict]:
    if conversation[0]["role"] == "system":
        return conversation
    return [{"role": "system", "content": system_prompt}, *conversation]
