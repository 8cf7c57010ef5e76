"""Training augmentation keeps motion labels: a moving blob still moves the same way after
every draw; one draw per video; hand-checked colour change; the samplers' temporal jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import parse_config
from training.tasks import make_task
from video.augment import Augment, augment_clips
from video.sampling import sample_indices
from video.transforms import clips_to_tensor

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def _blob_video(direction: tuple[int, int], frames: int = 12, size: int = 48) -> np.ndarray:
    """A bright 8x8 square moving 2 px per frame over a dark textured background."""
    rng = np.random.default_rng(0)
    video = rng.integers(20, 60, size=(frames, size, size, 3)).astype(np.uint8)
    dx, dy = direction
    x0 = 20 - dx * frames
    y0 = 20 - dy * frames
    for t in range(frames):
        x, y = x0 + 2 * dx * t, y0 + 2 * dy * t
        video[t, y : y + 8, x : x + 8] = 230
    return video


def _centroids(x: torch.Tensor) -> np.ndarray:
    """Per frame of one ``(3, L, h, w)`` clip on the [0, 1] scale, the (x, y) centroid of its
    brightest pixels (the blob)."""
    grey = x.mean(dim=0).numpy()
    out = []
    for frame in grey:
        mask = frame >= np.quantile(frame, 0.97)
        ys, xs = np.nonzero(mask)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_augmentation_keeps_the_direction_of_motion(name: str) -> None:
    dx, dy = DIRECTIONS[name]
    video = _blob_video((dx, dy))
    indices = np.arange(len(video))[None, :]
    aug = Augment()
    for seed in range(40):
        x = clips_to_tensor(
            video, indices, mean=(0, 0, 0), std=(1, 1, 1), train=True,
            rng=np.random.default_rng(seed), augment=aug,
        )  # fmt: skip
        assert x.shape == (1, 3, len(video), 48, 48)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        path = _centroids(x[0])
        step = np.diff(path, axis=0).mean(axis=0)  # mean (dx, dy) per frame
        along = step[0] * dx + step[1] * dy
        across = abs(step[0] * dy - step[1] * dx)
        assert along > 1.0 and across < 0.5 * along, (seed, step)


def test_one_draw_per_video_and_eval_untouched() -> None:
    video = _blob_video((1, 0))
    indices = np.stack([np.arange(6), np.arange(6)])  # the same clip twice
    x = clips_to_tensor(
        video, indices, mean=(0, 0, 0), std=(1, 1, 1), train=True,
        rng=np.random.default_rng(1), augment=Augment(blur_prob=1.0),
    )  # fmt: skip
    # the same crop, colour, blur and noise pattern for every clip and frame
    torch.testing.assert_close(x[0], x[1], rtol=0, atol=0)
    still = clips_to_tensor(
        np.repeat(video[:1], 6, axis=0), indices, mean=(0, 0, 0), std=(1, 1, 1), train=True,
        rng=np.random.default_rng(2), augment=Augment(),
    )  # fmt: skip
    assert float((still[:, :, 1:] - still[:, :, :-1]).abs().max()) == 0.0  # no flicker
    plain = clips_to_tensor(video, indices, mean=(0, 0, 0), std=(1, 1, 1))
    evaluated = clips_to_tensor(video, indices, mean=(0, 0, 0), std=(1, 1, 1), augment=Augment())
    torch.testing.assert_close(evaluated, plain, rtol=0, atol=0)
    assert not torch.equal(x, plain)


def test_brightness_and_contrast_by_hand() -> None:
    clips = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 1, 1, 2, 2).expand(1, 3, 2, 2, 2).clone()
    only_brightness = Augment(crop_scale=1.0, contrast=0.0, blur_prob=0.0, noise=0.0)
    b = np.random.default_rng(5).uniform(-0.2, 0.2)  # the one draw it makes
    out = augment_clips(clips, only_brightness, np.random.default_rng(5))
    torch.testing.assert_close(out, (clips * (1 + b)).clamp(0, 1))
    only_contrast = Augment(crop_scale=1.0, brightness=0.0, blur_prob=0.0, noise=0.0)
    c = np.random.default_rng(6).uniform(-0.2, 0.2)
    out = augment_clips(clips, only_contrast, np.random.default_rng(6))
    torch.testing.assert_close(out, ((clips - 0.5) * (1 + c) + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="crop_scale"):
        Augment(crop_scale=0.0)


def test_saturation_and_channel_shuffle_by_hand() -> None:
    # one pixel, pure red at 0.5: luma 0.299 * 0.5 = 0.1495
    clips = torch.tensor([0.5, 0.0, 0.0]).view(1, 3, 1, 1, 1).clone()
    only_colour = Augment(
        crop_scale=1.0, brightness=0.0, contrast=0.0, blur_prob=0.0, noise=0.0,
        saturation=0.5, channel_shuffle=0.0,
    )  # fmt: skip
    f = np.random.default_rng(3).uniform(0.5, 1.5)
    out = augment_clips(clips, only_colour, np.random.default_rng(3)).flatten()
    grey = 0.1495
    expected = torch.tensor([grey + (0.5 - grey) * f, grey * (1 - f), grey * (1 - f)])
    torch.testing.assert_close(out, expected.clamp(0, 1).float())
    only_shuffle = Augment(
        crop_scale=1.0, brightness=0.0, contrast=0.0, blur_prob=0.0, noise=0.0,
        saturation=0.0, channel_shuffle=1.0,
    )  # fmt: skip
    rgb = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1, 1)
    rng = np.random.default_rng(4)
    rng.random()  # the shuffle's coin
    order = rng.permutation(3)
    out = augment_clips(rgb, only_shuffle, np.random.default_rng(4)).flatten()
    torch.testing.assert_close(out, rgb.flatten()[torch.from_numpy(order)])
    with pytest.raises(ValueError, match="saturation"):
        Augment(saturation=1.5)


def test_consecutive_clips_jitter_in_training_without_changing_their_number() -> None:
    frames = np.zeros((40, 4, 4, 3), dtype=np.uint8)
    plain = sample_indices("consecutive", frames, clip_len=16)
    assert plain[:, 0].tolist() == [0, 16]
    starts = set()
    for seed in range(50):
        idx = sample_indices(
            "consecutive", frames, train=True, rng=np.random.default_rng(seed), clip_len=16
        )
        assert idx.shape == plain.shape and idx.max() < 40
        np.testing.assert_array_equal(idx - idx[0, 0], plain)  # the grid shifts whole
        starts.add(int(idx[0, 0]))
    assert starts == set(range(9))  # slack after the last clip: 40 - 32 = 8 frames
    # a video the clips fill exactly has no slack
    exact = sample_indices(
        "consecutive", frames[:32], train=True, rng=np.random.default_rng(0), clip_len=16
    )
    assert exact[:, 0].tolist() == [0, 16]


def test_augmentation_is_on_in_the_demo_presets_only() -> None:
    for family in ("c3d_vll", "attention_lstm", "ms3d", "full_video"):
        demo = parse_config(["--family", family, "--data", "-"])
        assert demo.augment and make_task(demo, ["a", "b"]).augment() == Augment()
        paper = parse_config(["--family", family, "--data", "-", "--preset", "paper"])
        assert not paper.augment and make_task(paper, ["a", "b"]).augment() is None
        off = parse_config(["--family", family, "--data", "-", "--augment", "false"])
        assert make_task(off, ["a", "b"]).augment() is None
