"""Multi-class N-pair loss and its batch sampler (MS3D's Eq. 5, Sohn 2016)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.losses.npair import NPairLoss, npair_batches, npair_loss, split_pairs

# Anchors a0 = e1, a1 = e2; positives p0 = (0.6, 0.8), p1 = e1.
# S = A P^T = [[0.6, 1.0], [0.8, 0.0]].
A = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P = torch.tensor([[0.6, 0.8], [1.0, 0.0]])


def test_two_by_two_by_hand() -> None:
    # Row 0: log(1 + e^(1.0 - 0.6)); row 1: log(1 + e^(0.8 - 0.0)).
    expected = (math.log1p(math.exp(0.4)) + math.log1p(math.exp(0.8))) / 2
    assert npair_loss(A, P).item() == pytest.approx(expected, rel=1e-6)


def test_scale_multiplies_the_similarities() -> None:
    expected = (math.log1p(math.exp(0.8)) + math.log1p(math.exp(1.6))) / 2
    assert npair_loss(A, P, scale=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_adds_the_transposed_ranking() -> None:
    # S^T = [[0.6, 0.8], [1.0, 0.0]]: row 0 log(1 + e^0.2), row 1 log(1 + e^1.0).
    forward = (math.log1p(math.exp(0.4)) + math.log1p(math.exp(0.8))) / 2
    backward = (math.log1p(math.exp(0.2)) + math.log1p(math.exp(1.0))) / 2
    got = npair_loss(A, P, symmetric=True).item()
    assert got == pytest.approx((forward + backward) / 2, rel=1e-6)


def test_l2_regulariser_on_raw_embeddings() -> None:
    a = 2 * A  # squared norms 4, 4
    p = P  # squared norms 1, 1
    # S = 2 A P^T = [[1.2, 2.0], [1.6, 0.0]]; reg = 0.01 * mean(4 + 1, 4 + 1) = 0.05.
    expected = (math.log1p(math.exp(0.8)) + math.log1p(math.exp(1.6))) / 2 + 0.05
    assert npair_loss(a, p, l2_reg=0.01).item() == pytest.approx(expected, rel=1e-6)


def test_matches_sohn_sum_form_on_random_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=1)
    p = torch.nn.functional.normalize(torch.randn(5, 8, generator=gen), dim=1)
    terms = []
    for i in range(5):
        s = sum(math.exp(float(a[i] @ p[j] - a[i] @ p[i])) for j in range(5) if j != i)
        terms.append(math.log1p(s))
    assert npair_loss(a, p).item() == pytest.approx(sum(terms) / 5, rel=1e-5)


def test_aligned_pairs_score_lower_than_swapped_pairs() -> None:
    aligned = npair_loss(A, A, scale=10.0)
    swapped = npair_loss(A, A.flip(0), scale=10.0)
    assert aligned.item() < 1e-3 < swapped.item()


def test_module_splits_interleaved_batch() -> None:
    batch = torch.stack([A[0], P[0], A[1], P[1]])
    anchors, positives = split_pairs(batch)
    torch.testing.assert_close(anchors, A)
    torch.testing.assert_close(positives, P)
    assert NPairLoss(scale=2.0)(batch).item() == pytest.approx(npair_loss(A, P, scale=2.0).item())
    with pytest.raises(ValueError):
        split_pairs(torch.zeros(3, 2))


def test_gradient_flows_to_both_sides() -> None:
    a = A.clone().requires_grad_()
    p = P.clone().requires_grad_()
    npair_loss(a, p).backward()
    assert a.grad is not None and p.grad is not None
    assert a.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


def test_batches_pair_same_class_across_distinct_classes() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4])  # class 3 has a single sample
    batches = npair_batches(labels, 3, np.random.default_rng(0), num_batches=50)
    assert batches.shape == (50, 3, 2) and batches.dtype == np.int64
    for batch in batches:
        classes = labels[batch[:, 0]]
        assert len(set(classes.tolist())) == 3
        assert (labels[batch[:, 1]] == classes).all()
        assert (batch[:, 0] != batch[:, 1]).all()
        assert 3 not in classes
    # Over many batches every eligible class shows up.
    assert set(labels[batches[:, :, 0]].ravel().tolist()) == {0, 1, 2, 4}


def test_batches_are_seeded_and_default_to_an_epoch() -> None:
    labels = np.repeat(np.arange(4), 3)  # 12 samples
    a = npair_batches(labels, 2, np.random.default_rng(7))
    b = npair_batches(labels, 2, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 2, 2)  # 12 // (2 * 2)


def test_batches_refuse_too_few_pairable_classes() -> None:
    with pytest.raises(ValueError, match="only 1 classes"):
        npair_batches([0, 0, 1, 2], 2, np.random.default_rng(0))
