"""ROUGE-L and exact match on hand-checked pairs (flq.metrics.generation)."""

import pytest

from flq.metrics.generation import exact_match, lcs_length, rouge_l, rouge_tokens


def test_rouge_l_matches_the_rouge_score_readme_example():
    # google-research/rouge-score's README: target 'The quick brown fox jumps over the lazy dog', prediction
    # 'The quick brown dog jumps on the log.' gives rougeL precision 0.625, recall 0.5556, F 0.5882
    # (LCS "the quick brown jumps the": 5 of 8 predicted and of 9 reference tokens).
    score = rouge_l("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog")
    assert score == pytest.approx(2 * 0.625 * (5 / 9) / (0.625 + 5 / 9))
    assert score == pytest.approx(0.5882, abs=1e-4)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS 5 of 6 and 6
        ("police kill the gunman", "the gunman kill police", 0.5),  # LCS "the gunman": order matters
        ("Ad sales boost Time Warner profit", "ad sales boost time warner profit", 1.0),  # case is ignored
        ("U.K. growth", "uk growth", 0.4),  # punctuation splits "u k growth": LCS 1, P 1/3, R 1/2
        ("", "anything", 0.0),
        ("nothing shared", "at all", 0.0),
    ],
)
def test_rouge_l_on_hand_checked_pairs(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_tokens_and_lcs():
    assert rouge_tokens("Hello, World! 2024's") == ["hello", "world", "2024", "s"]
    assert lcs_length("a b c d".split(), "b d".split()) == 2
    assert lcs_length([], ["x"]) == 0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The Eiffel Tower.", "eiffel tower", 1.0),  # case, punctuation and articles are normalised
        ("  an   apple ", "apple", 1.0),
        ("Eiffel Towers", "Eiffel Tower", 0.0),
        ("", "", 1.0),
    ],
)
def test_exact_match_uses_squad_normalisation(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected
