"""Video-level loss (VLL) with the consistent constraint loss (CCL), and the clip-level CE.

The c3d_vll paper (cited in :mod:`models.c3d_vll`), Eq. 2-6. For one video with m clips,
softmax outputs y_1..y_m and label L::

    VLL     = (1 - alpha) * mean_j CE(y_j, L) + alpha * CCL                    (Eq. 3)
    CCL_euc = mean over the m(m-1)/2 pairs k < j of ||y_k - y_j||_2          (Eq. 4)
    CCL_err = mean over the wrong clips i of ||y_i - R_mean||_2               (Eq. 5)
    CCL     = CCL_euc if no clip or every clip is correct, else CCL_err       (Eq. 6)

with R_mean the mean output of the correctly predicted clips. The variants (``ccl``), the
gradients through R_mean and batches of several videos: docs/models.md#c3d_vll.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CCL_VARIANTS", "clip_ce_loss", "vll_terms", "vll_loss", "VideoLevelLoss"]

CCL_VARIANTS: tuple[str, ...] = ("none", "euclidean", "error", "full")


def clip_ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Clip-level baseline (paper Eq. 2): mean cross-entropy over independent clips.

    Args:
        logits: Clip logits ``(N, K)``.
        labels: Class index per clip ``(N,)``.
    """
    return F.cross_entropy(_at_least_float32(logits), labels)


def _at_least_float32(x: Tensor) -> Tensor:
    # Half-precision softmax distances lose the small differences the CCL is made of.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _per_video_sum(values: Tensor, video_index: Tensor, num_videos: int) -> Tensor:
    """Sum ``values`` (along dim 0) into one row per video."""
    out = values.new_zeros((num_videos, *values.shape[1:]))
    return out.index_add(0, video_index, values)


def _pairwise_term(probs: Tensor, video_index: Tensor, counts: Tensor) -> Tensor:
    """Eq. 4 per video: mean Euclidean distance over the video's clip pairs (0 if m = 1)."""
    m = probs.shape[0]
    i, j = torch.triu_indices(m, m, offset=1, device=probs.device)
    same = video_index[i] == video_index[j]
    i, j = i[same], j[same]
    dist = torch.linalg.vector_norm(probs[i] - probs[j], dim=-1)
    total = _per_video_sum(dist, video_index[i], counts.shape[0])
    pairs = counts * (counts - 1) // 2
    return total / pairs.clamp(min=1).to(total.dtype)


def _error_term(
    probs: Tensor, video_index: Tensor, counts: Tensor, correct: Tensor, detach_reference: bool
) -> tuple[Tensor, Tensor]:
    """Eq. 5 per video, and a mask of the videos with both correct and wrong clips.

    The term is 0 where that mask is False (R_mean or the wrong set would be empty).
    """
    num_videos = counts.shape[0]
    w = correct.to(probs.dtype)
    n_correct = _per_video_sum(w, video_index, num_videos)
    n_wrong = counts.to(probs.dtype) - n_correct
    # clamp: a video without correct clips has no R_mean; its row is masked out below, and a
    # finite placeholder keeps NaN out of the gradient of the branch torch.where discards.
    ref = _per_video_sum(probs * w[:, None], video_index, num_videos)
    ref = ref / n_correct.clamp(min=1)[:, None]
    if detach_reference:
        ref = ref.detach()
    dist = torch.linalg.vector_norm(probs - ref[video_index], dim=-1)
    total = _per_video_sum(dist * (1 - w), video_index, num_videos)
    mixed = (n_correct > 0) & (n_wrong > 0)
    return torch.where(mixed, total / n_wrong.clamp(min=1), torch.zeros_like(total)), mixed


def vll_terms(
    logits: Tensor,
    video_index: Tensor,
    labels: Tensor,
    *,
    ccl: str = "full",
    detach_reference: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-video mean clip cross-entropy and consistent constraint loss.

    Args:
        logits: Clip logits ``(M, K)``, the clips of all videos in one flat batch.
        video_index: Long ``(M,)``: the video (row of ``labels``) each clip belongs to.
        labels: Long ``(V,)``: one class index per video; every video needs >= 1 clip.
        ccl: One of :data:`CCL_VARIANTS`.
        detach_reference: Stop the gradient through R_mean in Eq. 5.

    Returns:
        ``(ce, ccl)``, each ``(V,)``; ``ccl`` is all zeros for ``ccl="none"``.

    Raises:
        ValueError: On an unknown variant, mismatched shapes, a video index outside
            ``[0, V)`` or a video without clips.
    """
    if ccl not in CCL_VARIANTS:
        raise ValueError(f"ccl must be one of {CCL_VARIANTS}, got {ccl!r}")
    if logits.dim() != 2 or video_index.shape != (logits.shape[0],) or labels.dim() != 1:
        raise ValueError(
            "expected logits (M, K), video_index (M,), labels (V,); got "
            f"{tuple(logits.shape)}, {tuple(video_index.shape)}, {tuple(labels.shape)}"
        )
    num_videos = labels.shape[0]
    if logits.shape[0] and (video_index.min() < 0 or video_index.max() >= num_videos):
        raise ValueError(f"video_index must lie in [0, {num_videos})")
    counts = torch.bincount(video_index, minlength=num_videos)
    if num_videos == 0 or bool((counts == 0).any()):
        raise ValueError("every video needs at least one clip")

    logits = _at_least_float32(logits)
    clip_labels = labels[video_index]
    ce_clip = F.cross_entropy(logits, clip_labels, reduction="none")
    ce = _per_video_sum(ce_clip, video_index, num_videos) / counts.to(ce_clip.dtype)
    if ccl == "none":
        return ce, torch.zeros_like(ce)

    probs = logits.softmax(dim=-1)
    if ccl == "euclidean":
        return ce, _pairwise_term(probs, video_index, counts)
    correct = logits.detach().argmax(dim=-1) == clip_labels
    err, mixed = _error_term(probs, video_index, counts, correct, detach_reference)
    if ccl == "error":
        return ce, err
    return ce, torch.where(mixed, err, _pairwise_term(probs, video_index, counts))


def vll_loss(
    logits: Tensor,
    video_index: Tensor,
    labels: Tensor,
    *,
    ccl: str = "full",
    alpha: float = 0.3,
    detach_reference: bool = False,
) -> Tensor:
    """Video-level loss (Eq. 3), averaged over the videos of the batch.

    Args:
        logits: Clip logits ``(M, K)`` of all videos.
        video_index: Long ``(M,)`` video of each clip (row of ``labels``).
        labels: Long ``(V,)`` class of each video.
        ccl: One of :data:`CCL_VARIANTS`; ``"none"`` is the plain video-level CE.
        alpha: Weight of the CCL term (paper: 0.3); unused for ``"none"``.
        detach_reference: Stop the gradient through R_mean in Eq. 5.

    Returns:
        A scalar.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    ce, c = vll_terms(logits, video_index, labels, ccl=ccl, detach_reference=detach_reference)
    per_video = ce if ccl == "none" else (1.0 - alpha) * ce + alpha * c
    return per_video.mean()


class VideoLevelLoss(nn.Module):
    """Module wrapper of :func:`vll_loss` holding the variant and alpha.

    Args:
        ccl: One of :data:`CCL_VARIANTS`.
        alpha: Weight of the CCL term.
        detach_reference: Stop the gradient through R_mean in Eq. 5.
    """

    def __init__(
        self, *, ccl: str = "full", alpha: float = 0.3, detach_reference: bool = False
    ) -> None:
        super().__init__()
        if ccl not in CCL_VARIANTS:
            raise ValueError(f"ccl must be one of {CCL_VARIANTS}, got {ccl!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.ccl = ccl
        self.alpha = alpha
        self.detach_reference = detach_reference

    def forward(self, logits: Tensor, video_index: Tensor, labels: Tensor) -> Tensor:
        """Scalar loss of clip ``logits`` ``(M, K)`` grouped by ``video_index`` ``(M,)``."""
        return vll_loss(
            logits,
            video_index,
            labels,
            ccl=self.ccl,
            alpha=self.alpha,
            detach_reference=self.detach_reference,
        )

    def extra_repr(self) -> str:
        return f"ccl={self.ccl!r}, alpha={self.alpha}, detach_reference={self.detach_reference}"
