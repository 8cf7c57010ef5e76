"""Full video recognition: a TSM ResNet that clusters all frames after its first stage.

Paper: X. Liu, S. L. Pintea, F. Karimi Nejadasl, O. Booij, J. C. van Gemert, "No frame left
behind: Full Video Action Recognition", CVPR 2021, arXiv:2103.15395.
Backbone: J. Lin, C. Gan, S. Han, "TSM: Temporal Shift Module for Efficient Video
Understanding", ICCV 2019, arXiv:1811.08383; ResNet-18 / ResNet-50, written here from scratch.

``stem`` and ``layer1`` run on every frame; the layer1 activations of each video are cut into
``g`` temporal clusters (:mod:`models.clustering`) and replaced by the cluster means, which
``layer2``..``layer4`` treat as the video's segments. ``clustering="none"`` is plain TSM (the
"TSM all" and "TSM-k" baselines).

Design choices: docs/models.md#full_video.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.clustering import (
    CLUSTERING_MODES,
    assign_clusters,
    hamming_distances,
    temporal_cluster,
)
from models.registry import register_model
from models.spec import IMAGENET_MEAN, IMAGENET_STD, VariantSpec
from models.weights import LoadReport, load_matching

__all__ = [
    "BACKBONES",
    "temporal_shift",
    "BasicBlock",
    "Bottleneck",
    "FullVideoNet",
    "from_torchvision_resnet",
    "full_video",
    "full_video_r50",
    "full_video_tiny",
    "full_video_tsm",
    "full_video_tsm_all",
    "full_video_tiny_tsm",
    "full_video_tiny_tsm_all",
]


def temporal_shift(x: Tensor, fold_div: int = 8) -> Tensor:
    """TSM's bidirectional temporal shift with zero fill.

    With ``fold = C // fold_div``: channels ``[0, fold)`` of frame ``t`` take the values of
    frame ``t + 1`` (zeros for the last frame), channels ``[fold, 2 * fold)`` take those of
    frame ``t - 1`` (zeros for the first frame), the remaining channels stay. Built from slices
    and concatenation only, so it exports to ONNX with a dynamic number of frames.

    Args:
        x: ``(N, T, C, H, W)`` activations; ``T`` is the number of segments.
        fold_div: ``C // fold_div`` channels move each way (8 in TSM and the paper).

    Returns:
        A new tensor of the same shape.
    """
    fold = x.shape[2] // fold_div
    if fold == 0:
        return x
    backward = x[:, 1:, :fold]
    forward = x[:, :-1, fold : 2 * fold]
    pad = torch.zeros_like(x[:, :1, :fold])
    return torch.cat(
        [
            torch.cat([backward, pad], dim=1),
            torch.cat([pad, forward], dim=1),
            x[:, :, 2 * fold :],
        ],
        dim=2,
    )


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(
        in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False
    )
    return conv, nn.BatchNorm2d(out_channels)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(*_conv_bn(in_channels, out_channels, 1, stride))


class _ShiftBlock(nn.Module):
    """Residual block on ``(N, T, C, H, W)``: shift, then the 2D residual branch per frame."""

    downsample: nn.Sequential | None

    def __init__(self, shift_div: int) -> None:
        super().__init__()
        self.shift_div = shift_div
        self.relu = nn.ReLU()

    def _branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        n, t = x.shape[0], x.shape[1]
        frames = x.flatten(0, 1)
        # TSM's residual shift: only the branch sees neighbouring frames, the identity path
        # keeps each frame's own activation.
        shifted = temporal_shift(x, self.shift_div).flatten(0, 1) if self.shift_div else frames
        identity = frames if self.downsample is None else self.downsample(frames)
        out = self.relu(self._branch(shifted) + identity)
        return out.reshape((n, t) + out.shape[1:])


class BasicBlock(_ShiftBlock):
    """ResNet-18/34 block (two 3x3 convolutions) with a residual temporal shift."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, shift_div: int = 8) -> None:
        super().__init__(shift_div)
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.downsample = _shortcut(in_channels, width * self.expansion, stride)

    def _branch(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(x))


class Bottleneck(_ShiftBlock):
    """ResNet-50 block (1x1, 3x3 with the stride, 1x1 x4) with a residual temporal shift."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, shift_div: int = 8) -> None:
        super().__init__(shift_div)
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * self.expansion, 1)
        self.downsample = _shortcut(in_channels, width * self.expansion, stride)

    def _branch(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


@dataclass(frozen=True)
class _Backbone:
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]
    width: int


BACKBONES: dict[str, _Backbone] = {
    "resnet18": _Backbone(BasicBlock, (2, 2, 2, 2), 64),
    "resnet50": _Backbone(Bottleneck, (3, 4, 6, 3), 64),
    # The CPU variant: ResNet-18's layout at a quarter of the width (16, 32, 64, 128 channels).
    "resnet18_narrow": _Backbone(BasicBlock, (2, 2, 2, 2), 16),
}


def from_torchvision_resnet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ResNet state dict in torchvision's key layout renamed to :class:`FullVideoNet`'s.

    torchvision (and timm's plain ``resnet18`` / ``resnet50``) name the stem ``conv1.weight``
    and ``bn1.*``, which become ``stem.0.weight`` and ``stem.1.*``; the residual stages
    (``layer1.0.conv1.weight``, ``layer1.0.bn1.*``, ``layer1.0.downsample.0.weight``...) are
    named as here, and the ImageNet classifier ``fc.*`` has no counterpart. Nothing else is
    renamed, so a key of another layout stays visible as such in a refusal.
    """

    def rename(key: str) -> str:
        if key == "conv1.weight":
            return "stem.0.weight"
        return "stem.1." + key.removeprefix("bn1.") if key.startswith("bn1.") else key

    return {rename(k): v for k, v in state.items()}


class FullVideoNet(nn.Module):
    """TSM ResNet with temporal clustering after ``layer1`` (or plain TSM for ``"none"``).

    Args:
        num_classes: Size of the classifier output.
        backbone: A key of :data:`BACKBONES`.
        width: Base width overriding the backbone's (channels of the stem and ``layer1``).
        num_clusters: ``g``, the number of cluster means that reach ``layer2``.
        clustering: ``"cumulative"``, ``"slope"``, ``"uniform"`` or ``"none"`` (no clustering:
            every frame is a segment throughout).
        shift_div: ``1 / shift_div`` of the channels shift each way; 0 disables the shift.
        dropout: Dropout before ``head``.

    Raises:
        ValueError: For an unknown backbone or clustering mode, or ``num_clusters < 1``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: str = "resnet18",
        width: int | None = None,
        num_clusters: int = 8,
        clustering: str = "cumulative",
        shift_div: int = 8,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
        modes = (*CLUSTERING_MODES, "none")
        if clustering not in modes:
            raise ValueError(f"unknown clustering {clustering!r}; expected one of {modes}")
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be at least 1, got {num_clusters}")
        spec = BACKBONES[backbone]
        base = width or spec.width
        self.num_clusters = num_clusters
        self.clustering = clustering
        self.shift_div = shift_div
        self.stem = nn.Sequential(
            *_conv_bn(3, base, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)
        )
        channels = base
        stages = []
        for index, blocks in enumerate(spec.layers):
            stage_width = base * 2**index
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(spec.block(channels, stage_width, stride if b == 0 else 1, shift_div))
                channels = stage_width * spec.block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = channels
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def load_imagenet_resnet(self, state: Mapping[str, Tensor]) -> LoadReport:
        """Load an ImageNet ResNet of the same depth and width into the backbone.

        ``state`` is in torchvision's key layout (:func:`from_torchvision_resnet`). The
        temporal shift has no parameters, so every backbone tensor has its 2D counterpart and
        must load; the classifier is new (``head`` keeps its initialisation, ImageNet's ``fc``
        is ignored). BatchNorm's ``num_batches_tracked`` counters that the file lacks (older
        torchvision files) stay at 0.

        Raises:
            models.weights.WeightsMismatch: Keys missing or unknown, or shapes that differ,
                listed in the network's names (``stem.0`` = ``conv1``, ``stem.1`` = ``bn1``).
        """
        renamed = from_torchvision_resnet(state)
        own = self.state_dict()
        fresh = {k for k in own if k.startswith("head.")} | {
            k for k in renamed if k.startswith("fc.")
        }
        fresh |= {k for k in own if k.endswith("num_batches_tracked") and k not in renamed}
        hint = ""
        if "conv1.0.weight" in state:
            hint = " (a deep-stem ResNet such as timm's resnet50d: this backbone has one 7x7 stem)"
        return load_matching(
            self,
            renamed,
            skip=fresh,
            source=f"the ResNet weights{hint} (torchvision layout; stem.0 = conv1, stem.1 = bn1)",
        )

    @property
    def early_context(self) -> int:
        """Frames on each side that reach one frame's ``layer1`` activation: each shifting
        block of ``layer1`` moves channels by one frame (0 without the shift)."""
        return len(self.layer1) if self.shift_div else 0

    def early_features(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` -> layer1 activations of every frame, ``(N, T, C, h, w)``."""
        n, t = x.shape[0], x.shape[2]
        frames = self.stem(x.transpose(1, 2).flatten(0, 1))
        return self.layer1(frames.reshape((n, t) + frames.shape[1:]))

    def cluster(self, features: Tensor) -> Tensor:
        """``(N, T, C, h, w)`` layer1 activations -> ``(N, g, C, h, w)`` cluster means.

        The identity for ``clustering="none"``.
        """
        if self.clustering == "none":
            return features
        return temporal_cluster(features, self.num_clusters, self.clustering)

    def assign(self, features: Tensor) -> Tensor:
        """Cluster ids ``(N, T)`` of layer1 activations ``(N, T, C, h, w)`` (not differentiated).

        Without clustering every frame is its own segment (ids ``0..T-1``).
        """
        if self.clustering == "none":
            return torch.ones_like(features[:, :, 0, 0, 0], dtype=torch.int64).cumsum(dim=1) - 1
        distances = hamming_distances(features.detach())
        return assign_clusters(distances, self.num_clusters, self.clustering)

    @torch.no_grad()
    def cluster_assignment(self, x: Tensor) -> Tensor:
        """Which cluster each input frame joins, ``(N, T)``: for inspection (paper Fig. 7-8)."""
        return self.assign(self.early_features(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` -> per-segment feature maps ``(N, S, C, h, w)``.

        ``S`` is ``g`` with clustering and ``T`` without.
        """
        return self.late_features(self.cluster(self.early_features(x)))

    def late_features(self, segments: Tensor) -> Tensor:
        """``layer2`` .. ``layer4`` on ``(N, S, C, h, w)`` segments (cluster means or frames)."""
        return self.layer4(self.layer3(self.layer2(segments)))

    def forward_head(self, features: Tensor) -> Tensor:
        """``(N, S, C, h, w)`` -> logits ``(N, num_classes)``: spatial pool, segment mean, head."""
        pooled = features.mean(dim=(-2, -1)).mean(dim=1)
        return self.head(self.head_drop(pooled))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` videos -> ``(N, num_classes)`` logits."""
        return self.forward_head(self.forward_features(x))


# Paper scale: frames decoded at 256x340 (the common UCF101/Kinetics working size), 224 centre crop.
_PAPER_SIZE = (224, 224)
_PAPER_DECODE = (256, 340)
# CPU scale: Move4Digits-sized frames, fed as they are.
_TINY_SIZE = (64, 64)


def _spec(sampler: str, input_size: tuple[int, int], segments: int, **kwargs: Any) -> VariantSpec:
    # "all": every frame, padded by repeating the last one up to ``segments`` frames (the
    # paper's training pads short videos so that g clusters exist); "uniform": TSM-k.
    return VariantSpec(
        family="full_video",
        input_size=input_size,
        segments=segments,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        sampler=sampler,
        aggregator="mean_prob",
        **kwargs,
    )


def _net(spec: VariantSpec, clustering: str, kwargs: dict[str, Any]) -> FullVideoNet:
    # The clustering variants reduce to ``spec.segments`` cluster means; a TSM baseline
    # (clustering "none") takes whatever frames the sampler gives.
    num_clusters = spec.segments if clustering != "none" else 1
    return FullVideoNet(num_clusters=num_clusters, clustering=clustering, **kwargs)


@register_model(spec=_spec("all", _PAPER_SIZE, 8, decode_size=_PAPER_DECODE))
def full_video(
    *, spec: VariantSpec, num_classes: int = 101, clustering: str = "cumulative", **kwargs: Any
) -> FullVideoNet:
    """The paper's method on TSM ResNet-18 (its Move4MNIST/Breakfast setting), all frames, g = 8.

    Args:
        spec: ``segments`` is g, the number of clusters (the registry passes it).
        num_classes: Number of action classes.
        clustering: ``cumulative``, ``slope`` or ``uniform`` (``none``: plain TSM).
        **kwargs: Other :class:`FullVideoNet` arguments (``backbone``, ``width``,
            ``dropout``, ``shift_div``).
    """
    kwargs.setdefault("backbone", "resnet18")
    return _net(spec, clustering, {"num_classes": num_classes, "dropout": 0.5, **kwargs})


@register_model(spec=_spec("all", _PAPER_SIZE, 8, decode_size=_PAPER_DECODE))
def full_video_r50(
    *, spec: VariantSpec, num_classes: int = 101, clustering: str = "cumulative", **kwargs: Any
) -> FullVideoNet:
    """The paper's method on TSM ResNet-50 (its UCF101/HMDB51/Something-Something setting).

    Args as in :func:`full_video`.
    """
    kwargs.setdefault("backbone", "resnet50")
    return _net(spec, clustering, {"num_classes": num_classes, "dropout": 0.5, **kwargs})


@register_model(spec=_spec("all", _TINY_SIZE, 8))
def full_video_tiny(
    *, spec: VariantSpec, num_classes: int = 4, clustering: str = "cumulative", **kwargs: Any
) -> FullVideoNet:
    """Narrow ResNet-18 (base width 16) on 64x64 frames, g = 8: Move4Digits on a CPU.

    Args as in :func:`full_video`.
    """
    kwargs.setdefault("backbone", "resnet18_narrow")
    return _net(spec, clustering, {"num_classes": num_classes, "dropout": 0.2, **kwargs})


@register_model(spec=_spec("uniform", _PAPER_SIZE, 8, decode_size=_PAPER_DECODE))
def full_video_tsm(*, spec: VariantSpec, num_classes: int = 101, **kwargs: Any) -> FullVideoNet:
    """Baseline TSM-k: TSM on k = ``spec.segments`` = 8 uniformly sampled frames (TSN sampling).

    Args:
        spec: ``segments`` is k (the registry passes it).
        num_classes: Number of action classes.
        **kwargs: Other :class:`FullVideoNet` arguments.
    """
    kwargs.setdefault("backbone", "resnet18")
    return _net(spec, "none", {"num_classes": num_classes, "dropout": 0.5, **kwargs})


@register_model(spec=_spec("all", _PAPER_SIZE, 1, decode_size=_PAPER_DECODE))
def full_video_tsm_all(*, spec: VariantSpec, num_classes: int = 101, **kwargs: Any) -> FullVideoNet:
    """Baseline "TSM all": TSM on every frame of the video, no clustering.

    Args as in :func:`full_video_tsm`.
    """
    kwargs.setdefault("backbone", "resnet18")
    return _net(spec, "none", {"num_classes": num_classes, "dropout": 0.5, **kwargs})


@register_model(spec=_spec("uniform", _TINY_SIZE, 8))
def full_video_tiny_tsm(*, spec: VariantSpec, num_classes: int = 4, **kwargs: Any) -> FullVideoNet:
    """CPU-scale TSM-k baseline (k = 8 uniformly sampled frames) for Move4Digits.

    Args as in :func:`full_video_tsm`.
    """
    kwargs.setdefault("backbone", "resnet18_narrow")
    return _net(spec, "none", {"num_classes": num_classes, "dropout": 0.2, **kwargs})


@register_model(spec=_spec("all", _TINY_SIZE, 1))
def full_video_tiny_tsm_all(
    *, spec: VariantSpec, num_classes: int = 4, **kwargs: Any
) -> FullVideoNet:
    """CPU-scale "TSM all" baseline for Move4Digits.

    Args as in :func:`full_video_tsm`.
    """
    kwargs.setdefault("backbone", "resnet18_narrow")
    return _net(spec, "none", {"num_classes": num_classes, "dropout": 0.2, **kwargs})
