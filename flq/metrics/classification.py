"""Classification scores that stay honest under class imbalance, from labels and predictions.

Accuracy alone hides a model that predicts the majority class for everything (a common failure
of federated training on skewed data): balanced accuracy (mean recall over the classes present),
macro-F1 (mean F1 over the classes present in labels or predictions, as scikit-learn's default),
per-class accuracy (recall; None for a class absent from the labels) and the share of the most
predicted class say it. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# A global model predicting one class for more than this share of the held-out set has collapsed
# onto it (on any data set whose largest class is smaller): the progress line warns.
COLLAPSE_SHARE = 0.8


@dataclass(frozen=True)
class ClassificationScores:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    per_class_accuracy: list[float | None]  # recall by class id; None: no example of that class
    top_prediction: int  # the class predicted most often
    top_prediction_share: float  # the share of examples predicted as it

    @property
    def collapsed(self) -> bool:
        return is_collapsed(self.top_prediction_share)


def is_collapsed(top_prediction_share: float | None) -> bool:
    """Whether a model predicting its most frequent class for this share of examples has collapsed."""
    return top_prediction_share is not None and top_prediction_share > COLLAPSE_SHARE


def to_metric_values(scores: ClassificationScores) -> dict:
    """The scores as MetricRecord values (NaN: a class with no example); ``from_metric_values`` reads them."""
    return {
        "balanced-accuracy": scores.balanced_accuracy,
        "macro-f1": scores.macro_f1,
        "per-class-accuracy": [float("nan") if a is None else a for a in scores.per_class_accuracy],
        "top-prediction": scores.top_prediction,
        "top-prediction-share": scores.top_prediction_share,
    }


def from_metric_values(metrics: Mapping | None) -> dict:
    """RoundRecord's classification fields from ``to_metric_values``'s keys ({} where absent: causal LM)."""
    if metrics is None or "balanced-accuracy" not in metrics:
        return {}
    return {
        "balanced_accuracy": float(metrics["balanced-accuracy"]),
        "macro_f1": float(metrics["macro-f1"]),
        "per_class_score": [None if math.isnan(a) else float(a) for a in metrics["per-class-accuracy"]],
        "top_prediction": int(metrics["top-prediction"]),
        "top_prediction_share": float(metrics["top-prediction-share"]),
    }


def classification_scores(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> ClassificationScores:
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(f"need as many predictions as labels, at least one: {labels.shape} vs {predictions.shape}")
    confusion = np.zeros((num_classes, num_classes), np.int64)  # rows: label, columns: prediction
    np.add.at(confusion, (labels, predictions), 1)
    support, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(num_classes), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(num_classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=precision + recall > 0)
    counted = present | (predicted > 0)
    top = int(np.argmax(predicted))
    return ClassificationScores(
        accuracy=float(hits.sum() / labels.size),
        balanced_accuracy=float(recall[present].mean()),
        macro_f1=float(f1[counted].mean()),
        per_class_accuracy=[float(r) if p else None for r, p in zip(recall, present, strict=True)],
        top_prediction=top,
        top_prediction_share=float(predicted[top] / labels.size),
    )
