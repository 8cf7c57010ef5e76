"""Crop, normalise and layout of clips_to_tensor on tiny arrays (video/transforms.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from video.transforms import centre_crop_offsets, clips_to_tensor, normalize, random_crop_offsets


def _frames(t: int = 4, h: int = 4, w: int = 6) -> np.ndarray:
    # Pixel value encodes (frame, row, col) on channel 0; channels 1, 2 are constant.
    f = np.zeros((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        for y in range(h):
            for x in range(w):
                f[i, y, x, 0] = 100 * (i % 2) + 10 * y + x
    f[..., 1] = 51
    f[..., 2] = 255
    return f


def test_centre_crop_offsets():
    assert centre_crop_offsets((4, 6), (2, 2)) == (1, 2)
    assert centre_crop_offsets((5, 5), (2, 2)) == (1, 1)  # floor of 1.5
    assert centre_crop_offsets((4, 4), (4, 4)) == (0, 0)
    with pytest.raises(ValueError):
        centre_crop_offsets((4, 4), (5, 2))


def test_random_crop_offsets_cover_all_positions():
    rng = np.random.default_rng(0)
    seen = {random_crop_offsets((4, 6), (3, 4), rng) for _ in range(200)}
    assert seen == {(t, left) for t in range(2) for left in range(3)}


def test_normalize_by_hand():
    x = torch.tensor([0.5, 1.0, 0.0]).view(1, 3, 1, 1, 1)
    got = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert got.flatten().tolist() == [0.0, 1.0, -0.5]
    with pytest.raises(ValueError):
        normalize(x, mean=(0.5,), std=(1.0,))


def test_clips_to_tensor_layout_and_values():
    frames = _frames()
    idx = np.array([[0, 1], [3, 3]])
    out = clips_to_tensor(frames, idx, mean=(0, 0, 0), std=(1, 1, 1))
    assert out.shape == (2, 3, 2, 4, 6) and out.dtype == torch.float32 and out.is_contiguous()
    # clip 0, channel 0, step 1 (= frame 1), row 2, col 5: 100 + 20 + 5 = 125
    assert out[0, 0, 1, 2, 5].item() == pytest.approx(125 / 255)
    # clip 1, step 0 is frame 3: 100 + 0 + 0
    assert out[1, 0, 0, 0, 0].item() == pytest.approx(100 / 255)
    assert out[:, 1].unique().tolist() == [pytest.approx(0.2)]
    assert out[:, 2].unique().tolist() == [1.0]


def test_clips_to_tensor_normalises_and_centre_crops():
    frames = _frames()
    out = clips_to_tensor(
        frames, np.array([[2]]), mean=(0.1, 0.2, 0.5), std=(0.5, 0.1, 0.25), crop=(2, 2)
    )
    assert out.shape == (1, 3, 1, 2, 2)
    # centre window rows 1..2, cols 2..3 of frame 2 (even: no +100)
    expected = (np.array([[12, 13], [22, 23]]) / 255 - 0.1) / 0.5
    np.testing.assert_allclose(out[0, 0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1].numpy(), 0.0, atol=1e-6)  # (0.2 - 0.2) / 0.1
    np.testing.assert_allclose(out[0, 2].numpy(), 2.0, rtol=1e-6)  # (1 - 0.5) / 0.25


def test_clips_to_tensor_train_crop_shared_across_clips():
    frames = _frames(t=2)
    idx = np.array([[0], [0]])
    out = clips_to_tensor(
        frames,
        idx,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        crop=(2, 3),
        train=True,
        rng=np.random.default_rng(7),
    )
    assert torch.equal(out[0], out[1])
    # The window is some valid 2x3 sub-array of frame 0.
    win = (out[0, 0, 0].numpy() * 255).round().astype(int)
    full = frames[0, :, :, 0].astype(int)
    assert any(
        np.array_equal(win, full[t : t + 2, left : left + 3]) for t in range(3) for left in range(4)
    )


def test_clips_to_tensor_hflip_only_when_asked():
    frames = _frames(t=1)
    idx = np.array([[0]])
    unit: dict[str, Any] = dict(mean=(0, 0, 0), std=(1, 1, 1))

    def run(seed: int, **kw) -> torch.Tensor:
        rng = np.random.default_rng(seed)
        return clips_to_tensor(frames, idx, **unit, train=True, rng=rng, **kw)

    plain = run(0)
    for seed in range(20):  # without hflip, never mirrored
        assert torch.equal(run(seed), plain)
    flipped = [torch.equal(run(s, hflip=True), plain.flip(-1)) for s in range(40)]
    assert 5 < sum(flipped) < 35
    # Evaluation ignores hflip.
    assert torch.equal(clips_to_tensor(frames, idx, **unit, hflip=True), plain)


def test_clips_to_tensor_rejects_bad_input():
    frames = _frames()
    with pytest.raises(IndexError):
        clips_to_tensor(frames, np.array([[0, 4]]), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError):
        clips_to_tensor(frames[..., :2], np.array([[0]]), mean=(0, 0, 0), std=(1, 1, 1))
    # A 1-D index row is one clip.
    row = clips_to_tensor(frames, np.array([0, 1, 2]), mean=(0, 0, 0), std=(1, 1, 1))
    assert row.shape == (1, 3, 3, 4, 6)
