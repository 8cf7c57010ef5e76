"""The full-video network: TSM shift, shapes, gradients through the cluster means,
an independent functional re-implementation of the forward pass, registry and ONNX export."""

from __future__ import annotations

import io
import warnings
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.clustering import assign_clusters, cluster_means, hamming_distances
from models.full_video import BasicBlock, Bottleneck, FullVideoNet, temporal_shift
from models.registry import create_model, get_spec, list_models

VARIANTS = [
    "full_video",
    "full_video_r50",
    "full_video_tiny",
    "full_video_tsm",
    "full_video_tsm_all",
    "full_video_tiny_tsm",
    "full_video_tiny_tsm_all",
]


def tiny(num_clusters: int = 8, **kwargs) -> FullVideoNet:
    torch.manual_seed(0)
    spec = get_spec("full_video_tiny").replace(segments=num_clusters)
    return cast(FullVideoNet, create_model("full_video_tiny", spec=spec, **kwargs))


def video(t: int, size: int = 32, n: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def randomise_batch_norm(model: torch.nn.Module) -> None:
    # Fresh BN layers are near identities in eval mode; random statistics make the reference
    # comparison see every BN parameter.
    gen = torch.Generator().manual_seed(11)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)


# ---------------------------------------------------------------------------------------------
# Temporal shift.


def test_temporal_shift_by_hand() -> None:
    # x[t, c] = 10 t + c, T = 3, C = 8 -> fold = 1: channel 0 from t + 1, channel 1 from t - 1.
    x = (10 * torch.arange(3).view(3, 1) + torch.arange(8).view(1, 8)).float().view(1, 3, 8, 1, 1)
    expected = torch.tensor(
        [
            [10, 0, 2, 3, 4, 5, 6, 7],
            [20, 1, 12, 13, 14, 15, 16, 17],
            [0, 11, 22, 23, 24, 25, 26, 27],
        ],
        dtype=torch.float32,
    ).view(1, 3, 8, 1, 1)
    original = x.clone()
    assert torch.equal(temporal_shift(x), expected)
    assert torch.equal(x, original)  # the input is not modified


def test_temporal_shift_fold_and_single_frame() -> None:
    x = torch.randn(2, 4, 20, 3, 3)
    out = temporal_shift(x)  # fold = 20 // 8 = 2
    zeros = torch.zeros(2, 2, 3, 3)
    assert torch.equal(out[:, :-1, :2], x[:, 1:, :2]) and torch.equal(out[:, -1, :2], zeros)
    assert torch.equal(out[:, 1:, 2:4], x[:, :-1, 2:4]) and torch.equal(out[:, 0, 2:4], zeros)
    assert torch.equal(out[:, :, 4:], x[:, :, 4:])
    one = torch.randn(1, 1, 16, 2, 2)
    shifted = temporal_shift(one)
    assert torch.equal(shifted[:, :, 4:], one[:, :, 4:]) and not shifted[:, :, :4].any()
    few = torch.randn(1, 3, 7, 2, 2)  # fewer than 8 channels: nothing to shift
    assert torch.equal(temporal_shift(few), few)


# ---------------------------------------------------------------------------------------------
# An independent functional forward pass: loops for the shift, F.conv2d with the model's weights.


def ref_shift(x: torch.Tensor) -> torch.Tensor:
    """TSM's shift on (T, C, H, W), frame by frame."""
    t_len, channels = x.shape[:2]
    fold = channels // 8
    out = torch.zeros_like(x)
    for t in range(t_len):
        if t + 1 < t_len:
            out[t, :fold] = x[t + 1, :fold]
        if t >= 1:
            out[t, fold : 2 * fold] = x[t - 1, fold : 2 * fold]
        out[t, 2 * fold :] = x[t, 2 * fold :]
    return out


def ref_conv_bn(x: torch.Tensor, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    y = F.conv2d(x, conv.weight, stride=conv.stride, padding=conv.padding)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def ref_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One residual block on (T, C, H, W): one video, its T frames are the segments."""
    y = ref_shift(x)
    if isinstance(block, BasicBlock):
        y = F.relu(ref_conv_bn(y, block.conv1, block.bn1))
        y = ref_conv_bn(y, block.conv2, block.bn2)
    else:
        assert isinstance(block, Bottleneck)
        y = F.relu(ref_conv_bn(y, block.conv1, block.bn1))
        y = F.relu(ref_conv_bn(y, block.conv2, block.bn2))
        y = ref_conv_bn(y, block.conv3, block.bn3)
    if block.downsample is None:
        identity = x
    else:
        conv, bn = block.downsample
        identity = ref_conv_bn(x, cast(torch.nn.Conv2d, conv), cast(torch.nn.BatchNorm2d, bn))
    return F.relu(y + identity)


def ref_forward(model: FullVideoNet, clip: torch.Tensor, mode: str, g: int) -> torch.Tensor:
    """(3, T, H, W) one video -> logits, following the paper's Fig. 2 step by step."""
    frames = clip.transpose(0, 1)  # (T, 3, H, W)
    conv, bn = cast(torch.nn.Conv2d, model.stem[0]), cast(torch.nn.BatchNorm2d, model.stem[1])
    y = F.max_pool2d(F.relu(ref_conv_bn(frames, conv, bn)), 3, 2, 1)
    for block in model.layer1:
        y = ref_block(block, y)
    if mode != "none":
        y = cluster_means(y, assign_clusters(hamming_distances(y), g, mode), g)
    for layer in (model.layer2, model.layer3, model.layer4):
        for block in layer:
            y = ref_block(block, y)
    return F.linear(y.mean(dim=(2, 3)).mean(dim=0), model.head.weight, model.head.bias)


@pytest.mark.parametrize("mode", ["none", "cumulative", "slope", "uniform"])
def test_forward_matches_functional_reference(mode: str) -> None:
    model = tiny(clustering=mode, num_clusters=3).eval()
    randomise_batch_norm(model)
    x = video(7, size=32)
    with torch.no_grad():
        got = model(x)[0]
        want = ref_forward(model, x[0], mode, 3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bottleneck_block_matches_reference() -> None:
    torch.manual_seed(0)
    model = FullVideoNet(num_classes=3, backbone="resnet50", width=8, num_clusters=2).eval()
    randomise_batch_norm(model)
    x = video(4, size=32)
    with torch.no_grad():
        want = ref_forward(model, x[0], "cumulative", 2)
        torch.testing.assert_close(model(x)[0], want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Shapes, gradients, determinism.


@pytest.mark.parametrize("t", [1, 3, 8, 32])
def test_tiny_forward_shapes(t: int) -> None:
    model = tiny(num_classes=5).eval()
    x = video(t, size=64)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (1, 5)
    assert torch.isfinite(logits).all()
    assert features.shape == (1, 8, 128, 2, 2)  # g = 8 segments reach layer4, whatever T is
    assignment = model.cluster_assignment(x)
    assert assignment.shape == (1, t) and len(set(assignment[0].tolist())) == min(t, 8)


def test_backward_through_cluster_means() -> None:
    model = tiny(num_classes=4).train()
    x = video(12, size=32, n=2)
    loss = F.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The stem and layer1 only see the loss through the cluster means.
    stem_conv: Any = model.stem[0]
    block: Any = model.layer1[0]
    assert stem_conv.weight.grad.abs().sum() > 0
    assert block.conv1.weight.grad.abs().sum() > 0


def test_same_seed_same_output() -> None:
    x = video(10)
    with torch.no_grad():
        a = tiny().eval()(x)
        b = tiny().eval()(x)
    assert torch.equal(a, b)


def test_videos_in_a_batch_are_clustered_independently() -> None:
    model = tiny().eval()
    x = torch.cat([video(16, seed=1), video(16, seed=2)])
    x[1, :, 8:] *= -1  # a different content change in the second video only
    with torch.no_grad():
        both = model(x)
        torch.testing.assert_close(both[0], model(x[:1])[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(both[1], model(x[1:])[0], rtol=1e-5, atol=1e-5)


def test_every_mode_equals_plain_tsm_when_t_equals_g() -> None:
    # With T = g every cluster holds one frame, so each mode reduces to TSM on all frames.
    x = video(6)
    with torch.no_grad():
        outputs = {
            mode: tiny(clustering=mode, num_clusters=6).eval()(x)
            for mode in ("none", "cumulative", "slope", "uniform")
        }
    for mode, out in outputs.items():
        torch.testing.assert_close(out, outputs["none"], rtol=1e-5, atol=1e-5, msg=mode)


def test_none_keeps_every_frame_as_a_segment() -> None:
    model = tiny(clustering="none").eval()
    with torch.no_grad():
        assert model.forward_features(video(11)).shape[1] == 11
        assert model.cluster_assignment(video(5)).tolist() == [[0, 1, 2, 3, 4]]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="clustering"):
        FullVideoNet(num_classes=2, clustering="kmeans")
    with pytest.raises(ValueError, match="backbone"):
        FullVideoNet(num_classes=2, backbone="vgg16")
    with pytest.raises(ValueError, match="num_clusters"):
        FullVideoNet(num_classes=2, num_clusters=0)


# ---------------------------------------------------------------------------------------------
# Registry and defaults.


def test_registered_variants_and_defaults() -> None:
    assert set(VARIANTS) <= set(list_models())
    for name in VARIANTS:
        d = get_spec(name)
        assert d.family == "full_video" and d.input_frames == 0 and d.aggregator == "mean_prob"
    assert get_spec("full_video").sampler == "all"
    assert get_spec("full_video").sampler_args() == {"min_frames": 8}
    assert get_spec("full_video_tsm").sampler == "uniform"
    assert get_spec("full_video_tsm").sampler_args() == {"num_segments": 8}
    assert get_spec("full_video_tiny").input_size == (64, 64)


def test_backbones_have_resnet_parameter_counts() -> None:
    # The temporal shift adds no parameters, so with a 1000-way head the backbones must match
    # the published ResNet-18 / ResNet-50 sizes (11,689,512 and 25,557,032).
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(create_model("full_video", num_classes=1000)) == 11_689_512
    assert count(create_model("full_video_r50", num_classes=1000)) == 25_557_032
    baseline = create_model("full_video_tsm_all", num_classes=7)
    assert isinstance(baseline, FullVideoNet) and baseline.clustering == "none"


# ---------------------------------------------------------------------------------------------
# ONNX: the whole network exports with a dynamic number of frames.


def test_tiny_exports_to_onnx_with_dynamic_frames() -> None:
    import onnxruntime as ort

    model = tiny().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (video(12),),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
            dynamo=False,
            opset_version=17,
            input_names=["video"],
            output_names=["logits"],
            dynamic_axes={"video": {0: "videos", 2: "frames"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for t in (3, 8, 21):
        x = video(t, seed=t)
        x[:, :, t // 2 :] += 1.0
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"video": x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
