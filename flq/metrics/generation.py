"""Scores of generated text against references: ROUGE-L (F1) and exact match.

No ROUGE package installs offline here, so ROUGE-L is computed directly, as Lin (2004) and
Google's ``rouge-score`` define it without stemming: both texts lowercased, every character
other than a-z and 0-9 a separator, then the F-measure (beta 1) of the longest common
subsequence of the two token lists. Exact match follows SQuAD's normalisation: lowercased,
punctuation and the articles a/an/the removed, whitespace collapsed.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def rouge_tokens(text: str) -> list[str]:
    """``rouge-score``'s default tokens: lowercase alphanumeric runs."""
    return [t for t in _NON_ALNUM.split(text.lower()) if t]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming over one row)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` (0 when either has no tokens)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0
    common = lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (lowercase, no punctuation, no articles, single spaces)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def to_generation_metric_values(exact: float, response_perplexity: float) -> dict:
    """An instruction evaluation's scores beside its ROUGE-L (the score) as MetricRecord values."""
    return {"exact-match": exact, "response-perplexity": response_perplexity}


def from_generation_metric_values(metrics) -> dict:
    """RoundRecord's generation fields from ``to_generation_metric_values``'s keys ({} where absent)."""
    if metrics is None or "exact-match" not in metrics:
        return {}
    return {
        "exact_match": float(metrics["exact-match"]),
        "response_perplexity": float(metrics["response-perplexity"]),
    }
