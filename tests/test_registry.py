"""Every registered small variant builds, runs forward and backward, and is deterministic."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import models
from models import VariantSpec, create_model, get_spec, list_models, register_model
from models.c3d_vll import C3DVLL
from models.ms3d import MS3D

SMALL = [name for name in list_models() if name.endswith("_tiny")]
FAMILY_NAMES = {"c3d_vll", "attention_lstm", "ms3d", "full_video"}


def _input_for(name: str, batch: int = 2) -> torch.Tensor:
    d = get_spec(name)
    h, w = d.input_size
    if d.input_frames > 0:
        t = d.input_frames
    else:
        t = 12  # a whole (short) video for the full-video family
    return torch.randn(batch, 3, t, h, w, generator=torch.Generator().manual_seed(0))


def test_every_family_has_paper_and_small_variants() -> None:
    names = set(list_models())
    assert FAMILY_NAMES <= names
    assert {f"{f}_tiny" for f in FAMILY_NAMES} <= names
    assert {get_spec(n).family for n in names} == FAMILY_NAMES


def test_register_model_refuses_duplicates() -> None:
    defaults = get_spec("c3d_vll_tiny")
    with pytest.raises(ValueError, match="already registered"):

        @register_model(spec=defaults)
        def c3d_vll_tiny() -> torch.nn.Module:
            return torch.nn.Identity()


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        create_model("nope")


@pytest.mark.parametrize("name", SMALL)
def test_small_variant_forward_backward(name: str) -> None:
    d: VariantSpec = get_spec(name)
    kwargs: dict[str, Any] = {} if d.output == "embedding" else {"num_classes": 5}
    x = _input_for(name)

    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    torch.manual_seed(0)
    again = create_model(name, **kwargs)
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))  # same seed, same network

    model.train()
    out = model(x)
    if d.output == "embedding":
        assert out.ndim == 2 and out.shape[0] == 2
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2), atol=1e-4, rtol=0)
    elif d.aggregator == "last_steps_vote":
        assert out.shape == (2, x.shape[2], 5)
    else:
        assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    used = [g for g in grads if g is not None]
    # Training-only heads (attention_lstm's deep supervision) get no gradient from forward().
    assert len(used) >= len(grads) // 2
    assert all(torch.isfinite(g).all() for g in used)
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0  # reaches the input layer


def test_models_package_exports_registry() -> None:
    assert models.create_model is create_model


def test_builder_kwargs_reach_the_network_and_the_spec_sets_the_shape() -> None:
    # One builder shape: keyword-only network arguments pass through, the shape comes from the
    # spec (so a run that changes the clip shape changes the network and the sampler together).
    tsm = create_model("full_video_tiny", shift_div=4, num_classes=3)
    assert {m.shift_div for m in tsm.modules() if hasattr(m, "shift_div")} == {4}
    g3 = create_model("full_video_tiny", spec=get_spec("full_video_tiny").replace(segments=3))
    assert g3.num_clusters == 3
    c3d = create_model("c3d_vll_tiny", spec=get_spec("c3d_vll_tiny").replace(clip_len=8), fc_dim=32)
    assert isinstance(c3d, C3DVLL) and (c3d.clip_len, c3d.fc6.out_features) == (8, 32)
    ms3d = create_model("ms3d_tiny", spec=get_spec("ms3d_tiny").replace(pathways=(2, 3, 4)))
    assert isinstance(ms3d, MS3D) and ms3d.stem.pathway_sizes == (2, 3, 4)
    with pytest.raises(TypeError):
        create_model("full_video_tiny", num_clusters=3)  # the shape is the spec's, not a kwarg
