"""Video-level loss (the c3d_vll paper's Eq. 3-6) against hand-computed values.

Logits are log-probabilities, so each clip's softmax output is exactly the probabilities
written in the test, and every expected value below is worked out from those by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from training.losses.vll import CCL_VARIANTS, VideoLevelLoss, clip_ce_loss, vll_loss, vll_terms

SQRT2 = math.sqrt(2.0)


def _logits(*probs: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def _one_video(logits: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(logits.shape[0], dtype=torch.long), torch.tensor([label])


# Three clips of two classes: softmax outputs (.75,.25), (.9,.1), (.6,.4).
# For K = 2, ||y_k - y_j|| = sqrt(2) * |p_k - p_j|: pair gaps .15, .15, .30 -> mean .2.
THREE = _logits((0.75, 0.25), (0.9, 0.1), (0.6, 0.4))
THREE_EUC = SQRT2 * 0.2


def test_single_clip_has_no_consistency_term():
    logits = _logits((0.75, 0.25))
    vid, label = _one_video(logits, 0)
    for ccl in ("euclidean", "error", "full"):
        ce, c = vll_terms(logits, vid, label, ccl=ccl)
        assert c.item() == 0.0
        assert ce.item() == pytest.approx(-math.log(0.75))
        loss = vll_loss(logits, vid, label, ccl=ccl)
        assert loss.item() == pytest.approx(0.7 * -math.log(0.75))


def test_all_clips_right_uses_pairwise_distance():
    vid, label = _one_video(THREE, 0)
    ce = -(math.log(0.75) + math.log(0.9) + math.log(0.6)) / 3
    full = vll_loss(THREE, vid, label, ccl="full")
    assert full.item() == pytest.approx(0.7 * ce + 0.3 * THREE_EUC)
    euc = vll_loss(THREE, vid, label, ccl="euclidean")
    assert euc.item() == pytest.approx(0.7 * ce + 0.3 * THREE_EUC)
    # The error-direction term needs a correct and a wrong clip; here it is 0.
    err = vll_loss(THREE, vid, label, ccl="error")
    assert err.item() == pytest.approx(0.7 * ce)
    assert vll_loss(THREE, vid, label, ccl="none").item() == pytest.approx(ce)


def test_all_clips_wrong_uses_pairwise_distance():
    vid, label = _one_video(THREE, 1)
    ce = -(math.log(0.25) + math.log(0.1) + math.log(0.4)) / 3
    full = vll_loss(THREE, vid, label, ccl="full")
    assert full.item() == pytest.approx(0.7 * ce + 0.3 * THREE_EUC)
    assert vll_loss(THREE, vid, label, ccl="error").item() == pytest.approx(0.7 * ce)


def test_two_clips_pairwise_three_classes():
    # (.5,.3,.2) vs (.2,.3,.5): difference (.3, 0, -.3), norm sqrt(.18); both predict a
    # wrong class for label 1 (argmax 0 and 2), so the full loss uses the pair distance.
    logits = _logits((0.5, 0.3, 0.2), (0.2, 0.3, 0.5))
    vid, label = _one_video(logits, 1)
    _, c = vll_terms(logits, vid, label, ccl="full")
    assert c.item() == pytest.approx(math.sqrt(0.18))


def test_mixed_one_correct_two_wrong():
    # Label 0. Correct: (.75,.25) = R_mean. Wrong: (.25,.75) and (.4,.6).
    # Distances to R_mean: sqrt2 * .5 and sqrt2 * .35 -> mean sqrt2 * .425.
    logits = _logits((0.75, 0.25), (0.25, 0.75), (0.4, 0.6))
    vid, label = _one_video(logits, 0)
    ce = -(math.log(0.75) + math.log(0.25) + math.log(0.4)) / 3
    err = SQRT2 * 0.425
    assert vll_loss(logits, vid, label, ccl="full").item() == pytest.approx(0.7 * ce + 0.3 * err)
    assert vll_loss(logits, vid, label, ccl="error").item() == pytest.approx(0.7 * ce + 0.3 * err)
    # Euclidean-only ignores correctness: pair gaps .5, .35, .15 -> mean 1/3.
    euc = SQRT2 / 3
    assert vll_loss(logits, vid, label, ccl="euclidean").item() == pytest.approx(
        0.7 * ce + 0.3 * euc
    )


def test_mixed_two_correct_one_wrong_averages_the_reference():
    # Label 0: correct (.6,.2,.2), (.8,.1,.1) -> R_mean (.7,.15,.15);
    # wrong (.2,.5,.3): difference (-.5,.35,.15), norm sqrt(.25+.1225+.0225) = sqrt(.395).
    logits = _logits((0.6, 0.2, 0.2), (0.2, 0.5, 0.3), (0.8, 0.1, 0.1))
    vid, label = _one_video(logits, 0)
    _, c = vll_terms(logits, vid, label, ccl="full")
    assert c.item() == pytest.approx(math.sqrt(0.395))


def test_batch_of_videos_is_mean_of_per_video_losses():
    # Three videos with 1, 3 and 3 clips, interleaved in the flat batch.
    v0 = _logits((0.75, 0.25))
    v1 = THREE
    v2 = _logits((0.75, 0.25), (0.25, 0.75), (0.4, 0.6))
    logits = torch.cat([v1[:1], v0, v2[:2], v1[1:], v2[2:]])
    vid = torch.tensor([1, 0, 2, 2, 1, 1, 2])
    labels = torch.tensor([0, 1, 0])
    expected = [
        0.7 * -math.log(0.75),
        0.7 * -(math.log(0.25) + math.log(0.1) + math.log(0.4)) / 3 + 0.3 * THREE_EUC,
        0.7 * -(math.log(0.75) + math.log(0.25) + math.log(0.4)) / 3 + 0.3 * SQRT2 * 0.425,
    ]
    loss = vll_loss(logits, vid, labels, ccl="full")
    assert loss.item() == pytest.approx(sum(expected) / 3)
    singles = [
        vll_loss(v, *_one_video(v, int(y)), ccl="full").item() for v, y in zip((v0, v1, v2), labels)
    ]
    assert singles == pytest.approx(expected)


def test_alpha_zero_is_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(7, 5, dtype=torch.float64)
    vid = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    labels = torch.tensor([4, 1, 0])
    # Hand-rolled: -log softmax at the label, averaged within each video, then over videos.
    nll = -logits.log_softmax(dim=1)[torch.arange(7), labels[vid]]
    per_video = (nll[:3].mean() + nll[3:5].mean() + nll[5:].mean()) / 3
    for ccl in CCL_VARIANTS:
        assert vll_loss(logits, vid, labels, ccl=ccl, alpha=0.0).item() == pytest.approx(
            per_video.item()
        )


def test_clip_level_ce():
    logits = _logits((0.75, 0.25), (0.1, 0.9))
    loss = clip_ce_loss(logits, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(-(math.log(0.75) + math.log(0.1)) / 2)


@pytest.mark.parametrize("ccl", CCL_VARIANTS)
def test_gradients_finite_with_identical_clips(ccl):
    # Identical outputs give zero distances, where a naive norm's gradient is NaN.
    base = torch.tensor([[2.0, 0.0, -1.0], [2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    logits = base.clone().requires_grad_(True)
    vid = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 2])
    loss = VideoLevelLoss(ccl=ccl)(logits, vid, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_reference_gradient_flows_unless_detached():
    # Mixed video, error term only (alpha = 1): the correct clip enters only through R_mean.
    def grad_of_correct_clip(detach: bool) -> torch.Tensor:
        logits = _logits((0.75, 0.25), (0.25, 0.75), (0.4, 0.6)).requires_grad_(True)
        vid, label = _one_video(logits, 0)
        vll_loss(logits, vid, label, ccl="error", alpha=1.0, detach_reference=detach).backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        assert logits.grad[1:].abs().sum() > 0
        return logits.grad[0]

    assert grad_of_correct_clip(False).abs().sum() > 0
    assert torch.equal(grad_of_correct_clip(True), torch.zeros(2, dtype=torch.float64))


def test_rejects_bad_inputs():
    logits = _logits((0.75, 0.25), (0.5, 0.5))
    with pytest.raises(ValueError, match="ccl"):
        vll_loss(logits, torch.tensor([0, 0]), torch.tensor([0]), ccl="cosine")
    with pytest.raises(ValueError, match="at least one clip"):
        vll_loss(logits, torch.tensor([0, 0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="video_index"):
        vll_loss(logits, torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="alpha"):
        vll_loss(logits, torch.tensor([0, 0]), torch.tensor([0]), alpha=1.5)
