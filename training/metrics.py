"""Evaluation figures computed from per-video rankings: pure functions, tested by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["topk_accuracy", "confusion_matrix", "per_class_accuracy", "summarize"]


def topk_accuracy(rankings: Sequence[Sequence[int]], labels: Sequence[int], k: int) -> float:
    """Fraction of videos whose label is among the first ``k`` entries of its ranking."""
    if not labels:
        return float("nan")
    hits = sum(int(label in list(ranking)[:k]) for ranking, label in zip(rankings, labels))
    return hits / len(labels)


def confusion_matrix(
    predicted: Sequence[int], labels: Sequence[int], num_classes: int
) -> np.ndarray:
    """``cm[true, predicted]`` counts; predictions outside ``[0, num_classes)`` (e.g. -1 for
    'unknown') are not counted."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(predicted, labels):
        if 0 <= p < num_classes:
            cm[t, p] += 1
    return cm


def per_class_accuracy(
    predicted: Sequence[int], labels: Sequence[int], num_classes: int
) -> list[float]:
    """Accuracy per true class (NaN for a class with no test video)."""
    correct = np.zeros(num_classes)
    total = np.zeros(num_classes)
    for p, t in zip(predicted, labels):
        total[t] += 1
        correct[t] += int(p == t)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(c / n) if n else float("nan") for c, n in zip(correct, total)]


def summarize(
    rankings: Sequence[Sequence[int]],
    labels: Sequence[int],
    num_classes: int,
    *,
    clip_correct: int = 0,
    clip_total: int = 0,
) -> dict[str, object]:
    """The video-level report: top-1, top-5, clip accuracy, confusion matrix, per-class."""
    predicted = [int(r[0]) if len(r) else -1 for r in rankings]
    return {
        "videos": len(labels),
        "top1": topk_accuracy(rankings, labels, 1),
        "top5": topk_accuracy(rankings, labels, 5),
        "clip_accuracy": clip_correct / clip_total if clip_total else float("nan"),
        "clips": clip_total,
        "per_class_accuracy": per_class_accuracy(predicted, labels, num_classes),
        "confusion": confusion_matrix(predicted, labels, num_classes).tolist(),
    }
