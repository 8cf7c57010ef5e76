"""How a family's per-input outputs (clip logits, step logits, embeddings) become one answer.

Pure tensor functions shared by training evaluation and the service, so a video gets the same
answer in both. Each returns a :class:`VideoScores`: a score per class for reporting, the
class ranking (best first), and the family detail (votes, mean probabilities, distances).

- :func:`majority_vote` (c3d_vll; its paper's Section 4.1): vote of the clips' argmax; ties
  broken by the mean softmax probability; top-5 by votes, then mean probability.
- :func:`mean_prob`: mean softmax over inputs (full_video's single pass, TSN-style baselines).
- :func:`last_steps_vote` (attention_lstm): per clip, the vote of the per-step argmax over its
  last L2 steps; per video, the vote over clips.
- :func:`nearest_centre` (ms3d): nearest class centre in the repository; a distance of at
  least gamma means ``unknown``.

Remaining ties (equal votes and equal mean probability, or equal distance) go to the lower
class index, so every ranking is deterministic. The papers are cited in their family modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "VideoScores",
    "majority_vote",
    "mean_prob",
    "last_steps_vote",
    "nearest_centre",
    "topk",
    "aggregate",
    "AGGREGATORS",
]


@dataclass(frozen=True)
class VideoScores:
    """One video's answer.

    Attributes:
        scores: ``(K,)`` the score reported per class (see each aggregator for its meaning);
            non-increasing along ``order``.
        order: ``(K,)`` class indices, best first. This, not a sort of ``scores``, is the
            ranking: vote fractions tie where the mean probability still separates classes.
        votes: ``(K,)`` votes per class (voting aggregators), else ``None``.
        mean_prob: ``(K,)`` mean softmax probability per class, else ``None``.
        distances: ``(K,)`` distance of the video embedding to each class centre
            (:func:`nearest_centre`), else ``None``.
        input_pred: ``(N,)`` each input's own predicted class (clip argmax, or a clip's
            last-steps vote), for per-clip detail; else ``None``.
        unknown: ``True`` when the answer is rejected (only :func:`nearest_centre` sets it).
    """

    scores: Tensor
    order: Tensor
    votes: Tensor | None = None
    mean_prob: Tensor | None = None
    distances: Tensor | None = None
    input_pred: Tensor | None = None
    unknown: bool = False

    @property
    def label(self) -> int:
        """Index of the best class."""
        return int(self.order[0])


def _as_2d(x: Tensor, name: str) -> Tensor:
    # Aggregators are evaluation code: no graph, and float32 softmax even for half logits.
    x = x.detach().float()
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be (N, K) with N, K >= 1, got {tuple(x.shape)}")
    return x


def _desc_order(key: Tensor) -> Tensor:
    """Indices sorting the last dim of ``key`` descending; ties keep the lower index first."""
    return torch.sort(key, dim=-1, descending=True, stable=True).indices


def _lex_order(votes: Tensor, mean_prob: Tensor) -> Tensor:
    """Ranking by votes, then mean probability, then lower index (over the last dim)."""
    by_prob = _desc_order(mean_prob)
    by_votes = _desc_order(torch.gather(votes, -1, by_prob))
    return torch.gather(by_prob, -1, by_votes)


def _vote(pred: Tensor, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Votes ``(..., K)``, mean probabilities and ranking for predictions ``(..., N)``.

    Args:
        pred: Predicted class per voter, long ``(..., N)``.
        probs: Probabilities per voter ``(..., N, K)``.
    """
    votes = F.one_hot(pred, probs.shape[-1]).sum(dim=-2).to(probs.dtype)
    mean = probs.mean(dim=-2)
    return votes, mean, _lex_order(votes, mean)


def majority_vote(logits: Tensor) -> VideoScores:
    """Majority vote of clip predictions (c3d_vll).

    Each clip votes for its argmax class (first index on an exact tie). Classes are ranked
    by votes, then by mean softmax probability over all clips.

    Args:
        logits: Clip logits ``(N, K)`` (or ``(K,)`` for one clip).

    Returns:
        ``scores`` = vote fraction (votes / N); ``votes``, ``mean_prob`` and the clips'
        predictions in ``input_pred``.
    """
    logits = _as_2d(logits, "logits")
    probs = logits.softmax(dim=-1)
    pred = probs.argmax(dim=-1)
    votes, mean, order = _vote(pred, probs)
    return VideoScores(
        scores=votes / logits.shape[0], order=order, votes=votes, mean_prob=mean, input_pred=pred
    )


def mean_prob(logits: Tensor) -> VideoScores:
    """Mean softmax probability over inputs.

    Args:
        logits: Logits ``(N, K)`` (or ``(K,)``).

    Returns:
        ``scores`` = ``mean_prob`` = the mean softmax ``(K,)``.
    """
    logits = _as_2d(logits, "logits")
    mean = logits.softmax(dim=-1).mean(dim=0)
    return VideoScores(scores=mean, order=_desc_order(mean), mean_prob=mean)


def last_steps_vote(step_logits: Tensor, last: int = 16) -> VideoScores:
    """Two-level vote of an LSTM's per-step outputs (attention_lstm).

    Per clip, each of the last ``last`` steps (all steps if fewer) votes for its argmax; the
    clip's class is the most voted, ties broken by the mean probability over those steps.
    Per video, clips vote with their class; ties broken by the mean over clips of each clip's
    last-steps mean probability.

    Args:
        step_logits: Per-step logits ``(N, T, K)`` of N clips (or ``(T, K)`` for one clip).
        last: L2, the number of final steps that vote.

    Returns:
        ``scores`` = clip-vote fraction (clip votes / N); ``votes`` = clip votes;
        ``mean_prob`` = mean over clips of the last-steps mean probability; ``input_pred`` =
        each clip's class.
    """
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    x = step_logits.detach().float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or min(x.shape) < 1:
        raise ValueError(f"step_logits must be (N, T, K) with N, T, K >= 1, got {tuple(x.shape)}")
    probs = x[:, -last:].softmax(dim=-1)  # (N, L, K)
    step_votes, step_mean, clip_order = _vote(probs.argmax(dim=-1), probs)
    clip_pred = clip_order[:, 0]
    votes, mean, order = _vote(clip_pred, step_mean)
    return VideoScores(
        scores=votes / x.shape[0], order=order, votes=votes, mean_prob=mean, input_pred=clip_pred
    )


def nearest_centre(embeddings: Tensor, centres: Tensor, gamma: float = math.inf) -> VideoScores:
    """Nearest class centre of the video's embedding (ms3d judgement).

    The inputs' (walks') embeddings are averaged and the mean is L2-normalised; its
    Euclidean distance to each centre ranks the classes, nearest first. Centres are used as
    stored (a mean of unit embeddings is not re-normalised here).

    Args:
        embeddings: ``(N, D)`` embeddings of the video's walks, or one ``(D,)``.
        centres: ``(K, D)`` class centres from the repository.
        gamma: Rejection threshold: the nearest distance ``>= gamma`` sets ``unknown``
            (``inf`` never rejects).

    Returns:
        ``distances`` ``(K,)`` and ``scores`` = ``exp(-distance)`` (in (0, 1], higher is
        nearer, so every aggregator's scores rank high-to-low).
    """
    emb = _as_2d(embeddings, "embeddings")
    centres = centres.detach().float().to(emb.device)
    if centres.dim() != 2 or centres.shape[1] != emb.shape[1] or centres.shape[0] < 1:
        raise ValueError(
            f"centres must be (K, {emb.shape[1]}) with K >= 1, got {tuple(centres.shape)}"
        )
    video = F.normalize(emb.mean(dim=0), dim=0)
    dist = torch.linalg.vector_norm(centres - video, dim=-1)
    order = _desc_order(-dist)
    return VideoScores(
        scores=torch.exp(-dist),
        order=order,
        distances=dist,
        unknown=bool(dist[order[0]] >= gamma),
    )


def topk(scores: VideoScores | Tensor, k: int, labels: Sequence[str]) -> list[tuple[str, float]]:
    """The ``k`` best (label, score) pairs, best first; ``k`` is clipped to the class count.

    Args:
        scores: An aggregator's :class:`VideoScores` (ranked by its ``order``) or a plain
            ``(K,)`` score tensor (ranked high to low, ties to the lower index).
        k: How many to return.
        labels: Class names in index order, ``len(labels) == K``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if isinstance(scores, VideoScores):
        values, order = scores.scores.detach(), scores.order
    else:
        values = scores.detach()
        if values.dim() != 1:
            raise ValueError(f"scores must be (K,), got {tuple(values.shape)}")
        order = _desc_order(values)
    if len(labels) != values.shape[0]:
        raise ValueError(f"{len(labels)} labels for {values.shape[0]} classes")
    top = order[: min(k, values.shape[0])].tolist()
    vals = values.float().cpu().tolist()
    return [(labels[i], vals[i]) for i in top]


AGGREGATORS: dict[str, Callable[..., VideoScores]] = {
    "majority_vote": majority_vote,
    "mean_prob": mean_prob,
    "last_steps_vote": last_steps_vote,
    "nearest_centre": nearest_centre,
}


def aggregate(name: str, outputs: Tensor, **kwargs: Any) -> VideoScores:
    """Run the aggregator ``name`` on one video's network ``outputs``.

    Args:
        name: A key of :data:`AGGREGATORS`.
        outputs: The video's per-input outputs (logits, step logits or embeddings).
        **kwargs: The aggregator's other arguments (``last``; ``centres``, ``gamma``).
    """
    try:
        fn = AGGREGATORS[name]
    except KeyError:
        known = ", ".join(sorted(AGGREGATORS))
        raise KeyError(f"unknown aggregator {name!r}; known: {known}") from None
    return fn(outputs, **kwargs)
