"""MS3D, the multi-clue sparse 3D ConvNet: a p(z) walk in, a unit-norm embedding out.

Paper: H. Man, D. Zou, T. Li, "The Action Recognition with Multi-Clue Sparse 3-Dimensional
Convolutional Networks" (Inspur Electronic Information Industry); no arXiv or DOI identifier
is known to us.

A walk from :func:`video.sampling.pathway_walk` holds the slow, mid and fast pathway frames one
after the other in time. A fixed, seeded kernel bank runs on every frame, each pathway has its
own 3D convolution, and a sparse DenseNet3D (Eq. 2-3) ends in a 256-d L2-normalised
embedding, trained with :mod:`training.losses.npair` and judged against the class centres of
:mod:`models.repository`.

Design choices: docs/models.md#ms3d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model
from models.spec import VariantSpec

__all__ = [
    "MS3D",
    "FixedKernelBank",
    "MultiPathwayStem",
    "SparseDenseBlock",
    "eq4_temporal_factors",
    "init_conv3d_eq4",
    "sparse_connectivity",
    "ms3d",
    "ms3d_tiny",
]

_PAPER_KERNELS: tuple[tuple[int, int, int], ...] = ((3, 3, 3), (3, 5, 5), (3, 7, 7))


def sparse_connectivity(
    num_layers: int, drop_rate: float, rng: np.random.Generator
) -> list[list[int]]:
    """Which earlier features each layer of a sparse dense block receives (paper Eq. 2).

    Features are numbered ``0`` (the block input) and ``i >= 1`` (the output of layer ``i - 1``,
    0-based). Layer ``l`` always receives feature ``l`` (its upper neighbour); each of the
    earlier features ``0 .. l - 1`` is kept independently with probability ``1 - drop_rate``.

    Args:
        num_layers: Layers in the block.
        drop_rate: Probability of dropping one earlier connection, in ``[0, 1]``.
        rng: Source of the draws; the same generator state gives the same graph.

    Returns:
        One sorted list of feature indices per layer, each ending with the layer's own index.
    """
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate must lie in [0, 1], got {drop_rate}")
    if num_layers < 1:
        raise ValueError(f"a dense block needs at least one layer, got {num_layers}")
    connectivity = []
    for layer in range(num_layers):
        # Draw for every candidate even when drop_rate is 0 or 1, so the stream of draws (and
        # with it later blocks' graphs) does not depend on the rate's special values.
        keep = rng.random(layer) >= drop_rate
        connectivity.append([int(i) for i in np.flatnonzero(keep)] + [layer])
    return connectivity


def eq4_temporal_factors(depth: int) -> torch.Tensor:
    """The temporal factors ``alpha`` of paper Eq. 4 for a kernel ``depth`` taps deep.

    The centre tap gets ``(2 d - 1) / d``, every other tap ``-1 / d``; they sum to 1.

    Args:
        depth: Temporal kernel size ``d >= 1``.

    Returns:
        ``(depth,)`` float32 factors.
    """
    if depth < 1:
        raise ValueError(f"temporal depth must be >= 1, got {depth}")
    alpha = torch.full((depth,), -1.0 / depth)
    alpha[depth // 2] = (2 * depth - 1) / depth
    return alpha


def init_conv3d_eq4(weight: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Fill a Conv3d weight ``(out, in, d, kh, kw)`` in place by paper Eq. 4.

    A 2D kernel ``w^{p,q}`` is drawn He-normal (fan-in ``in * kh * kw``, ReLU gain) and tap
    ``r`` of the 3D kernel is ``alpha_r * w^{p,q}``.

    Args:
        weight: The Conv3d weight to overwrite.
        generator: Optional torch generator for the 2D draw (the global one otherwise).
    """
    out_ch, in_ch, depth, kh, kw = weight.shape
    std = math.sqrt(2.0 / (in_ch * kh * kw))
    with torch.no_grad():
        w2d = torch.randn(out_ch, in_ch, kh, kw, generator=generator) * std
        alpha = eq4_temporal_factors(depth)
        weight.copy_(alpha.view(1, 1, depth, 1, 1) * w2d.unsqueeze(2))


def _bn_relu_conv(in_ch: int, out_ch: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return nn.Sequential(
        nn.BatchNorm3d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv3d(in_ch, out_ch, kernel, padding=padding, bias=False),
    )


class FixedKernelBank(nn.Module):
    """The shared ``s x s x 3`` kernel bank: fixed, seeded, saved with the weights.

    Each of ``num_kernels`` kernels spans ``s x s`` pixels and the 3 colour channels of one
    frame; it is applied to every frame independently.

    Args:
        num_kernels: Kernels in the bank (output channels).
        size: Spatial size ``s`` (odd; padding keeps the frame size).
        in_chans: Input channels (3 for RGB).
        seed: Seed of the kernel draw.
    """

    weight: torch.Tensor

    def __init__(self, num_kernels: int, size: int = 3, in_chans: int = 3, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"bank kernel size must be odd and positive, got {size}")
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(num_kernels, in_chans, 1, size, size, generator=gen)
        # Unit-norm kernels keep the bank's output on the scale of the normalised input.
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1, 1)
        # A buffer, not a Parameter: saved in state_dict, invisible to optimizers.
        self.register_buffer("weight", w)
        self.padding = (0, size // 2, size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` frames -> ``(N, num_kernels, T, H, W)`` initial feature maps."""
        return F.conv3d(x, self.weight, padding=self.padding)


class MultiPathwayStem(nn.Module):
    """Kernel bank, then one 3D conv per pathway; outputs concatenated along time.

    Args:
        pathway_sizes: Frames per pathway ``(n1, n2, n3)``, in the order they are concatenated.
        pathway_kernels: Per-pathway Conv3d kernel ``(t, h, w)``, e.g. ``(3, 5, 5)``.
        bank_kernels: Kernels in the fixed bank.
        bank_size: Spatial size of the bank kernels.
        bank_seed: Seed of the fixed bank.
        out_channels: Channels of every pathway conv.
        stride: Spatial stride of the pathway convs.
        pool: Add a ``(1, 3, 3)`` max pool of spatial stride 2 after the concatenation.
        in_chans: Input channels.
    """

    def __init__(
        self,
        *,
        pathway_sizes: Sequence[int],
        pathway_kernels: Sequence[Sequence[int]],
        bank_kernels: int,
        bank_size: int,
        bank_seed: int,
        out_channels: int,
        stride: int,
        pool: bool,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(pathway_sizes) != len(pathway_kernels):
            raise ValueError(
                f"{len(pathway_sizes)} pathway sizes but {len(pathway_kernels)} pathway kernels"
            )
        if not pathway_sizes or any(int(n) < 1 for n in pathway_sizes):
            raise ValueError(f"pathway sizes must be positive, got {tuple(pathway_sizes)}")
        self.pathway_sizes = tuple(int(n) for n in pathway_sizes)
        self.bank = FixedKernelBank(bank_kernels, bank_size, in_chans, bank_seed)
        self.pathways = nn.ModuleList()
        for kernel in pathway_kernels:
            kt, kh, kw = (int(k) for k in kernel)
            if kh % 2 == 0 or kw % 2 == 0 or kt % 2 == 0:
                # Odd kernels with k // 2 padding give every pathway the same output size,
                # which the concatenation along time needs.
                raise ValueError(f"pathway kernels must be odd, got {tuple(kernel)}")
            self.pathways.append(
                nn.Sequential(
                    nn.Conv3d(
                        bank_kernels,
                        out_channels,
                        (kt, kh, kw),
                        stride=(1, stride, stride),
                        padding=(kt // 2, kh // 2, kw // 2),
                        bias=False,
                    ),
                    nn.BatchNorm3d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
        self.pool = (
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) if pool else nn.Identity()
        )

    @property
    def num_frames(self) -> int:
        """Frames of one walk, ``n1 + n2 + n3``."""
        return sum(self.pathway_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, n1 + n2 + n3, H, W)`` -> ``(N, out_channels, n1 + n2 + n3, H', W')``."""
        if x.shape[2] != self.num_frames:
            raise ValueError(
                f"expected {self.num_frames} frames (pathways {self.pathway_sizes}), "
                f"got {x.shape[2]}"
            )
        # The bank has temporal size 1, so running it once over the concatenated walk equals
        # running it on each pathway's frames.
        maps = self.bank(x)
        parts = torch.split(maps, list(self.pathway_sizes), dim=2)
        out = torch.cat([conv(p) for conv, p in zip(self.pathways, parts)], dim=2)
        return self.pool(out)


class _SparseDenseLayer(nn.Module):
    def __init__(self, in_channels: int, inputs: Sequence[int], growth_rate: int, bn_size: int):
        super().__init__()
        self.inputs = tuple(inputs)
        layers: list[nn.Module] = []
        width = in_channels
        if bn_size > 0:
            layers.append(_bn_relu_conv(width, bn_size * growth_rate, (1, 1, 1)))
            width = bn_size * growth_rate
        layers.append(_bn_relu_conv(width, growth_rate, (3, 3, 3)))
        self.body = nn.Sequential(*layers)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.body(torch.cat([features[i] for i in self.inputs], dim=1))


class SparseDenseBlock(nn.Module):
    """A DenseNet3D block whose layers see a fixed random subset of the earlier features.

    Args:
        in_channels: Channels of the block input.
        connectivity: Per layer, the feature indices it receives (see
            :func:`sparse_connectivity`).
        growth_rate: Output channels of every layer.
        bn_size: Bottleneck width as a multiple of ``growth_rate``; 0 drops the bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        connectivity: Sequence[Sequence[int]],
        growth_rate: int,
        bn_size: int,
    ) -> None:
        super().__init__()
        widths = [in_channels]
        self.layers = nn.ModuleList()
        for layer, inputs in enumerate(connectivity):
            if not inputs or inputs[-1] != layer or any(not 0 <= i <= layer for i in inputs):
                raise ValueError(f"layer {layer} has invalid inputs {list(inputs)}")
            in_ch = sum(widths[i] for i in inputs)
            self.layers.append(_SparseDenseLayer(in_ch, inputs, growth_rate, bn_size))
            widths.append(growth_rate)
        self.out_channels = sum(widths)

    @property
    def connectivity(self) -> list[list[int]]:
        """The feature indices each layer receives."""
        return [list(layer.inputs) for layer in cast("list[_SparseDenseLayer]", self.layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block input -> concatenation of the input and every layer's output."""
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, dim=1)


class _Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, pool: tuple[int, int, int]) -> None:
        super().__init__(
            nn.BatchNorm3d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv3d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool3d(pool, stride=pool),
        )


class MS3D(nn.Module):
    """Multi-Clue Sparse 3D ConvNet: a p(z) walk in, a unit-norm embedding out.

    Layer names: ``stem`` (kernel bank + pathway convs), ``layer1``..``layerK`` (a sparse dense
    block, followed by a transition except in the last), ``norm``, ``head``.

    Args:
        pathway_sizes: Frames per pathway ``(n1, n2, n3)`` (paper: 7, 17, 25).
        pathway_kernels: Per-pathway Conv3d kernels ``(t, h, w)`` (paper: 3x3x3, 5x5x3, 7x7x3).
        bank_kernels: Kernels in the fixed shared bank.
        bank_size: Spatial size ``s`` of the bank kernels (paper: 3).
        bank_seed: Seed of the fixed bank.
        stem_channels: Output channels of each pathway conv.
        stem_stride: Spatial stride of the pathway convs.
        stem_pool: Spatial max pool (stride 2) after the pathway concatenation.
        growth_rate: DenseNet growth rate.
        block_config: Layers per dense block.
        bn_size: Bottleneck multiple of the growth rate (0: no bottleneck).
        compression: Channel compression of the transitions.
        transition_pool: Average-pool kernel (= stride) ``(t, h, w)`` of the transitions.
        drop_rate: Probability of dropping a connection to an earlier layer (paper: 0.7).
        connectivity_seed: Seed of the sparse connectivity draw.
        embed_dim: Embedding size (paper: 256).
        in_chans: Input channels.
    """

    def __init__(
        self,
        *,
        pathway_sizes: Sequence[int] = (7, 17, 25),
        pathway_kernels: Sequence[Sequence[int]] = _PAPER_KERNELS,
        bank_kernels: int = 16,
        bank_size: int = 3,
        bank_seed: int = 0,
        stem_channels: int = 32,
        stem_stride: int = 2,
        stem_pool: bool = True,
        growth_rate: int = 24,
        block_config: Sequence[int] = (4, 8, 6),
        bn_size: int = 4,
        compression: float = 0.5,
        transition_pool: Sequence[int] = (2, 2, 2),
        drop_rate: float = 0.7,
        connectivity_seed: int = 0,
        embed_dim: int = 256,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must lie in (0, 1], got {compression}")
        self.pathway_sizes = tuple(int(n) for n in pathway_sizes)
        self.drop_rate = float(drop_rate)
        self.connectivity_seed = int(connectivity_seed)
        self.embed_dim = int(embed_dim)
        self.stem = MultiPathwayStem(
            pathway_sizes=pathway_sizes,
            pathway_kernels=pathway_kernels,
            bank_kernels=bank_kernels,
            bank_size=bank_size,
            bank_seed=bank_seed,
            out_channels=stem_channels,
            stride=stem_stride,
            pool=stem_pool,
            in_chans=in_chans,
        )
        rng = np.random.default_rng(self.connectivity_seed)
        pool = cast("tuple[int, int, int]", tuple(int(k) for k in transition_pool))
        channels = stem_channels
        self.num_stages = len(block_config)
        for i, num_layers in enumerate(block_config):
            block = SparseDenseBlock(
                channels, sparse_connectivity(num_layers, drop_rate, rng), growth_rate, bn_size
            )
            channels = block.out_channels
            stage: list[nn.Module] = [block]
            if i + 1 < len(block_config):
                out = max(1, int(channels * compression))
                stage.append(_Transition(channels, out, pool))
                channels = out
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.num_features = channels
        self.norm = nn.Sequential(nn.BatchNorm3d(channels), nn.ReLU(inplace=True))
        self.head = nn.Linear(channels, embed_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                init_conv3d_eq4(m.weight)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        """``layer1``..``layerK`` in order."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    @property
    def connectivity(self) -> list[list[list[int]]]:
        """Per dense block, per layer, the feature indices the layer receives."""
        return [cast(SparseDenseBlock, stage[0]).connectivity for stage in self.stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, n1 + n2 + n3, H, W)`` walks -> ``(N, num_features, T', H', W')`` maps."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Feature maps -> ``(N, embed_dim)`` embeddings (unit L2 norm when ``normalize``).

        ``normalize=False`` gives the raw projection, e.g. for the N-pair L2 regulariser.
        """
        x = self.head(x.mean(dim=(2, 3, 4)))
        return F.normalize(x, dim=1, eps=1e-12) if normalize else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, n1 + n2 + n3, H, W)`` walks -> ``(N, embed_dim)`` unit-norm embeddings."""
        return self.forward_head(self.forward_features(x))


@register_model(
    spec=VariantSpec(
        family="ms3d",
        input_size=(112, 112),
        decode_size=(128, 171),
        pathways=(7, 17, 25),
        sampler="pz",
        sampler_kwargs={"walks": 4},
        # No gamma here: the threshold lives in (is calibrated into) the bundle's repository
        # and is passed at judgement time; an infinite default would not survive strict JSON.
        aggregator="nearest_centre",
        output="embedding",
    )
)
def ms3d(*, spec: VariantSpec, **kwargs: Any) -> MS3D:
    """The paper's MS3D: 7/17/25-frame pathways, 3x3 bank, 3/5/7 kernels, drop 0.7, 256-d.

    Args:
        spec: ``pathways`` are the frames per pathway (the registry passes it).
        **kwargs: Other :class:`MS3D` arguments (``drop_rate``, ``connectivity_seed``,
            ``bank_seed``, ``embed_dim``...).
    """
    return MS3D(pathway_sizes=spec.pathways, **kwargs)


@register_model(
    spec=VariantSpec(
        family="ms3d",
        input_size=(64, 64),
        pathways=(4, 8, 12),
        sampler="pz",
        sampler_kwargs={"walks": 2},
        aggregator="nearest_centre",
        output="embedding",
    )
)
def ms3d_tiny(*, spec: VariantSpec, **kwargs: Any) -> MS3D:
    """A CPU-sized MS3D: 4/8/12-frame pathways, 64x64 input, narrow and shallow.

    Args as in :func:`ms3d`.
    """
    settings: dict[str, Any] = {
        "bank_kernels": 4,
        "stem_channels": 16,
        "growth_rate": 8,
        "block_config": (3, 3),
        "bn_size": 2,
    }
    return MS3D(pathway_sizes=spec.pathways, **{**settings, **kwargs})
