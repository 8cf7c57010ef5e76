"""From decoded frames and sampled indices to the network's float input.

One code path for training, export checks and the service: gather the sampled frames, crop
(centre in evaluation, one random window per video in training), optionally flip, scale to
``[0, 1]`` and normalise per channel. The output layout ``(N, C, L, H, W)`` is the input
contract shared by all four families.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from video.augment import Augment, augment_clips

__all__ = ["centre_crop_offsets", "clips_to_tensor", "normalize", "random_crop_offsets"]


def _check_crop(size: tuple[int, int], crop: tuple[int, int]) -> None:
    (height, width), (ch, cw) = size, crop
    if ch < 1 or cw < 1 or ch > height or cw > width:
        raise ValueError(f"crop {ch}x{cw} does not fit in frames of {height}x{width}")


def centre_crop_offsets(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the centred ``crop`` window: ``((H - h) // 2, (W - w) // 2)``.

    Args:
        size: Frame (height, width).
        crop: Window (height, width), no larger than the frame.
    """
    _check_crop(size, crop)
    return (size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2


def random_crop_offsets(
    size: tuple[int, int], crop: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """A uniformly random top-left corner so that ``crop`` lies inside the frame.

    Args:
        size: Frame (height, width).
        crop: Window (height, width), no larger than the frame.
        rng: Random generator.
    """
    _check_crop(size, crop)
    top = int(rng.integers(0, size[0] - crop[0] + 1))
    left = int(rng.integers(0, size[1] - crop[1] + 1))
    return top, left


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int = 1
) -> torch.Tensor:
    """``(x - mean) / std`` per channel along ``channel_dim`` (a new tensor).

    Args:
        x: Floating tensor, e.g. ``(N, C, L, H, W)`` on the ``[0, 1]`` scale.
        mean: One value per channel.
        std: One value per channel, all non-zero.
        channel_dim: Axis holding the channels.
    """
    channels = x.shape[channel_dim]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values, got {len(mean)} and {len(std)}")
    if any(s == 0 for s in std):
        raise ValueError("std must be non-zero")
    shape = [1] * x.dim()
    shape[channel_dim] = channels
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def clips_to_tensor(
    frames: np.ndarray,
    indices: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop: tuple[int, int] | None = None,
    train: bool = False,
    rng: np.random.Generator | None = None,
    hflip: bool = False,
    augment: Augment | None = None,
) -> torch.Tensor:
    """Gather, crop, scale and normalise sampled clips into the network input.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames.
        indices: ``(N, L)`` frame indices (a 1-D ``(L,)`` row counts as ``N = 1``).
        mean: RGB mean on the ``[0, 1]`` scale.
        std: RGB standard deviation on the ``[0, 1]`` scale.
        crop: ``(h, w)`` window; ``None`` keeps the whole frame. Centred in evaluation; in
            training one random window shared by every clip of the video.
        train: Use random crop (and flip, if asked) instead of the deterministic path.
        rng: Random generator for training; a fresh unseeded one when ``None``.
        hflip: In training only, mirror the whole video with probability 1/2. Leave it off
            for direction-defined classes (it swaps left and right).
        augment: In training only, :func:`video.augment.augment_clips` with these strengths
            (one draw for the whole video), before normalisation.

    Returns:
        ``(N, 3, L, h, w)`` float32, contiguous.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got shape {frames.shape}")
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim == 1:
        idx = idx[None, :]
    if idx.ndim != 2 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty (N, L) matrix, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= len(frames):
        raise IndexError(f"frame index out of range for a video of {len(frames)} frames")
    height, width = frames.shape[1:3]
    # Crop before gathering and converting so only the kept pixels are copied to float.
    if train:
        gen = rng if rng is not None else np.random.default_rng()
        if crop is not None:
            top, left = random_crop_offsets((height, width), crop, gen)
            frames = frames[:, top : top + crop[0], left : left + crop[1]]
        if hflip and gen.random() < 0.5:
            frames = frames[:, :, ::-1]
    elif crop is not None:
        top, left = centre_crop_offsets((height, width), crop)
        frames = frames[:, top : top + crop[0], left : left + crop[1]]
    clips = np.ascontiguousarray(frames[idx])  # (N, L, h, w, 3)
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).to(torch.float32).div_(255.0)
    if train and augment is not None:
        x = augment_clips(x, augment, rng if rng is not None else np.random.default_rng())
    return normalize(x, mean, std).contiguous()
