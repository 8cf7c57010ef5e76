"""The attention joint-LSTM family: model pieces, loss terms, VGG16 weight loading."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from models import get_spec
from models.attention_lstm import (
    AttentionLSTM,
    AttentionLSTMOutput,
    Fusion,
    JointLSTMCell,
    VGG16Features,
    attention_lstm,
    attention_lstm_tiny,
    load_vgg16_state_dict,
    normalised_energy,
    spatial_pyramid,
)
from models.pipeline import sample_video
from models.weights import WeightsMismatch
from training.losses.attention import attention_lstm_loss, attention_regularizer, step_cross_entropy

# torchvision vgg16().features: (layer index, in channels, out channels) of each 3x3 conv.
VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
]  # fmt: skip


def _tiny(**kwargs) -> AttentionLSTM:
    torch.manual_seed(0)
    return attention_lstm_tiny(num_classes=4, **kwargs)


def _clips(n: int = 2, t: int = 6, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, t, size, size, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- variants


def test_defaults_follow_the_paper_and_the_tiny_setting() -> None:
    paper, tiny = get_spec("attention_lstm"), get_spec("attention_lstm_tiny")
    assert paper.family == tiny.family == "attention_lstm"
    assert (paper.clip_len, paper.input_size) == (30, (224, 224))
    assert paper.sampler == "consecutive" and paper.sampler_args() == {"clip_len": 30}
    # Non-overlapping 30-frame clips (stride 30).
    assert sample_video(np.zeros((60, 1, 1, 3), np.uint8), paper)[:, 0].tolist() == [0, 30]
    assert paper.aggregator == "last_steps_vote" and paper.aggregator_kwargs == {"last": 16}
    assert (tiny.clip_len, tiny.input_size, tiny.aggregator_kwargs) == (8, (64, 64), {"last": 4})
    assert tiny.sampler_args() == {"clip_len": 8, "frame_step": 4}


def test_paper_variant_structure_on_meta_device() -> None:
    with torch.device("meta"):
        model = attention_lstm(num_classes=51)
    assert model.fusion == "late"
    assert model.preconv.channels == (512, 512)
    assert model.lstm.grids == ((14, 14), (14, 14))  # 224 / 16
    assert model.lstm.cell.input_sizes == (5 * 256, 5 * 256)
    assert model.lstm.hidden_size == 1024 and len(model.lstm.upper) == 2  # 3 layers
    assert model.head.out_features == 51


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_forward_shapes(fusion: str) -> None:
    model = _tiny(fusion=fusion)
    x = _clips()
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 6, 4)
    out = model.forward_train(x)
    assert isinstance(out, AttentionLSTMOutput)
    torch.testing.assert_close(out.step_logits, logits)
    assert len(out.ds_logits) == len(out.attention) == len(out.energy) == 2
    # The tiny variant taps pool3 and pool4: 64 / 8 = 8x8 and 64 / 16 = 4x4 grids.
    for ds, att, energy, cells in zip(out.ds_logits, out.attention, out.energy, (64, 16)):
        assert ds.shape == (2, 6, 4)
        assert att.shape == energy.shape == (2, 6, cells)
        # Every step's attention and energy are distributions over the grid.
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 6))
        torch.testing.assert_close(energy.sum(-1), torch.ones(2, 6))
        # h_0 = 0 and no attention bias: the first step looks everywhere equally.
        torch.testing.assert_close(att[:, 0], torch.full((2, cells), 1 / cells))
        assert torch.isfinite(ds).all()
    assert torch.isfinite(logits).all()


def test_fusion_modes_differ_with_the_same_weights() -> None:
    late = _tiny(fusion="late")
    early = _tiny(fusion="early")
    early.load_state_dict(late.state_dict())
    x = _clips()
    assert not torch.allclose(late(x), early(x))


def test_backward_through_forward_train_and_loss() -> None:
    model = _tiny()
    out = model.forward_train(_clips())
    total, parts = attention_lstm_loss(out, torch.tensor([0, 3]))
    assert set(parts) == {"ce", "ds", "att_reg", "total"}
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # The deep-supervision heads and the attention projections actually receive signal.
    ds_head: Any = model.ds_heads[0]
    attention: Any = model.lstm.attention[1]
    assert ds_head.fc2.weight.grad.abs().sum() > 0
    assert attention.weight.grad.abs().sum() > 0


def test_same_seed_same_output() -> None:
    x = _clips()
    a, b = _tiny(), _tiny()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_shared_attention_uses_one_map() -> None:
    # One shared map needs equal grids: pool4 and conv5_3 are both 4x4 at 64x64.
    model = _tiny(shared_attention=True, levels=("pool4", "conv5_3"))
    assert len(model.lstm.attention) == 1
    out = model.forward_train(_clips(t=3))
    torch.testing.assert_close(out.attention[0], out.attention[1])


def test_grid_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="grid"):
        _tiny()(_clips(t=2, size=32))


# ------------------------------------------------------------------ joint LSTM equations


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_joint_cell_matches_the_paper_equations(fusion: Fusion) -> None:
    dims, hidden, batch = (2, 4), 3, 2
    rng = np.random.default_rng(7)

    def mat(*s: int) -> np.ndarray:
        return rng.normal(scale=0.7, size=s)

    # The paper's named parameters, per input k.
    P = [
        {
            "W_xi": mat(d, d), "W_xf": mat(d, d), "W_xo": mat(d, d),
            "W_hi": mat(d, hidden), "W_hf": mat(d, hidden), "W_ho": mat(d, hidden),
            "b_i": mat(d), "b_f": mat(d), "b_o": mat(d),
            "W_ii": mat(hidden, d), "W_ff": mat(hidden, d), "W_oo": mat(hidden, d),
            "W_xc": mat(hidden, d),
        }
        for d in dims
    ]  # fmt: skip
    W_hc, b_c = mat(hidden, hidden), mat(hidden)
    xs = [mat(batch, d) for d in dims]
    h0, c0 = mat(batch, hidden), mat(batch, hidden)

    # Reference: Section 3.3 written out (f and o mix their own sub-gates f_k, o_k).
    gi = gf = go = np.zeros((batch, hidden))
    cand = h0 @ W_hc.T + b_c
    for x, p in zip(xs, P):
        i_k = np.tanh(x @ p["W_xi"].T + h0 @ p["W_hi"].T + p["b_i"])
        f_k = np.tanh(x @ p["W_xf"].T + h0 @ p["W_hf"].T + p["b_f"])
        o_k = np.tanh(x @ p["W_xo"].T + h0 @ p["W_ho"].T + p["b_o"])
        gi, gf, go = gi + i_k @ p["W_ii"].T, gf + f_k @ p["W_ff"].T, go + o_k @ p["W_oo"].T
        cand = cand + (x * i_k if fusion == "late" else x) @ p["W_xc"].T
    c_ref = _sigmoid(gf) * c0 + _sigmoid(gi) * np.tanh(cand)
    h_ref = _sigmoid(go) * np.tanh(c_ref)

    cell = JointLSTMCell(dims, hidden, fusion).double()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a))

    sub_gates: list[Any] = list(cell.inputs)
    with torch.no_grad():
        for mod, p in zip(sub_gates, P):
            mod.sub_x.weight.copy_(t(np.concatenate([p["W_xi"], p["W_xf"], p["W_xo"]])))
            mod.sub_x.bias.copy_(t(np.concatenate([p["b_i"], p["b_f"], p["b_o"]])))
            mod.sub_h.weight.copy_(t(np.concatenate([p["W_hi"], p["W_hf"], p["W_ho"]])))
            mod.mix_i.weight.copy_(t(p["W_ii"]))
            mod.mix_f.weight.copy_(t(p["W_ff"]))
            mod.mix_o.weight.copy_(t(p["W_oo"]))
            mod.cand_x.weight.copy_(t(p["W_xc"]))
        cell.cand_h.weight.copy_(t(W_hc))
        cell.cand_h.bias.copy_(t(b_c))
        h, c = cell([t(x) for x in xs], (t(h0), t(c0)))
    np.testing.assert_allclose(c.numpy(), c_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h.numpy(), h_ref, rtol=1e-12, atol=1e-12)


def test_joint_cell_refuses_unknown_fusion() -> None:
    with pytest.raises(ValueError, match="fusion"):
        JointLSTMCell([2], 3, "middle")  # type: ignore[arg-type]  # an unknown fusion on purpose


# ------------------------------------------------------------ pyramid, energy, attention


def test_spatial_pyramid_on_2x2_grid_by_hand() -> None:
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 0.0], [0.0, -10.0]]]).unsqueeze(0)
    att = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    out = spatial_pyramid(feats, att)
    assert out.shape == (1, 5 * 2)
    # [full | TL | TR | BL | BR], each with the 2 channels side by side.
    expected = [0.1 + 0.4 + 0.9 + 1.6, 1.0 - 4.0, 0.1, 1.0, 0.4, 0.0, 0.9, 0.0, 1.6, -4.0]
    torch.testing.assert_close(out, torch.tensor([expected]))


def test_spatial_pyramid_odd_grid_shares_the_centre() -> None:
    feats = torch.arange(9.0).reshape(1, 1, 3, 3)
    att = torch.full((1, 3, 3), 1.0)
    # Quadrants of a 3x3 grid are the 2x2 corners, overlapping in the centre row/column.
    expected = [36.0, 0 + 1 + 3 + 4, 1 + 2 + 4 + 5, 3 + 4 + 6 + 7, 4 + 5 + 7 + 8]
    torch.testing.assert_close(spatial_pyramid(feats, att), torch.tensor([expected]))


def test_normalised_energy_by_hand() -> None:
    # (N=1, C=2, T=1, 2, 2): channel sums [[1, 1], [2, 0]] -> energy [.25, .25, .5, 0].
    feats = torch.tensor([[[[0.5, 1.0], [2.0, 0.0]]], [[[0.5, 0.0], [0.0, 0.0]]]]).unsqueeze(0)
    torch.testing.assert_close(normalised_energy(feats), torch.tensor([[[0.25, 0.25, 0.5, 0.0]]]))
    assert torch.equal(normalised_energy(torch.zeros(1, 3, 2, 2, 2)), torch.zeros(1, 2, 4))


# ------------------------------------------------------------------------------ loss


def test_attention_regularizer_on_2x2_grid_by_hand() -> None:
    energy = torch.tensor([[[0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]],
                           [[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]])  # fmt: skip
    att = torch.full((2, 2, 4), 0.25)
    # clip 0: step 0 -> 0.25^2 + 0.25^2 = 0.125, step 1 -> 0; clip 1: 0.75^2 + 3 * 0.25^2 = 0.75.
    reg = attention_regularizer(energy, att)
    assert reg.item() == pytest.approx((0.125 + 0.75) / 2)


def test_attention_regularizer_detaches_the_attention_by_default() -> None:
    energy = torch.tensor([[[0.6, 0.4]]], requires_grad=True)
    att = torch.tensor([[[0.5, 0.5]]], requires_grad=True)
    attention_regularizer(energy, att).backward()
    assert att.grad is None
    torch.testing.assert_close(energy.grad, torch.tensor([[[0.2, -0.2]]]))
    attention_regularizer(energy, att, detach_attention=False).backward()
    torch.testing.assert_close(att.grad, torch.tensor([[[-0.2, 0.2]]]))


def test_step_cross_entropy_last_steps() -> None:
    logits = torch.zeros(1, 3, 2)
    logits[0, 2] = torch.tensor([0.0, math.log(3.0)])  # p(class 1) = 3/4 at the last step
    labels = torch.tensor([1])
    expected_all = (2 * math.log(2.0) + math.log(4 / 3)) / 3
    assert step_cross_entropy(logits, labels).item() == pytest.approx(expected_all)
    assert step_cross_entropy(logits, labels, last_steps=1).item() == pytest.approx(math.log(4 / 3))


def test_total_loss_by_hand() -> None:
    n, t, classes = 1, 2, 4
    step = torch.zeros(n, t, classes)  # uniform: CE = log 4
    ds_a = torch.zeros(n, t, classes)  # log 4
    ds_b = torch.zeros(n, t, classes)
    ds_b[..., 2] = math.log(5.0)  # p(label 2) = 5/8 at both steps
    energy = torch.tensor([[[0.25, 0.25, 0.5, 0.0], [0.25] * 4]])
    att = torch.full((n, t, 4), 0.25)
    out = AttentionLSTMOutput(step, (ds_a, ds_b), (att, att), (energy, att.clone()))
    total, parts = attention_lstm_loss(out, torch.tensor([2]), lam=10.0, ds_weight=0.5)
    ce, ds, reg = math.log(4), math.log(4) + math.log(8 / 5), 0.125
    assert parts["ce"].item() == pytest.approx(ce)
    assert parts["ds"].item() == pytest.approx(ds)
    assert parts["att_reg"].item() == pytest.approx(reg)
    assert total.item() == pytest.approx(ce + 0.5 * ds + 10.0 * reg)
    assert parts["total"].item() == pytest.approx(total.item())


# ------------------------------------------------------------------- VGG16 weight files


def _torchvision_vgg16_state(width_div: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    state = {}
    for idx, cin, cout in VGG16_CONVS:
        cin = cin if idx == 0 else cin // width_div
        cout //= width_div
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g)
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=g)
    # A stand-in for the fc layers (real ones are ~500 MB); they must be ignored.
    state["classifier.0.weight"] = torch.randn(4, 7, generator=g)
    state["classifier.6.bias"] = torch.randn(4, generator=g)
    return state


@pytest.fixture(scope="module")
def vgg16_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, torch.Tensor], Path, Path]:
    state = _torchvision_vgg16_state()
    root = tmp_path_factory.mktemp("vgg")
    pth, st = root / "vgg16.pth", root / "vgg16.safetensors"
    torch.save(state, pth)
    save_file(state, str(st))
    return state, pth, st


def _assert_loaded(features: VGG16Features, state: dict[str, torch.Tensor]) -> None:
    for idx, _, _ in VGG16_CONVS:
        conv = cast(nn.Conv2d, features.features[idx])
        assert torch.equal(conv.weight, state[f"features.{idx}.weight"])
        assert conv.bias is not None and torch.equal(conv.bias, state[f"features.{idx}.bias"])


def test_vgg16_weights_load_through_the_builder(vgg16_files) -> None:
    state, pth, st = vgg16_files
    model = attention_lstm_tiny(
        num_classes=3,
        vgg_width=1.0,
        vgg_weights=pth,
        vgg_batch_norm=False,
        levels=("pool4", "conv5_3"),
    )
    _assert_loaded(model.preconv, state)
    features = VGG16Features()
    features.load_torchvision_state_dict(load_vgg16_state_dict(st))
    _assert_loaded(features, state)


def test_vgg16_weights_mismatches_are_clear_errors(vgg16_files) -> None:
    state, _, _ = vgg16_files
    features = VGG16Features()
    missing = {k: v for k, v in state.items() if k != "features.28.bias"}
    with pytest.raises(WeightsMismatch, match=r"missing from the file \(1\): features.28.bias$"):
        features.load_torchvision_state_dict(missing)
    bn_like = {**state, "features.30.weight": torch.ones(512)}  # vgg16_bn shifts indices
    with pytest.raises(WeightsMismatch, match=r"not in the network \(1\): features.30.weight$"):
        features.load_torchvision_state_dict(bn_like)
    # A width-reduced model cannot take full-size weights (the first conv is listed first).
    shape_error = (
        r"shape \(file vs network\) \(26\): features.0.weight \(64, 3, 3, 3\) vs \(8, 3, 3, 3\)"
    )
    with pytest.raises(WeightsMismatch, match=shape_error):
        VGG16Features(width=1 / 8).load_torchvision_state_dict(state)
    # nothing is copied from a file that does not fit
    before = {k: v.clone() for k, v in features.state_dict().items()}
    with pytest.raises(WeightsMismatch):
        features.load_torchvision_state_dict(missing)
    assert all(torch.equal(v, before[k]) for k, v in features.state_dict().items())


def test_vgg16_weights_of_a_shallower_model_ignore_deeper_layers(tmp_path: Path) -> None:
    state = _torchvision_vgg16_state(width_div=8)
    path = tmp_path / "narrow.safetensors"
    save_file(state, str(path))
    model = attention_lstm_tiny(
        num_classes=3, levels=("pool4",), vgg_weights=path, vgg_batch_norm=False
    )
    assert len(model.preconv.features) == 24  # up to pool4
    for idx, _, _ in VGG16_CONVS[:10]:
        conv = cast(nn.Conv2d, model.preconv.features[idx])
        assert torch.equal(conv.weight, state[f"features.{idx}.weight"])


def test_missing_vgg16_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        attention_lstm_tiny(vgg_weights=tmp_path / "nope.pth")


# ------------------------------------------------------------------------------ frozen


def test_frozen_preconv_gets_no_gradient_and_stays_in_eval() -> None:
    model = _tiny(frozen=True)
    assert not any(p.requires_grad for p in model.preconv.parameters())
    model.train()
    assert model.training and model.lstm.training and not model.preconv.training
    total, _ = attention_lstm_loss(model.forward_train(_clips(t=3)), torch.tensor([1, 2]))
    total.backward()
    assert all(p.grad is None for p in model.preconv.parameters())
    assert all(p.grad is not None for p in model.branches.parameters())
    assert all(p.requires_grad for p in _tiny().preconv.parameters())


def test_batch_norm_vgg_taps_and_torchvision_bn_layout(tmp_path) -> None:
    from models.attention_lstm import _torchvision_vgg16_conv_keys

    plain = VGG16Features(width=1 / 8)
    bn = VGG16Features(width=1 / 8, batch_norm=True)
    x = torch.randn(2, 3, 64, 64)
    # the same taps come out at the same sizes with or without BatchNorm
    assert [t.shape for t in plain(x)] == [t.shape for t in bn(x)]
    # torchvision's vgg16_bn: pool4 is layer 33, relu5_3 is layer 42
    assert bn.tap_indices == (33, 42)
    keys = _torchvision_vgg16_conv_keys(batch_norm=True)
    assert "features.1.running_mean" in keys and "features.40.weight" in keys
    full = VGG16Features(batch_norm=True)
    state = {f"features.{k}": v.clone() + 1 for k, v in full.features.state_dict().items()}
    full.load_torchvision_state_dict(state)
    torch.testing.assert_close(full.features[1].running_var, state["features.1.running_var"])
