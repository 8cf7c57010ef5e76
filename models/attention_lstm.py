"""Multi-level VGG16 features, 3D convolutions and a soft-attention joint LSTM.

Paper: J. Wu, G. Wang, W. Yang, X. Ji, "Action Recognition with Joint Attention on Multi-Level
Deep Features", arXiv:1607.02556 (2016).

VGG16 runs on every frame and is tapped at two levels; a 3D convnet per level turns the
feature cube into short-term features, and a joint LSTM reads all levels at each step through
a soft attention over each level's grid and a spatial pyramid. The training loss (deep
supervision and attention regulariser) is :mod:`training.losses.attention`.

Equations (the paper's Section 3.3; ``k`` indexes the tapped levels)::

    i_k = tanh(W_xik x_k + W_hik h_{t-1} + b_ik)      (likewise f_k, o_k)
    i   = sigma(sum_k W_iik i_k)                      (likewise f from f_k, o from o_k)
    early: c~ = tanh(sum_k W_xck x_k         + W_hc h_{t-1} + b_c)
    late:  c~ = tanh(sum_k W_xck (x_k * i_k) + W_hc h_{t-1} + b_c)
    c_t = f * c_{t-1} + i * c~,   h_t = o * tanh(c_t)
    att_{t,i} = softmax_i(W_att,i^T h_{t-1}),  x_k = pyramid(sum_i att_{t,i} X_{k,t,i})

Design choices: docs/models.md#attention_lstm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn

from models.registry import register_model
from models.spec import IMAGENET_MEAN, IMAGENET_STD, VariantSpec
from models.weights import LoadReport, load_matching, read_state_dict

__all__ = [
    "AttentionLSTM",
    "AttentionLSTMOutput",
    "AttentionJointLSTM",
    "JointLSTMCell",
    "VGG16Features",
    "Fusion",
    "VGG16_TAPS",
    "attention_lstm",
    "attention_lstm_tiny",
    "load_vgg16_state_dict",
    "normalised_energy",
    "spatial_pyramid",
]

Fusion = Literal["early", "late"]

# VGG16 configuration "D": conv widths, "M" = 2x2 max pool. pool5 is not needed (deepest tap is
# conv5_3), so it is left out.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip

# Index in torchvision's ``vgg16().features`` of the layer whose output is tapped, and the
# total stride of that output (grid = floor(size / stride)).
VGG16_TAPS: dict[str, tuple[int, int]] = {
    "conv3_3": (15, 4),  # relu3_3
    "pool3": (16, 8),
    "conv4_3": (22, 8),  # relu4_3
    "pool4": (23, 16),
    "conv5_3": (29, 16),  # relu5_3
}


def _vgg16_layers(width: float, batch_norm: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out_ch = max(1, round(int(v) * width))
            layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
            if batch_norm:  # torchvision's vgg16_bn order: conv, bn, relu
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
    return layers


def _tap_index(tap: str, batch_norm: bool) -> int:
    """Index of a tap's output layer in the (plain or batch-norm) VGG16 layer list."""
    if not batch_norm:
        return VGG16_TAPS[tap][0]
    # Same layer, counted in the list where every conv is followed by a BatchNorm2d.
    plain = VGG16_TAPS[tap][0]
    convs_before = sum(
        1
        for i, layer in enumerate(_vgg16_layers(1.0))
        if i <= plain and isinstance(layer, nn.Conv2d)
    )
    return plain + convs_before


def _torchvision_vgg16_conv_keys(batch_norm: bool = False) -> dict[str, int]:
    """Every state-dict key of torchvision's ``vgg16().features`` (``vgg16_bn`` with
    ``batch_norm``) -> its layer index."""
    keys: dict[str, int] = {}
    for idx, layer in enumerate(_vgg16_layers(1.0, batch_norm)):
        for name in layer.state_dict():
            keys[f"features.{idx}.{name}"] = idx
    return keys


def load_vgg16_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a VGG16 state dict from a local file without executing code
    (:func:`models.weights.read_state_dict`: ``.safetensors``, or a PyTorch file holding a
    plain state dict, read with ``weights_only=True``).

    Returns:
        The tensors by key (torchvision layout expected; validated when loaded into a model).
    """
    return read_state_dict(path)


class VGG16Features(nn.Module):
    """VGG16 convolutional layers run per frame, returning the tapped feature maps.

    Layer indices and parameter names follow torchvision's ``vgg16().features`` (so a
    torchvision state dict maps key for key); layers past the deepest tap are not built.

    Args:
        width: Multiplier on the VGG16 channel widths (at least 1 channel each).
        taps: Names from :data:`VGG16_TAPS`, in the order their maps are returned.
        batch_norm: BatchNorm after every conv (torchvision's ``vgg16_bn`` layout), which
            lets a narrow VGG train from scratch; the plain VGG16 of the paper otherwise.
    """

    def __init__(
        self,
        *,
        width: float = 1.0,
        taps: Sequence[str] = ("pool4", "conv5_3"),
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        unknown = [t for t in taps if t not in VGG16_TAPS]
        if unknown or not taps:
            raise ValueError(f"taps must be a non-empty subset of {sorted(VGG16_TAPS)}, got {taps}")
        self.taps = tuple(taps)
        self.batch_norm = batch_norm
        self.tap_indices = tuple(_tap_index(t, batch_norm) for t in self.taps)
        self.features = nn.Sequential(
            *_vgg16_layers(width, batch_norm)[: max(self.tap_indices) + 1]
        )
        self.channels = tuple(self._out_channels(i) for i in self.tap_indices)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # As torchvision's VGG init: He (fan-out) for a deep ReLU stack from scratch.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _out_channels(self, index: int) -> int:
        convs = [m for m in list(self.features)[: index + 1] if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    def grid(self, input_size: Sequence[int]) -> list[tuple[int, int]]:
        """(height, width) of each tapped map for frames of ``input_size``."""
        h, w = int(input_size[0]), int(input_size[1])
        return [(h // VGG16_TAPS[t][1], w // VGG16_TAPS[t][1]) for t in self.taps]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Tapped maps ``(B, C_k, h_k, w_k)`` of images ``(B, 3, H, W)``."""
        wanted = set(self.tap_indices)
        found: dict[int, Tensor] = {}
        for idx, layer in enumerate(self.features):
            x = layer(x)
            if idx in wanted:
                found[idx] = x
        return [found[i] for i in self.tap_indices]

    def load_torchvision_state_dict(self, state: Mapping[str, Tensor]) -> LoadReport:
        """Load VGG16 conv weights given in torchvision's key layout (``features.N.weight``,
        ``features.N.bias``; ``vgg16_bn``'s BatchNorm entries with ``batch_norm``).

        ``classifier.*`` keys (ImageNet's fully connected layers) are ignored, as are conv
        keys past the deepest tap. Any other key, a missing key or a shape mismatch (e.g. a
        width-reduced model) refuses the load, listing every offending key
        (:func:`models.weights.load_matching`); nothing is copied then.

        Raises:
            models.weights.WeightsMismatch: The state dict does not fit.
        """
        known = _torchvision_vgg16_conv_keys(self.batch_norm)
        own = self.state_dict()
        unused = {k for k in state if k.startswith("classifier.") or (k in known and k not in own)}
        layout = "plain" if not self.batch_norm else "batch-norm (vgg16_bn)"
        return load_matching(
            self,
            state,
            skip=unused,
            source=f"VGG16 weights (torchvision layout, {layout}, full width needed)",
        )


def spatial_pyramid(features: Tensor, attention: Tensor) -> Tensor:
    """Attention-weighted sums over the whole grid and its four quadrants.

    Args:
        features: ``(N, C, Kh, Kw)`` one step's feature map.
        attention: ``(N, Kh, Kw)`` weights (a softmax over the grid).

    Returns:
        ``(N, 5 * C)``: ``[full, top-left, top-right, bottom-left, bottom-right]``. With an odd
        side the centre row/column belongs to both halves.
    """
    kh, kw = features.shape[-2:]
    weighted = features * attention.unsqueeze(1)
    rows = ((0, (kh + 1) // 2), (kh // 2, kh))
    cols = ((0, (kw + 1) // 2), (kw // 2, kw))
    parts = [weighted.sum(dim=(2, 3))]
    for r0, r1 in rows:
        for c0, c1 in cols:
            parts.append(weighted[:, :, r0:r1, c0:c1].sum(dim=(2, 3)))
    return torch.cat(parts, dim=1)


def normalised_energy(features: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-step spatial energy of non-negative features, normalised to sum to 1 over the grid.

    Args:
        features: ``(N, C, T, Kh, Kw)``, non-negative (post-ReLU).
        eps: Floor of the denominator; an all-zero step gives all-zero energy.

    Returns:
        ``(N, T, Kh * Kw)``: ``e_{t,i} = sum_c x_{t,i,c} / sum_j sum_c x_{t,j,c}``.
    """
    energy = features.sum(dim=1).flatten(2)
    return energy / energy.sum(dim=-1, keepdim=True).clamp_min(eps)


class _SubGates(nn.Module):
    """The parameters one input ``k`` adds to the joint cell."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        # Rows [i; f; o]: W_xik, W_xfk, W_xok with biases b_ik, b_fk, b_ok ...
        self.sub_x = nn.Linear(input_size, 3 * input_size)
        # ... and W_hik, W_hfk, W_hok (biases are already in sub_x).
        self.sub_h = nn.Linear(hidden_size, 3 * input_size, bias=False)
        self.mix_i = nn.Linear(input_size, hidden_size, bias=False)  # W_iik
        self.mix_f = nn.Linear(input_size, hidden_size, bias=False)  # W_ffk
        self.mix_o = nn.Linear(input_size, hidden_size, bias=False)  # W_ook
        self.cand_x = nn.Linear(input_size, hidden_size, bias=False)  # W_xck


class JointLSTMCell(nn.Module):
    """One step of the paper's joint LSTM over K inputs (Section 3.3).

    Args:
        input_sizes: Size of each input ``x_k``.
        hidden_size: Size of ``h`` and ``c``.
        fusion: ``"early"`` (``W_xck x_k``) or ``"late"`` (``W_xck (x_k * i_k)``).
    """

    def __init__(
        self, input_sizes: Sequence[int], hidden_size: int, fusion: Fusion = "late"
    ) -> None:
        super().__init__()
        if fusion not in ("early", "late"):
            raise ValueError(f"fusion must be 'early' or 'late', got {fusion!r}")
        if not input_sizes or hidden_size < 1:
            raise ValueError("need at least one input and a positive hidden size")
        self.fusion = fusion
        self.input_sizes = tuple(int(d) for d in input_sizes)
        self.hidden_size = hidden_size
        self.inputs = nn.ModuleList(_SubGates(d, hidden_size) for d in self.input_sizes)
        self.cand_h = nn.Linear(hidden_size, hidden_size)  # W_hc, b_c

    def forward(self, xs: Sequence[Tensor], state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Advance one step.

        Args:
            xs: One ``(N, input_sizes[k])`` tensor per input.
            state: ``(h_{t-1}, c_{t-1})``, each ``(N, hidden_size)``.

        Returns:
            ``(h_t, c_t)``.
        """
        h, c = state
        if len(xs) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs, got {len(xs)}")
        cand = self.cand_h(h)
        gate_i = gate_f = gate_o = torch.zeros_like(h)
        for x, p in zip(xs, cast("Sequence[_SubGates]", self.inputs)):
            i_k, f_k, o_k = torch.tanh(p.sub_x(x) + p.sub_h(h)).chunk(3, dim=-1)
            gate_i = gate_i + p.mix_i(i_k)
            gate_f = gate_f + p.mix_f(f_k)
            gate_o = gate_o + p.mix_o(o_k)
            cand = cand + p.cand_x(x * i_k if self.fusion == "late" else x)
        c = torch.sigmoid(gate_f) * c + torch.sigmoid(gate_i) * torch.tanh(cand)
        h = torch.sigmoid(gate_o) * torch.tanh(c)
        return h, c


class _LSTMCell(nn.Module):
    """A standard LSTM cell (paper Section 2.2), written out so it exports as plain ops."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.x2g = nn.Linear(input_size, 4 * hidden_size)
        self.h2g = nn.Linear(hidden_size, 4 * hidden_size, bias=False)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = (self.x2g(x) + self.h2g(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class AttentionJointLSTM(nn.Module):
    """Soft attention, spatial pyramid and the joint LSTM stack, unrolled over time.

    Args:
        channels: Channels of each level's feature maps.
        grids: ``(Kh, Kw)`` of each level's grid.
        hidden_size: Units per LSTM layer.
        num_layers: Layers; the first is the joint cell, the rest standard cells.
        fusion: ``"early"`` or ``"late"``.
        shared_attention: One attention map for all levels (grids must match).
        dropout: Dropout on the hidden state between stacked layers.
    """

    def __init__(
        self,
        *,
        channels: Sequence[int],
        grids: Sequence[tuple[int, int]],
        hidden_size: int = 1024,
        num_layers: int = 3,
        fusion: Fusion = "late",
        shared_attention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(grids) or not channels:
            raise ValueError("channels and grids need one entry per level")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.grids = tuple((int(kh), int(kw)) for kh, kw in grids)
        if min(min(g) for g in self.grids) < 1:
            raise ValueError(f"every grid needs at least one cell, got {self.grids}")
        if shared_attention and len(set(self.grids)) > 1:
            raise ValueError(f"shared_attention needs equal grids, got {self.grids}")
        self.shared_attention = shared_attention
        self.hidden_size = hidden_size
        n_maps = 1 if shared_attention else len(self.grids)
        # softmax(W_att^T h_{t-1}), no bias as in the paper.
        self.attention = nn.ModuleList(
            nn.Linear(hidden_size, kh * kw, bias=False) for kh, kw in self.grids[:n_maps]
        )
        self.cell = JointLSTMCell([5 * c for c in channels], hidden_size, fusion)
        self.upper = nn.ModuleList(
            _LSTMCell(hidden_size, hidden_size) for _ in range(num_layers - 1)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run over all steps.

        Args:
            feats: One ``(N, C_k, T, Kh_k, Kw_k)`` tensor per level.

        Returns:
            Top-layer hidden states ``(N, T, hidden_size)`` and, per level, the attention
            ``(N, T, Kh_k * Kw_k)`` used at each step (rows sum to 1).
        """
        if len(feats) != len(self.grids):
            raise ValueError(f"expected {len(self.grids)} levels, got {len(feats)}")
        for f, g in zip(feats, self.grids):
            if tuple(f.shape[-2:]) != g:
                raise ValueError(
                    f"feature grid {tuple(f.shape[-2:])} != model grid {g}; "
                    "build the model for this input_size"
                )
        n, t = feats[0].shape[0], feats[0].shape[2]
        steps = [f.transpose(1, 2) for f in feats]  # (N, T, C, Kh, Kw): one slice per step
        zeros = feats[0].new_zeros(n, self.hidden_size)
        states = [(zeros, zeros) for _ in range(1 + len(self.upper))]
        outputs: list[Tensor] = []
        atts: list[list[Tensor]] = [[] for _ in feats]
        for step in range(t):
            top = states[-1][0]
            maps = [torch.softmax(a(top), dim=-1) for a in self.attention]
            xs = []
            for k, (f, (kh, kw)) in enumerate(zip(steps, self.grids)):
                att = maps[0 if self.shared_attention else k]
                atts[k].append(att)
                xs.append(spatial_pyramid(f[:, step], att.reshape(n, kh, kw)))
            states[0] = self.cell(xs, states[0])
            for layer, cell in enumerate(self.upper, start=1):
                states[layer] = cell(self.drop(states[layer - 1][0]), states[layer])
            outputs.append(states[-1][0])
        return torch.stack(outputs, dim=1), tuple(torch.stack(a, dim=1) for a in atts)


class _Conv3dBranch(nn.Sequential):
    """Two 3x3x3 convolutions (padding 1) with ReLU: the paper's 3d-convnet for one level."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )


class _DeepSupervisionHead(nn.Module):
    """Per-step FC-ReLU-FC classifier on spatially averaged 3D-conv features."""

    def __init__(self, channels: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C, T, Kh, Kw)`` -> logits ``(N, T, num_classes)``."""
        x = features.mean(dim=(3, 4)).transpose(1, 2)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class AttentionLSTMOutput(NamedTuple):
    """Everything the training loss needs (:func:`training.losses.attention.attention_lstm_loss`).

    Attributes:
        step_logits: ``(N, T, num_classes)`` joint-LSTM outputs per step.
        ds_logits: Per level, deep-supervision logits ``(N, T, num_classes)``.
        attention: Per level, the attention ``(N, T, K*K)`` used at each step.
        energy: Per level, the normalised 3D-conv energy ``(N, T, K*K)``.
    """

    step_logits: Tensor
    ds_logits: tuple[Tensor, ...]
    attention: tuple[Tensor, ...]
    energy: tuple[Tensor, ...]


class AttentionLSTM(nn.Module):
    """Pre-conv VGG16, per-level 3D convnets with deep supervision, attention joint LSTM.

    Input ``(N, 3, T, H, W)`` clips with ``(H, W) = input_size``; :meth:`forward` returns
    per-step logits ``(N, T, num_classes)`` (a clip's answer is the vote of its last steps, see
    :func:`models.aggregators.last_steps_vote`). ``forward(x, return_aux=True)`` (or
    :meth:`forward_train`) returns an :class:`AttentionLSTMOutput` for the training loss; call it
    through the (DDP-wrapped) module so distributed training sees every parameter used.

    Layer names: ``preconv`` (VGG16, torchvision indices under ``preconv.features``),
    ``branches`` (3D convnets), ``ds_heads``, ``lstm``, ``head``.

    Args:
        num_classes: Number of action classes.
        input_size: (height, width) of the frames; fixes the attention grid.
        vgg_width: Multiplier on the VGG16 channel widths.
        levels: Tapped VGG16 outputs (:data:`VGG16_TAPS`), one LSTM input each.
        conv3d_channels: Channels of both 3D convolutions of each branch.
        lstm_hidden: Units per LSTM layer.
        lstm_layers: LSTM layers (the first is the joint cell).
        fusion: ``"early"`` or ``"late"`` joint-LSTM fusion.
        shared_attention: One attention map for all levels instead of one per level.
        ds_hidden: Units of the first FC of each deep-supervision head.
        dropout: Dropout before the classifiers and between LSTM layers.
        vgg_weights: Local VGG16 state dict (torchvision key layout, ``.safetensors`` or a
            PyTorch file) to start the pre-conv net from; ``None`` trains it from scratch.
            Training loads it after building instead (``--pretrained``,
            :meth:`VGG16Features.load_torchvision_state_dict`).
        frozen: Keep the pre-conv net fixed (no gradients, always in eval mode).
        vgg_batch_norm: BatchNorm after every VGG conv (torchvision's ``vgg16_bn`` layout for
            ``vgg_weights``); the tiny variant uses it to train from scratch.
    """

    def __init__(
        self,
        *,
        num_classes: int = 101,
        input_size: Sequence[int] = (224, 224),
        vgg_width: float = 1.0,
        levels: Sequence[str] = ("pool4", "conv5_3"),
        conv3d_channels: int = 256,
        lstm_hidden: int = 1024,
        lstm_layers: int = 3,
        fusion: Fusion = "late",
        shared_attention: bool = False,
        ds_hidden: int = 512,
        dropout: float = 0.0,
        vgg_weights: str | Path | None = None,
        frozen: bool = False,
        vgg_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1 or conv3d_channels < 1 or ds_hidden < 1:
            raise ValueError("num_classes, conv3d_channels and ds_hidden must be positive")
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width), got {tuple(input_size)}")
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.fusion = fusion
        self.frozen = frozen
        self.num_features = lstm_hidden

        self.preconv = VGG16Features(width=vgg_width, taps=levels, batch_norm=vgg_batch_norm)
        grids = self.preconv.grid(self.input_size)
        if min(min(g) for g in grids) < 1:
            raise ValueError(f"input_size {self.input_size} is too small for taps {tuple(levels)}")
        self.branches = nn.ModuleList(
            _Conv3dBranch(c, conv3d_channels) for c in self.preconv.channels
        )
        self.ds_heads = nn.ModuleList(
            _DeepSupervisionHead(conv3d_channels, ds_hidden, num_classes, dropout) for _ in levels
        )
        self.lstm = AttentionJointLSTM(
            channels=[conv3d_channels] * len(grids),
            grids=grids,
            hidden_size=lstm_hidden,
            num_layers=lstm_layers,
            fusion=fusion,
            shared_attention=shared_attention,
            dropout=dropout,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(lstm_hidden, num_classes)
        for m in self.branches.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        if vgg_weights is not None:
            self.preconv.load_torchvision_state_dict(load_vgg16_state_dict(vgg_weights))
        if frozen:
            self.preconv.requires_grad_(False)
            self.preconv.eval()

    def train(self, mode: bool = True) -> AttentionLSTM:
        """Set train/eval mode; a frozen pre-conv net stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.preconv.eval()
        return self

    def forward_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """Per-level 3D-conv features ``(N, C3, T, Kh, Kw)`` of clips ``(N, 3, T, H, W)``."""
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        out = []
        for maps, branch in zip(self.preconv(frames), self.branches):
            cube = maps.reshape(n, t, *maps.shape[1:]).transpose(1, 2)
            out.append(branch(cube))
        return tuple(out)

    def forward_head(self, feats: Sequence[Tensor]) -> Tensor:
        """Joint LSTM and classifier: step logits ``(N, T, num_classes)``."""
        hidden, _ = self.lstm(feats)
        return self.head(self.drop(hidden))

    # return_aux is not keyword-only: the TorchScript ONNX exporter fills unspecified forward
    # arguments positionally with their defaults.
    def forward(self, x: Tensor, return_aux: bool = False) -> Tensor | AttentionLSTMOutput:
        """Step logits ``(N, T, num_classes)``, or everything the loss needs.

        Args:
            x: Clips ``(N, 3, T, H, W)``.
            return_aux: Also compute deep-supervision logits, attention and energy maps.
        """
        feats = self.forward_features(x)
        hidden, attention = self.lstm(feats)
        logits = self.head(self.drop(hidden))
        if not return_aux:
            return logits
        return AttentionLSTMOutput(
            step_logits=logits,
            ds_logits=tuple(head(f) for head, f in zip(self.ds_heads, feats)),
            attention=attention,
            energy=tuple(normalised_energy(f) for f in feats),
        )

    def forward_train(self, x: Tensor) -> AttentionLSTMOutput:
        """``self(x, return_aux=True)``: the training outputs."""
        return self(x, return_aux=True)


def _build(spec: VariantSpec, arch: dict[str, Any], kwargs: dict[str, Any]) -> AttentionLSTM:
    return AttentionLSTM(input_size=spec.input_size, **{**arch, **kwargs})


_PAPER: dict[str, Any] = {
    "vgg_width": 1.0,
    "conv3d_channels": 256,
    "lstm_hidden": 1024,
    "lstm_layers": 3,
    "ds_hidden": 512,
    "fusion": "late",
}
_TINY: dict[str, Any] = {
    "vgg_width": 1 / 8,
    # At 64x64, pool4 and conv5_3 are 4x4 grids where a 1 px/frame motion hardly registers;
    # pool3 and pool4 (8x8 and 4x4) keep the paper's "finer level + coarser level" pair at a
    # usable resolution, and the VGG stops at pool4.
    "levels": ("pool3", "pool4"),
    # A narrow VGG trained from scratch needs BatchNorm to leave chance on CPU budgets.
    "vgg_batch_norm": True,
    "conv3d_channels": 32,
    "lstm_hidden": 64,
    "lstm_layers": 2,
    "ds_hidden": 64,
    "fusion": "late",
}


@register_model(
    spec=VariantSpec(
        family="attention_lstm",
        input_size=(224, 224),
        decode_size=(256, 340),
        clip_len=30,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        sampler="consecutive",
        aggregator="last_steps_vote",
        aggregator_kwargs={"last": 16},
    )
)
def attention_lstm(
    *,
    spec: VariantSpec,
    num_classes: int = 101,
    fusion: Fusion = "late",
    vgg_weights: str | Path | None = None,
    frozen: bool = False,
    **kwargs: Any,
) -> AttentionLSTM:
    """The paper's setting: full VGG16 (pool4 + conv5_3), 256-ch 3D convs, LSTM 3 x 1024.

    Clips of L1 = 30 frames at 224x224, voted over the last L2 = 16 steps; late fusion (the
    better of the two in the paper's Table 4).

    Args:
        spec: The input size to build for (the registry passes it).
        num_classes: Number of action classes.
        fusion: ``"late"`` or ``"early"``.
        vgg_weights: Optional local VGG16 state dict (torchvision layout).
        frozen: Keep the VGG16 part fixed.
        **kwargs: Overrides of any other :class:`AttentionLSTM` argument.
    """
    return _build(
        spec,
        _PAPER,
        {
            "num_classes": num_classes,
            "fusion": fusion,
            "vgg_weights": vgg_weights,
            "frozen": frozen,
            **kwargs,
        },
    )


@register_model(
    spec=VariantSpec(
        family="attention_lstm",
        input_size=(64, 64),
        clip_len=8,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        sampler="consecutive",
        # Every 4th frame: the per-frame VGG sees no motion, so the 3D convs and the LSTM
        # need a visible displacement between steps (adjacent frames stay at chance).
        sampler_kwargs={"frame_step": 4},
        aggregator="last_steps_vote",
        aggregator_kwargs={"last": 4},
    )
)
def attention_lstm_tiny(
    *,
    spec: VariantSpec,
    num_classes: int = 10,
    fusion: Fusion = "late",
    vgg_weights: str | Path | None = None,
    frozen: bool = False,
    **kwargs: Any,
) -> AttentionLSTM:
    """A CPU-sized variant for 64x64 synthetic videos: BatchNorm VGG at width 1/8 tapped at
    pool3 and pool4 (8x8 and 4x4 grids), 32-ch 3D convs, LSTM 2 x 64, clips of 8 frames taken
    every 4th frame, voted over the last 4 steps.

    Args:
        spec: The input size to build for (the registry passes it).
        num_classes: Number of action classes.
        fusion: ``"late"`` or ``"early"``.
        vgg_weights: Optional local VGG16 state dict (needs ``vgg_width=1.0``).
        frozen: Keep the VGG16 part fixed.
        **kwargs: Overrides of any other :class:`AttentionLSTM` argument.
    """
    return _build(
        spec,
        _TINY,
        {
            "num_classes": num_classes,
            "fusion": fusion,
            "vgg_weights": vgg_weights,
            "frozen": frozen,
            **kwargs,
        },
    )
