"""Evaluation figures against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np

from training.metrics import confusion_matrix, per_class_accuracy, summarize, topk_accuracy


def test_topk_by_hand() -> None:
    rankings = [[2, 0, 1], [1, 2, 0], [0, 1, 2], [2, 1, 0]]
    labels = [2, 2, 1, 0]
    assert topk_accuracy(rankings, labels, 1) == 0.25  # only video 0
    assert topk_accuracy(rankings, labels, 2) == 0.75  # videos 0, 1, 2
    assert topk_accuracy(rankings, labels, 5) == 1.0


def test_confusion_and_per_class_by_hand() -> None:
    predicted = [0, 1, 1, -1, 2]
    labels = [0, 0, 1, 1, 2]
    cm = confusion_matrix(predicted, labels, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # -1 not counted
    acc = per_class_accuracy(predicted, labels, 4)
    assert acc[:3] == [0.5, 0.5, 1.0] and math.isnan(acc[3])


def test_summarize_counts_clips() -> None:
    out = summarize([[1, 0], [0, 1]], [1, 1], 2, clip_correct=3, clip_total=4)
    assert out["top1"] == 0.5 and out["clip_accuracy"] == 0.75 and out["videos"] == 2
