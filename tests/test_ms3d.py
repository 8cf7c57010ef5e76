"""MS3D network: shapes, the fixed kernel bank, sparse connectivity, Eq. 4 init."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import nn

from models import get_spec
from models.ms3d import (
    MS3D,
    SparseDenseBlock,
    eq4_temporal_factors,
    init_conv3d_eq4,
    ms3d,
    ms3d_tiny,
    sparse_connectivity,
)

SIZES = (4, 8, 12)


def _walks(n: int = 2, seed: int = 0) -> torch.Tensor:
    # 32x32 rather than the registered 64x64 keeps the file fast on a shared CPU; the network
    # is fully convolutional up to its global pool.
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, sum(SIZES), 32, 32, generator=gen)


@pytest.fixture(scope="module")
def tiny() -> MS3D:
    torch.manual_seed(0)
    return ms3d_tiny()


def test_tiny_forward_is_unit_norm_embedding(tiny: MS3D) -> None:
    out = tiny(_walks())
    assert out.shape == (2, 256)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)


def test_tiny_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = ms3d_tiny()
    out = model(_walks())
    (out[0] @ out[1]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_forward_head_without_normalisation_is_raw_projection(tiny: MS3D) -> None:
    tiny.eval()
    with torch.no_grad():
        feats = tiny.forward_features(_walks())
        raw = tiny.forward_head(feats, normalize=False)
        unit = tiny.forward_head(feats)
    torch.testing.assert_close(unit, raw / raw.norm(dim=1, keepdim=True))


def test_wrong_frame_count_is_refused(tiny: MS3D) -> None:
    with pytest.raises(ValueError, match="expected 24 frames"):
        tiny(torch.zeros(1, 3, 23, 32, 32))


def test_pathway_kernels_follow_the_paper() -> None:
    model = ms3d(block_config=(1,), stem_channels=4, growth_rate=4)
    convs = [cast(nn.Conv3d, cast(nn.Sequential, p)[0]) for p in model.stem.pathways]
    shapes = [tuple(conv.weight.shape[2:]) for conv in convs]
    assert shapes == [(3, 3, 3), (3, 5, 5), (3, 7, 7)]
    assert model.pathway_sizes == (7, 17, 25)
    assert tuple(model.stem.bank.weight.shape) == (16, 3, 1, 3, 3)


def test_pathways_are_convolved_separately(tiny: MS3D) -> None:
    """Changing the fast pathway's frames leaves the slow pathway's stem output unchanged."""
    tiny.eval()
    x = _walks(1)
    y = x.clone()
    y[:, :, SIZES[0] + SIZES[1] :] += 1.0
    with torch.no_grad():
        a, b = tiny.stem(x), tiny.stem(y)
    n1 = SIZES[0]
    torch.testing.assert_close(a[:, :, :n1], b[:, :, :n1])
    assert not torch.allclose(a[:, :, -1], b[:, :, -1])


def test_kernel_bank_is_fixed_buffer_saved_and_untouched_by_optimizer() -> None:
    torch.manual_seed(0)
    model = ms3d_tiny()
    bank = model.stem.bank.weight
    assert not bank.requires_grad
    assert "stem.bank.weight" in model.state_dict()
    assert all(p is not bank for p in model.parameters())
    before = bank.clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    out = model(_walks())
    (out[0] @ out[1]).backward()
    opt.step()
    torch.testing.assert_close(model.stem.bank.weight, before, rtol=0, atol=0)
    # The bank is a deterministic function of its seed, so it survives a rebuild unchanged.
    torch.testing.assert_close(ms3d_tiny().stem.bank.weight, before, rtol=0, atol=0)
    assert not torch.equal(ms3d_tiny(bank_seed=1).stem.bank.weight, before)


def test_state_dict_roundtrip_includes_bank() -> None:
    torch.manual_seed(0)
    a = ms3d_tiny(bank_seed=3)
    b = ms3d_tiny(bank_seed=0)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.stem.bank.weight, a.stem.bank.weight)


def test_connectivity_same_for_same_seed_and_differs_for_another() -> None:
    kwargs: dict[str, Any] = dict(block_config=(6, 6), growth_rate=2, stem_channels=4, bn_size=0)
    a = ms3d_tiny(connectivity_seed=5, **kwargs)
    b = ms3d_tiny(connectivity_seed=5, **kwargs)
    c = ms3d_tiny(connectivity_seed=6, **kwargs)
    assert a.connectivity == b.connectivity
    assert a.connectivity != c.connectivity
    # The model's graph is exactly the pure function's draw from the seed, block after block.
    rng = np.random.default_rng(5)
    assert a.connectivity == [sparse_connectivity(6, 0.7, rng) for _ in range(2)]


def test_every_layer_keeps_its_upper_neighbour() -> None:
    conn = sparse_connectivity(12, 0.9, np.random.default_rng(0))
    for layer, inputs in enumerate(conn):
        assert inputs[-1] == layer
        assert inputs == sorted(set(inputs))
        assert all(0 <= i <= layer for i in inputs)


def test_kept_fraction_of_earlier_connections_is_one_minus_drop_rate() -> None:
    conn = sparse_connectivity(60, 0.7, np.random.default_rng(1))
    candidates = sum(range(60))  # layer l has l earlier features besides its neighbour
    kept = sum(len(inputs) - 1 for inputs in conn)
    # 1770 Bernoulli(0.3) draws: the standard deviation of the fraction is about 0.011.
    assert abs(kept / candidates - 0.3) < 0.05


def test_drop_rate_extremes_give_full_dense_and_chain() -> None:
    full = sparse_connectivity(4, 0.0, np.random.default_rng(0))
    chain = sparse_connectivity(4, 1.0, np.random.default_rng(0))
    assert full == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert chain == [[0], [1], [2], [3]]
    with pytest.raises(ValueError):
        sparse_connectivity(4, 1.5, np.random.default_rng(0))


def test_layer_input_width_follows_connectivity() -> None:
    model = ms3d_tiny(block_config=(5,), stem_channels=6, growth_rate=3, bn_size=0)
    block = cast(SparseDenseBlock, model.stages[0][0])  # layer1: the block, no transition
    layers: list[Any] = list(block.layers)
    for inputs, layer in zip(block.connectivity, layers):
        expected = sum(6 if i == 0 else 3 for i in inputs)
        assert layer.body[0][0].num_features == expected
    assert block.out_channels == 6 + 5 * 3


def test_same_seed_same_output() -> None:
    x = _walks()
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ms3d_tiny(connectivity_seed=2).eval()
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_eq4_factors_by_hand() -> None:
    torch.testing.assert_close(eq4_temporal_factors(3), torch.tensor([-1 / 3, 5 / 3, -1 / 3]))
    torch.testing.assert_close(eq4_temporal_factors(1), torch.tensor([1.0]))
    for d in (1, 2, 3, 5):
        assert abs(float(eq4_temporal_factors(d).sum()) - 1.0) < 1e-6


def test_eq4_init_gives_2d_response_on_a_static_clip() -> None:
    weight = torch.empty(4, 2, 3, 3, 3)
    init_conv3d_eq4(weight, torch.Generator().manual_seed(0))
    # Every tap is a multiple of the centre tap: w[:, :, r] = alpha_r / alpha_centre * w_centre.
    torch.testing.assert_close(weight[:, :, 0], -0.2 * weight[:, :, 1])
    torch.testing.assert_close(weight[:, :, 2], weight[:, :, 0])
    # On a static clip the interior output equals the 2D conv with w^{p,q} = sum of the taps.
    frame = torch.randn(1, 2, 8, 8)
    clip = frame.unsqueeze(2).expand(1, 2, 5, 8, 8)
    out3d = torch.nn.functional.conv3d(clip, weight, padding=1)[:, :, 2]
    out2d = torch.nn.functional.conv2d(frame, weight.sum(dim=2), padding=1)
    torch.testing.assert_close(out3d, out2d, atol=1e-5, rtol=1e-5)


def test_model_convs_are_initialised_by_eq4(tiny: MS3D) -> None:
    pathway: Any = tiny.stem.pathways[2]
    w = pathway[0].weight.detach()
    torch.testing.assert_close(w[:, :, 0], -0.2 * w[:, :, 1])


def test_registered_defaults_describe_pz_and_nearest_centre() -> None:
    for name, sizes in (("ms3d", (7, 17, 25)), ("ms3d_tiny", SIZES)):
        d = get_spec(name)
        assert d.family == "ms3d" and d.output == "embedding"
        assert d.sampler == "pz" and tuple(d.sampler_args()["sizes"]) == sizes
        assert d.sampler_args()["walks"] >= 2
        assert d.aggregator == "nearest_centre"
        # gamma comes from the bundle's repository at judgement time, never from the defaults.
        assert "gamma" not in d.aggregator_kwargs
        assert d.input_frames == sum(sizes)


def test_tiny_exports_to_onnx_and_matches(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = ms3d_tiny().eval()
    x = _walks(2)
    path = tmp_path / "ms3d_tiny.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["emb"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5, rtol=1e-4)
