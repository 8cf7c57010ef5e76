"""Aggregators against hand-computed answers, including every tie-breaking rule.

Logits are log-probabilities, so each softmax equals the probabilities written here.
"""

from __future__ import annotations

import math

import pytest
import torch

from models.aggregators import (
    AGGREGATORS,
    VideoScores,
    aggregate,
    last_steps_vote,
    majority_vote,
    mean_prob,
    nearest_centre,
    topk,
)


def _tolist(x: torch.Tensor | None) -> list:
    """An optional field of :class:`VideoScores` as a list (it must be set)."""
    assert x is not None
    return x.tolist()


def _logits(*probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float32).log()


def test_majority_vote_counts_and_ranks_votes_before_probability():
    # Clip argmax: 0, 0, 2 -> votes (2, 0, 1). Mean probability (.3, .3333, .3667) alone
    # would rank 2, 1, 0; votes come first, and class 1 (no vote) is last.
    logits = _logits((0.4, 0.35, 0.25), (0.4, 0.35, 0.25), (0.1, 0.3, 0.6))
    out = majority_vote(logits)
    assert _tolist(out.votes) == [2.0, 0.0, 1.0]
    assert out.order.tolist() == [0, 2, 1]
    assert out.label == 0
    assert out.scores.tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert _tolist(out.mean_prob) == pytest.approx([0.3, 1.0 / 3, 1.1 / 3])
    assert _tolist(out.input_pred) == [0, 0, 2]


def test_majority_vote_tie_broken_by_mean_probability():
    # One vote each for 0 and 1; mean probability (.3, .45, .25) -> 1 wins.
    out = majority_vote(_logits((0.5, 0.3, 0.2), (0.1, 0.6, 0.3)))
    assert _tolist(out.votes) == [1.0, 1.0, 0.0]
    assert out.order.tolist() == [1, 0, 2]
    assert out.scores.tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_majority_vote_full_tie_goes_to_lower_index():
    # Votes 1-1 and mean probability .5-.5: the lower class index ranks first.
    out = majority_vote(_logits((0.4, 0.6), (0.6, 0.4)))
    assert out.order.tolist() == [0, 1]
    # Within a clip an exact argmax tie also votes for the first class.
    tied = majority_vote(torch.tensor([[1.0, 1.0, 0.0]]))
    assert _tolist(tied.input_pred) == [0]
    assert _tolist(tied.votes) == [1.0, 0.0, 0.0]


def test_majority_vote_accepts_one_clip_vector():
    out = majority_vote(_logits(0.2, 0.7, 0.1))
    assert _tolist(out.votes) == [0.0, 1.0, 0.0]
    assert out.order.tolist() == [1, 0, 2]


def test_mean_prob():
    out = mean_prob(_logits((0.5, 0.3, 0.2), (0.1, 0.2, 0.7)))
    assert out.scores.tolist() == pytest.approx([0.3, 0.25, 0.45])
    assert out.order.tolist() == [2, 0, 1]
    assert out.votes is None


def test_last_steps_vote_two_levels():
    # Clip 0: the first two steps say class 2 but only the last two vote: one vote each for
    # 0 and 1, mean (.35, .45, .2) -> the clip says 1.
    clip0 = [(0.1, 0.1, 0.8), (0.1, 0.1, 0.8), (0.5, 0.3, 0.2), (0.2, 0.6, 0.2)]
    # Clip 1: last two steps both class 0, mean (.65, .25, .1) -> the clip says 0.
    clip1 = [(0.1, 0.1, 0.8), (0.8, 0.1, 0.1), (0.6, 0.3, 0.1), (0.7, 0.2, 0.1)]
    out = last_steps_vote(_logits(clip0, clip1), last=2)
    assert _tolist(out.input_pred) == [1, 0]
    # Video: one clip vote each for 0 and 1; clip-mean probability (.5, .35, .15) -> 0.
    assert _tolist(out.votes) == [1.0, 1.0, 0.0]
    assert _tolist(out.mean_prob) == pytest.approx([0.5, 0.35, 0.15])
    assert out.order.tolist() == [0, 1, 2]
    assert out.scores.tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_last_steps_vote_uses_all_steps_when_fewer_than_last():
    # All four steps of clip0 vote: class 2 has two votes and wins.
    clip0 = [(0.1, 0.1, 0.8), (0.1, 0.1, 0.8), (0.5, 0.3, 0.2), (0.2, 0.6, 0.2)]
    out = last_steps_vote(_logits(clip0), last=16)
    assert _tolist(out.input_pred) == [2]
    assert out.label == 2


def test_nearest_centre_distances_ranking_and_unknown():
    # The unit embedding (0, 1) lies .5 from (0, .5), .75 from (.75, 1), 2 from (0, -1).
    centres = torch.tensor([[0.0, 0.5], [0.0, -1.0], [0.75, 1.0]])
    out = nearest_centre(torch.tensor([0.0, 3.0]), centres, gamma=0.6)
    assert _tolist(out.distances) == pytest.approx([0.5, 2.0, 0.75])
    assert out.order.tolist() == [0, 2, 1]
    assert out.scores.tolist() == pytest.approx([math.exp(-0.5), math.exp(-2.0), math.exp(-0.75)])
    assert out.unknown is False
    # The threshold is inclusive: distance >= gamma is unknown.
    assert nearest_centre(torch.tensor([0.0, 3.0]), centres, gamma=0.5).unknown is True
    assert nearest_centre(torch.tensor([0.0, 3.0]), centres).unknown is False


def test_nearest_centre_averages_and_normalises_walks():
    # Walks (.6, .8) and (.8, .6) average to (.7, .7) -> (1/sqrt2, 1/sqrt2): equally far
    # from (1, 0) and (0, 1) (tie -> lower index), sqrt(2 + sqrt2) from (-1, 0).
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    out = nearest_centre(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), centres, gamma=1.0)
    near, far = math.sqrt(2 - math.sqrt(2)), math.sqrt(2 + math.sqrt(2))
    assert _tolist(out.distances) == pytest.approx([near, near, far])
    assert out.order.tolist() == [0, 1, 2]
    assert out.unknown is False


def test_topk_clips_k_and_follows_the_ranking():
    labels = ["a", "b", "c"]
    voted = majority_vote(_logits((0.5, 0.3, 0.2), (0.1, 0.6, 0.3)))
    # Equal vote fractions: the order (mean probability) decides, not the scores.
    assert topk(voted, 5, labels) == [
        ("b", pytest.approx(0.5)),
        ("a", pytest.approx(0.5)),
        ("c", pytest.approx(0.0)),
    ]
    assert [name for name, _ in topk(voted, 2, labels)] == ["b", "a"]
    assert topk(torch.tensor([0.2, 0.5, 0.2]), 3, labels) == [
        ("b", pytest.approx(0.5)),
        ("a", pytest.approx(0.2)),
        ("c", pytest.approx(0.2)),
    ]
    assert topk(voted, 0, labels) == []
    with pytest.raises(ValueError):
        topk(voted, 2, ["a", "b"])


def test_aggregate_dispatches_by_name():
    assert set(AGGREGATORS) == {"majority_vote", "mean_prob", "last_steps_vote", "nearest_centre"}
    logits = _logits((0.5, 0.3, 0.2), (0.1, 0.6, 0.3))
    assert aggregate("majority_vote", logits).order.tolist() == [1, 0, 2]
    assert aggregate("mean_prob", logits).scores.tolist() == pytest.approx([0.3, 0.45, 0.25])
    steps = _logits([(0.2, 0.7, 0.1)] * 3)
    assert aggregate("last_steps_vote", steps, last=2).label == 1
    res = aggregate("nearest_centre", torch.tensor([1.0, 0.0]), centres=torch.eye(2), gamma=0.0)
    # Distance 0 to centre 0, and gamma 0: still unknown, the threshold is inclusive.
    assert isinstance(res, VideoScores) and res.label == 0 and res.unknown is True
    with pytest.raises(KeyError, match="unknown aggregator"):
        aggregate("max", logits)
