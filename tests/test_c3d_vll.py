"""The c3d_vll network: shapes, flatten size, gradients, determinism, registry entries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from models import create_model, get_spec
from models.c3d_vll import C3DVLL, c3d_vll, c3d_vll_tiny
from models.pipeline import sample_video


def _tiny(seed: int = 0, **kwargs) -> C3DVLL:
    torch.manual_seed(seed)
    return c3d_vll_tiny(num_classes=5, **kwargs)


def test_tiny_forward_backward():
    model = _tiny()
    x = torch.randn(2, 3, 16, 56, 56)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    conv1: Any = model.layer1[0]
    assert conv1.weight.grad.abs().sum() > 0


def test_tiny_same_seed_same_output():
    x = torch.randn(1, 3, 16, 56, 56)
    a, b, c = _tiny(0).eval(), _tiny(0).eval(), _tiny(1).eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))


def test_forward_features_and_head_compose():
    model = _tiny().eval()
    x = torch.randn(1, 3, 16, 56, 56)
    with torch.no_grad():
        feats = model.forward_features(x)
        # 16x56x56 -> pool1 16x28x28 -> 8x14x14 -> 4x7x7 -> 2x4x4 -> 1x2x2 (ceil), 64 channels.
        assert feats.shape == (1, 64, 1, 2, 2)
        assert torch.equal(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (1, 256)


@pytest.mark.parametrize(("clip_len", "size"), [(16, (64, 64)), (7, (37, 50)), (1, (9, 3))])
def test_flatten_size_matches_the_real_feature_map(clip_len, size):
    model = C3DVLL(num_classes=3, width=1 / 32, fc_dim=8, clip_len=clip_len, input_size=size)
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(1, 3, clip_len, *size))
    assert tuple(feats.shape[1:]) == model.feature_shape
    assert model.fc6.in_features == feats[0].numel()


def test_paper_size_flatten_is_4096():
    # Shapes only: the full 16x112x112 forward runs on the meta device (no compute).
    with torch.device("meta"):
        model = c3d_vll(num_classes=101)
        feats = model.forward_features(torch.empty(1, 3, 16, 112, 112))
        logits = model(torch.empty(1, 3, 16, 112, 112))
    assert model.widths == (64, 128, 256, 256, 256)
    assert tuple(feats.shape) == (1, 256, 1, 4, 4)
    assert model.num_flat_features == 4096
    assert (model.fc6.in_features, model.fc6.out_features) == (4096, 4096)
    assert (model.fc7.out_features, model.head.out_features) == (4096, 101)
    assert tuple(logits.shape) == (1, 101)
    assert model.drop.p == 0.05


def test_norm_option_puts_batchnorm_between_conv_and_relu():
    plain, normed = c3d_vll_tiny(num_classes=3, norm=False), c3d_vll_tiny(num_classes=3)
    assert [type(m) for m in plain.layer1] == [torch.nn.Conv3d, torch.nn.ReLU, torch.nn.MaxPool3d]
    assert [type(m) for m in normed.layer1] == [
        torch.nn.Conv3d,
        torch.nn.BatchNorm3d,
        torch.nn.ReLU,
        torch.nn.MaxPool3d,
    ]
    # The conv bias is redundant before BatchNorm's shift.
    assert normed.layer1[0].bias is None and plain.layer1[0].bias is not None
    with torch.device("meta"):
        assert not any(
            isinstance(m, torch.nn.BatchNorm3d) for m in c3d_vll(num_classes=3).modules()
        )


def test_builders_take_overrides_and_refuse_unknown_keys():
    with torch.device("meta"):
        model = c3d_vll(num_classes=7, fc_dim=2048)
    assert (model.fc6.out_features, model.head.out_features) == (2048, 7)
    with pytest.raises(TypeError):
        c3d_vll_tiny(depth=3)


def test_wrong_input_size_is_a_clear_error():
    model = _tiny()
    with pytest.raises(ValueError, match="built for"):
        model(torch.zeros(1, 3, 16, 112, 112))


def test_registered_with_defaults():
    assert isinstance(create_model("c3d_vll_tiny", num_classes=4), C3DVLL)
    for name, size in (("c3d_vll", (112, 112)), ("c3d_vll_tiny", (56, 56))):
        d = get_spec(name)
        assert d.family == "c3d_vll"
        assert d.input_size == size and d.clip_len == 16
        assert d.sampler == "consecutive" and d.sampler_args() == {"clip_len": 16}
        # Non-overlapping 16-frame clips (stride 16); a short tail is dropped.
        assert sample_video(np.zeros((40, 1, 1, 3), np.uint8), d)[:, 0].tolist() == [0, 16]
        assert d.aggregator == "majority_vote"
    assert get_spec("c3d_vll").decode_size == (128, 171)
