"""Multi-class N-pair loss and its batch sampler, for the ms3d family.

K. Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016;
the MS3D paper (cited in :mod:`models.ms3d`) trains with it, its Eq. 5. A batch holds ``N``
classes x 2 videos, an anchor and a positive per class; with ``S = scale * F F+^T`` the loss
is the cross-entropy of ``S`` with the diagonal as targets, averaged over the batch.

Why ``scale``, and when ``l2_reg`` matters: docs/models.md#ms3d.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NPairLoss", "npair_loss", "npair_batches", "split_pairs"]


def npair_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    *,
    scale: float = 1.0,
    l2_reg: float = 0.0,
    symmetric: bool = False,
) -> torch.Tensor:
    """Multi-class N-pair loss over one batch of ``N`` (anchor, positive) pairs.

    Args:
        anchors: ``(N, D)`` embeddings, one per class.
        positives: ``(N, D)`` embeddings; row ``i`` has the class of ``anchors[i]``, and the
            rows are of ``N`` distinct classes.
        scale: Multiplies the dot products before the softmax (inverse temperature).
        l2_reg: Weight of Sohn's regulariser ``mean_i (|f_i|^2 + |f_i^+|^2)``.
        symmetric: Average with the same loss with anchors and positives swapped (each
            positive then also ranks the anchors).

    Returns:
        The scalar loss.
    """
    if anchors.ndim != 2 or anchors.shape != positives.shape:
        raise ValueError(
            f"anchors and positives must both be (N, D), got {tuple(anchors.shape)} "
            f"and {tuple(positives.shape)}"
        )
    logits = scale * anchors @ positives.T
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
    if l2_reg:
        norms = anchors.pow(2).sum(dim=1) + positives.pow(2).sum(dim=1)
        loss = loss + l2_reg * norms.mean()
    return loss


def split_pairs(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a batch laid out as :func:`npair_batches` rows ``[a0, p0, a1, p1, ...]``.

    Args:
        embeddings: ``(2 N, D)`` embeddings, anchor and positive of each class adjacent.

    Returns:
        ``(anchors, positives)``, each ``(N, D)``.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(f"expected (2N, D) embeddings, got {tuple(embeddings.shape)}")
    pairs = embeddings.view(-1, 2, embeddings.shape[1])
    return pairs[:, 0], pairs[:, 1]


class NPairLoss(nn.Module):
    """Module wrapper of :func:`npair_loss` over an interleaved ``(2 N, D)`` batch."""

    def __init__(self, *, scale: float = 1.0, l2_reg: float = 0.0, symmetric: bool = False):
        super().__init__()
        self.scale = scale
        self.l2_reg = l2_reg
        self.symmetric = symmetric

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Loss of a batch laid out ``[a0, p0, a1, p1, ...]``."""
        anchors, positives = split_pairs(embeddings)
        return npair_loss(
            anchors, positives, scale=self.scale, l2_reg=self.l2_reg, symmetric=self.symmetric
        )


def npair_batches(
    labels: Sequence[int] | np.ndarray,
    n_classes_per_batch: int,
    rng: np.random.Generator,
    *,
    num_batches: int | None = None,
) -> np.ndarray:
    """Draw N-pair batches: ``n`` distinct classes, two distinct samples of each.

    Classes with fewer than two samples cannot form a pair and are never drawn. Each batch
    draws its classes uniformly without replacement and, per class, two samples uniformly
    without replacement.

    Args:
        labels: Class label of every sample in the dataset.
        n_classes_per_batch: Classes per batch ``N`` (the batch holds ``2 N`` samples).
        rng: Source of the draws (seed it for reproducible epochs).
        num_batches: Batches to draw; default ``len(labels) // (2 N)`` (about one epoch).

    Returns:
        ``(num_batches, N, 2)`` int64 sample indices: ``[b, i]`` is the (anchor, positive)
        pair of the ``i``-th class of batch ``b``. ``batches[b].reshape(-1)`` is the
        interleaved order :func:`split_pairs` expects.

    Raises:
        ValueError: If fewer than ``N`` classes have two samples.
    """
    labels = np.asarray(labels)
    if n_classes_per_batch < 2:
        raise ValueError(f"an N-pair batch needs at least 2 classes, got {n_classes_per_batch}")
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(classes))]
    eligible = [k for k, m in enumerate(members) if len(m) >= 2]
    if len(eligible) < n_classes_per_batch:
        raise ValueError(
            f"{n_classes_per_batch} classes per batch requested but only {len(eligible)} "
            "classes have at least two samples"
        )
    if num_batches is None:
        num_batches = max(1, len(labels) // (2 * n_classes_per_batch))
    out = np.empty((num_batches, n_classes_per_batch, 2), dtype=np.int64)
    for b in range(num_batches):
        chosen = rng.choice(eligible, size=n_classes_per_batch, replace=False)
        for i, k in enumerate(chosen):
            out[b, i] = rng.choice(members[k], size=2, replace=False)
    return out
