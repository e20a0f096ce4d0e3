"""Balanced accuracy, macro-F1, per-class accuracy and collapse, checked by hand and against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from flq.metrics.classification import classification_scores


def test_a_model_predicting_the_majority_class_is_exposed():
    labels = np.array([0] * 8 + [1] + [2])
    scores = classification_scores(labels, np.zeros(10, int), num_classes=3)
    assert scores.accuracy == 0.8
    assert scores.balanced_accuracy == pytest.approx(1 / 3)  # recalls 1, 0, 0
    assert scores.macro_f1 == pytest.approx((2 * 0.8 / 1.8) / 3)  # F1 of class 0 = 2pr/(p+r), p 0.8, r 1
    assert scores.per_class_accuracy == [1.0, 0.0, 0.0]
    assert scores.top_prediction == 0 and scores.top_prediction_share == 1.0 and scores.collapsed


def test_a_class_absent_from_the_labels_has_no_accuracy_and_counts_in_f1_only_if_predicted():
    labels, predictions = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    scores = classification_scores(labels, predictions, num_classes=4)
    assert scores.per_class_accuracy == [0.5, 1.0, None, None]
    assert scores.balanced_accuracy == 0.75 and not scores.collapsed
    with_stray = classification_scores(labels, np.array([0, 3, 1, 1]), num_classes=4)
    assert with_stray.macro_f1 == pytest.approx(f1_score(labels, [0, 3, 1, 1], average="macro"))


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=200)
    predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, size=200))
    scores = classification_scores(labels, predictions, num_classes=5)
    assert scores.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, predictions))
    assert scores.macro_f1 == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert scores.accuracy == pytest.approx(float(np.mean(labels == predictions)))


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="as many predictions as labels"):
        classification_scores(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match="at least one"):
        classification_scores(np.array([], int), np.array([], int), 2)
