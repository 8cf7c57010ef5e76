"""C3D-style clip network trained with the video-level loss: the ``c3d_vll`` family.

Paper: Q. Shi, H.-B. Zhang, H.-T. Ren, J.-X. Du, Q. Lei, "Consistent constraint-based
video-level learning for action recognition", EURASIP Journal on Image and Video Processing
2020:35, doi:10.1186/s13640-020-00519-1.

Five 3x3x3 convolutions with max pooling, fc6, fc7 and a classifier over one clip (the paper's
Section 3.2, Fig. 3), trained clip by clip or a video at a time with
:mod:`training.losses.vll`; a video's clips are combined by
:func:`models.aggregators.majority_vote`.

Design choices: docs/models.md#c3d_vll.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.registry import register_model
from models.spec import VariantSpec

__all__ = ["C3DVLL", "C3D_WIDTHS", "c3d_vll", "c3d_vll_tiny"]

# Output channels of conv1..conv5 at width multiplier 1.
C3D_WIDTHS: tuple[int, ...] = (64, 128, 256, 256, 256)

# (time, height, width) kernel = stride of pool1..pool5; pool1 keeps time so early layers see
# the whole clip, as in C3D.
_POOLS: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))


def _ceil_pool_size(size: int, kernel: int) -> int:
    """Output length of a ceil-mode max pool with stride = kernel and no padding.

    Mirrors PyTorch's rule: round up, but drop a last window that would start past the input.
    """
    out = math.ceil((size - kernel) / kernel) + 1
    if (out - 1) * kernel >= size:
        out -= 1
    return max(out, 1)


def _feature_shape(clip_len: int, input_size: tuple[int, int]) -> tuple[int, int, int]:
    """(t, h, w) of the conv feature map for a clip of ``clip_len`` frames of ``input_size``."""
    t, h, w = clip_len, input_size[0], input_size[1]
    for kt, kh, kw in _POOLS:
        t, h, w = _ceil_pool_size(t, kt), _ceil_pool_size(h, kh), _ceil_pool_size(w, kw)
    return t, h, w


class _ConvBlock(nn.Sequential):
    """3x3x3 convolution (padding 1), optional BatchNorm, ReLU, then a ceil-mode max pool."""

    def __init__(
        self, in_channels: int, out_channels: int, pool: tuple[int, int, int], norm: bool = False
    ) -> None:
        conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=not norm)
        layers: list[nn.Module] = [conv, nn.BatchNorm3d(out_channels)] if norm else [conv]
        super().__init__(
            *layers,
            nn.ReLU(inplace=True),
            nn.MaxPool3d(kernel_size=pool, stride=pool, ceil_mode=True),
        )


class C3DVLL(nn.Module):
    """Five conv blocks, fc6, fc7 and a linear classifier over one clip.

    Input ``(N, C, T, H, W)`` with ``T = clip_len`` and ``(H, W) = input_size``; output clip
    logits ``(N, num_classes)``. The flatten size of the conv features is computed from
    ``clip_len`` and ``input_size``, so other clip shapes need a model built for them.

    Layer names: ``layer1``..``layer5`` (conv, [BatchNorm,] ReLU, pool), ``fc6``, ``fc7``,
    ``head``.

    Args:
        num_classes: Number of action classes.
        width: Multiplier on :data:`C3D_WIDTHS` for cheaper variants (at least 1 channel).
        fc_dim: Units of fc6 and fc7.
        dropout: Dropout probability after fc6 and fc7.
        clip_len: Frames per clip.
        input_size: (height, width) of each frame.
        in_channels: Input channels (3 for RGB).
        norm: BatchNorm after every convolution (the paper has none).
    """

    def __init__(
        self,
        *,
        num_classes: int = 101,
        width: float = 1.0,
        fc_dim: int = 4096,
        dropout: float = 0.05,
        clip_len: int = 16,
        input_size: Sequence[int] = (112, 112),
        in_channels: int = 3,
        norm: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1 or fc_dim < 1 or clip_len < 1 or width <= 0:
            raise ValueError("num_classes, fc_dim, clip_len and width must be positive")
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width), got {tuple(input_size)}")
        self.num_classes = num_classes
        self.clip_len = clip_len
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.in_channels = in_channels
        self.norm = norm
        self.widths = tuple(max(1, round(c * width)) for c in C3D_WIDTHS)

        chans = (in_channels, *self.widths)
        self.layer1 = _ConvBlock(chans[0], chans[1], _POOLS[0], norm)
        self.layer2 = _ConvBlock(chans[1], chans[2], _POOLS[1], norm)
        self.layer3 = _ConvBlock(chans[2], chans[3], _POOLS[2], norm)
        self.layer4 = _ConvBlock(chans[3], chans[4], _POOLS[3], norm)
        self.layer5 = _ConvBlock(chans[4], chans[5], _POOLS[4], norm)

        self.feature_shape = (self.widths[-1], *_feature_shape(clip_len, self.input_size))
        self.num_flat_features = math.prod(self.feature_shape)
        self.num_features = fc_dim  # width of the pre-logits (fc7) representation

        self.fc6 = nn.Linear(self.num_flat_features, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(fc_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Trained from scratch (no large-scale pretraining in the paper): He init keeps the
        # activation scale through the ReLU stack; a small head starts near-uniform softmax.
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        """Conv features ``(N, C', t, h, w)`` of clips ``(N, C, T, H, W)``."""
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.layer5(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """fc6, fc7 (ReLU + dropout each) and the classifier on conv features.

        Args:
            x: Output of :meth:`forward_features`.
            pre_logits: Return the fc7 activations ``(N, fc_dim)`` instead of logits.
        """
        x = torch.flatten(x, 1)
        if x.shape[1] != self.num_flat_features:
            raise ValueError(
                f"conv features have {x.shape[1]} values per clip, the model was built for "
                f"{self.num_flat_features} (clip_len={self.clip_len}, input_size={self.input_size})"
            )
        x = self.drop(self.act(self.fc6(x)))
        x = self.drop(self.act(self.fc7(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Clip logits ``(N, num_classes)`` for clips ``(N, C, T, H, W)``."""
        return self.forward_head(self.forward_features(x))


_PAPER: dict[str, Any] = {"width": 1.0, "fc_dim": 4096}
_TINY: dict[str, Any] = {"width": 0.25, "fc_dim": 256, "norm": True}


def _build(spec: VariantSpec, arch: dict[str, Any], kwargs: dict[str, Any]) -> C3DVLL:
    return C3DVLL(clip_len=spec.clip_len, input_size=spec.input_size, **{**arch, **kwargs})


@register_model(
    spec=VariantSpec(
        family="c3d_vll",
        input_size=(112, 112),
        decode_size=(128, 171),
        clip_len=16,
        sampler="consecutive",
        aggregator="majority_vote",
    )
)
def c3d_vll(*, spec: VariantSpec, num_classes: int = 101, **kwargs: Any) -> C3DVLL:
    """The paper's network: widths 64-256, fc 4096, 16x112x112 clips decoded at 128x171.

    Args:
        spec: The clip shape to build for (the registry passes it).
        num_classes: Number of action classes.
        **kwargs: Overrides of any other :class:`C3DVLL` argument (e.g. ``fc_dim=2048``).
    """
    return _build(spec, _PAPER, {"num_classes": num_classes, **kwargs})


@register_model(
    spec=VariantSpec(
        family="c3d_vll",
        input_size=(56, 56),
        decode_size=(64, 64),
        clip_len=16,
        sampler="consecutive",
        aggregator="majority_vote",
    )
)
def c3d_vll_tiny(*, spec: VariantSpec, num_classes: int = 10, **kwargs: Any) -> C3DVLL:
    """A CPU-sized variant for 64x64 synthetic videos: width 1/4, fc 256, 16x56x56 clips, BN.

    Args:
        spec: The clip shape to build for (the registry passes it).
        num_classes: Number of action classes.
        **kwargs: Overrides of any other :class:`C3DVLL` argument.
    """
    return _build(spec, _TINY, {"num_classes": num_classes, **kwargs})
