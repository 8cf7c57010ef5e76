"""Training augmentation that keeps a motion label valid.

Applied to a video's network input in training only, with one draw per video (every clip and
frame of the video gets the same crop, colour change, blur and noise pattern, so what moves
and how is unchanged): a random resized crop within bounds, brightness and contrast, Gaussian
blur and a fixed pattern of pixel noise. Nothing mirrors or rotates the frames, so
direction-defined classes (move_left and move_right, say) keep their meaning. The colour
changes (saturation, and a hue change by permuting the colour channels) alter what things look
like, never where they are. Temporal jitter is the samplers' (see
:func:`video.sampling.sample_indices`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Augment", "augment_clips"]


@dataclass(frozen=True)
class Augment:
    """Strengths of the training augmentation.

    Attributes:
        crop_scale: Smallest side of the random crop as a fraction of the frame's (the crop is
            resized back to the input size); 1 turns it off.
        max_aspect: Largest width/height ratio change of the crop (1: square crops).
        brightness: Largest relative brightness change (``x * (1 + b)``, ``b`` uniform in
            ``[-brightness, brightness]``).
        contrast: Largest relative contrast change about the video's mean.
        blur_prob: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's sigma in pixels.
        noise: Largest standard deviation of the added Gaussian noise (on the [0, 1] scale):
            one pattern for the whole video, like a sensor's fixed-pattern noise. Noise drawn
            afresh per frame would swamp the frame-to-frame differences a one-pixel-per-frame
            motion makes (ms3d stopped learning with it).
        saturation: Largest relative saturation change about each pixel's grey level (luma,
            ITU-R BT.601 weights): a factor in ``[1 - saturation, 1 + saturation]``, so 1 allows
            anything from grey to twice as vivid.
        channel_shuffle: Probability of a random permutation of the colour channels (a hue
            change that keeps every shape and its motion).
    """

    crop_scale: float = 0.9
    max_aspect: float = 1.1
    brightness: float = 0.2
    contrast: float = 0.2
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.0)
    noise: float = 0.03
    saturation: float = 1.0
    channel_shuffle: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must lie in (0, 1], got {self.crop_scale}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not (0.0 <= self.brightness < 1.0 and 0.0 <= self.contrast < 1.0):
            raise ValueError("brightness and contrast must lie in [0, 1)")
        if not 0.0 <= self.blur_prob <= 1.0 or self.noise < 0.0:
            raise ValueError("blur_prob must lie in [0, 1] and noise be >= 0")
        if not 0.0 <= self.saturation <= 1.0 or not 0.0 <= self.channel_shuffle <= 1.0:
            raise ValueError("saturation and channel_shuffle must lie in [0, 1]")


def _crop_box(
    height: int, width: int, aug: Augment, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop: area scale in ``[crop_scale**2, 1]``, aspect
    change within ``max_aspect``, inside the frame."""
    scale = math.sqrt(rng.uniform(aug.crop_scale**2, 1.0))
    aspect = math.exp(rng.uniform(-math.log(aug.max_aspect), math.log(aug.max_aspect)))
    h = min(height, max(1, round(height * scale / math.sqrt(aspect))))
    w = min(width, max(1, round(width * scale * math.sqrt(aspect))))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


# Luma weights of ITU-R BT.601, the grey level saturation is changed about.
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images (reflected borders)."""
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    c = images.shape[1]
    if min(images.shape[-2:]) <= r:
        return images
    x = F.pad(images, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def augment_clips(clips: torch.Tensor, aug: Augment, rng: np.random.Generator) -> torch.Tensor:
    """One video's clips ``(N, 3, L, h, w)`` on the [0, 1] scale, augmented with one draw.

    Returns:
        A new ``(N, 3, L, h, w)`` float32 tensor on the [0, 1] scale, same size.
    """
    n, c, length, height, width = clips.shape
    images = clips.permute(0, 2, 1, 3, 4).reshape(n * length, c, height, width)
    if aug.crop_scale < 1.0:
        top, left, h, w = _crop_box(height, width, aug, rng)
        if (h, w) != (height, width):
            window = images[:, :, top : top + h, left : left + w]
            images = F.interpolate(
                window, size=(height, width), mode="bilinear", align_corners=False
            )
    if aug.brightness:
        images = images * (1.0 + rng.uniform(-aug.brightness, aug.brightness))
    if aug.contrast:
        mean = images.mean()
        images = (images - mean) * (1.0 + rng.uniform(-aug.contrast, aug.contrast)) + mean
    if aug.blur_prob and rng.random() < aug.blur_prob:
        images = _blur(images, float(rng.uniform(*aug.blur_sigma)))
    if aug.noise:
        std = float(rng.uniform(0.0, aug.noise))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        pattern = torch.randn((1, c, height, width), generator=generator)
        images = images + std * pattern
    # Colour last, so the draws above are those they were before it existed.
    if aug.saturation and c == len(_LUMA):
        grey = (images * torch.tensor(_LUMA).view(1, c, 1, 1)).sum(dim=1, keepdim=True)
        factor = rng.uniform(1.0 - aug.saturation, 1.0 + aug.saturation)
        images = grey + (images - grey) * factor
    if aug.channel_shuffle and rng.random() < aug.channel_shuffle:
        images = images[:, torch.from_numpy(rng.permutation(c))]
    images = images.clamp_(0.0, 1.0)
    return images.reshape(n, length, c, height, width).permute(0, 2, 1, 3, 4).contiguous()
