"""``python -m training.convert mmaction2``: an MMAction2 TSM checkpoint becomes a full_video
bundle that serves; parity of its logits with the real MMAction2 1.2.0 (when installed: the
``parity`` extra, see pyproject.toml); the refusals.

Checkpoints without MMAction2 are written in its key layout as its ``ResNetTSM`` names it
(``ConvModule``s ``convK.conv`` / ``convK.bn``, the temporal shift wrapping every block's
``conv1.conv`` as ``.net``, ``downsample.conv`` / ``downsample.bn``, ``cls_head.fc_cls``) from
torchvision's ResNet layout (``tests/test_pretrained.py``), the way MMAction2's own
``ResNetTSM.load_original_weights`` maps the two.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from media import write_video
from safetensors.torch import load_file
from test_pretrained import BN, random_bn, resnet_convs

from models.bundle import WEIGHTS, load_bundle
from models.pipeline import decode_for, predict_frames
from service import Settings, create_app
from training.convert import ConversionError, convert_mmaction2, main, read_labels

MEAN_255 = [123.675, 116.28, 103.53]
STD_255 = [58.395, 57.12, 57.375]

# An mmengine config dump (Config.pretty_text) of a Kinetics-400 TSM-R50, 8 segments.
CONFIG = """\
model = dict(
    backbone=dict(
        depth={depth},
        norm_eval=False,
        num_segments={segments},
        pretrained='torchvision://resnet50',{backbone_extra}
        shift_div=8,
        type='{backbone}'),
    cls_head=dict(
        average_clips='prob',
        consensus=dict(dim=1, type='AvgConsensus'),
        dropout_ratio=0.5,
        in_channels=2048,
        init_std=0.001,
        is_shift=True,
        num_classes={classes},
        num_segments={segments},
        spatial_type='avg',
        type='TSMHead'),
    data_preprocessor=dict(
        format_shape='NCHW',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        type='ActionDataPreprocessor'),
    type='Recognizer2D')
test_pipeline = [
    dict(io_backend='disk', type='DecordInit'),
    dict(clip_len=1, frame_interval=1, num_clips=8, test_mode=True, type='SampleFrames'),
    dict(type='DecordDecode'),
    dict(scale=(-1, 256), type='Resize'),
    dict(crop_size=224, type='CenterCrop'),
    dict(input_format='NCHW', type='FormatShape'),
    dict(type='PackActionInputs'),
]
work_dir = './work_dirs/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb'
"""


def config_text(
    *,
    depth: int = 50,
    segments: int = 8,
    classes: int = 5,
    backbone: str = "ResNetTSM",
    backbone_extra: str = "",
) -> str:
    return CONFIG.format(
        depth=depth,
        segments=segments,
        classes=classes,
        backbone=backbone,
        backbone_extra=f"\n        {backbone_extra}," if backbone_extra else "",
    )


def _mm_names(conv: str, bn: str, shift: bool) -> tuple[str, str]:
    """MMAction2's (conv weight, BatchNorm prefix) for a torchvision (conv, bn) pair."""
    if conv.endswith(".downsample.0"):
        block = conv.removesuffix(".0")
        return f"backbone.{block}.conv.weight", f"backbone.{block}.bn"
    net = ".net" if shift and conv.startswith("layer") and conv.endswith(".conv1") else ""
    return f"backbone.{conv}.conv{net}.weight", f"backbone.{conv}.bn"


def mmaction2_tsm(
    depth: int = 50, classes: int = 5, *, seed: int = 0, shift: bool = True, keys_only: bool = False
) -> dict[str, torch.Tensor]:
    """A random ``ResNetTSM`` + ``TSMHead`` state dict in MMAction2's keys. The last BatchNorm
    of every residual branch is scaled down so that activations stay moderate through 16
    blocks (random weights otherwise grow them to logits in the thousands). ``keys_only``:
    one-element tensors but the classifier (for refusals decided on the keys)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    convs = resnet_convs(depth)
    last_bn = {c[1] for c in convs if c[1].endswith(".bn3" if depth >= 50 else ".bn2")}
    for conv, bn, cout, cin, k in convs:
        conv_key, bn_key = _mm_names(conv, bn, shift)
        if keys_only:
            state[conv_key] = torch.zeros(1)
            state.update({f"{bn_key}.{n}": torch.zeros(1) for n in BN})
            continue
        state[conv_key] = torch.randn(cout, cin, k, k, generator=gen) * (2 / (cin * k * k)) ** 0.5
        values = random_bn(gen, cout)
        if bn in last_bn:
            values[0] = values[0] * 0.2
        state.update({f"{bn_key}.{n}": t for n, t in zip(BN, values)})
    features = convs[-1][2]
    state["cls_head.fc_cls.weight"] = torch.randn(classes, features, generator=gen) * 0.005
    state["cls_head.fc_cls.bias"] = torch.randn(classes, generator=gen) * 0.1
    return state


def save_checkpoint(
    path: Path, state: dict[str, torch.Tensor], cfg: str | None = None, **meta: Any
) -> Path:
    """The file MMAction2's runner saves once published: ``{"meta", "state_dict"}``, the meta
    holding the config dump and plain scalars (a numpy seed among them)."""
    full = {"seed": np.int64(0), "mmengine_version": "0.10.7", "epoch": 50, **meta}
    if cfg is not None:
        full["cfg"] = cfg
    torch.save({"meta": full, "state_dict": state}, path)
    return path


def labels_file(path: Path, count: int) -> Path:
    path.write_text("".join(f"class {i}\n" for i in range(count)) + "\n")
    return path


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mm")
    ckpt = save_checkpoint(root / "tsm_r50.pth", mmaction2_tsm(50, 5), config_text())
    return ckpt, labels_file(root / "labels.txt", 5)


# ------------------------------------------------------------------- the bundle it writes


def test_the_bundle_holds_the_network_labels_and_preprocessing(
    r50_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, labels = r50_checkpoint
    state = torch.load(ckpt, weights_only=False)["state_dict"]  # the test's own file
    assert (
        main(
            ["mmaction2", "--checkpoint", str(ckpt), "--labels", str(labels)]
            + ["--out", str(tmp_path), "--name", "tsm"]
        )
        == 0
    )
    bundle = load_bundle(tmp_path / "tsm")
    assert bundle.family == "full_video" and bundle.model_name == "full_video_r50"
    assert bundle.model_kwargs == {"num_classes": 5, "clustering": "cumulative", "shift_div": 8}
    assert bundle.labels == [f"class {i}" for i in range(5)]
    spec = bundle.spec
    # MMAction2's 0-255 statistics on the [0, 1] scale: ImageNet's
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert spec.input_size == (224, 224) and spec.decode_size == (256, 340)
    assert spec.sampler == "all" and spec.segments == 8 and spec.aggregator == "mean_prob"
    source = bundle.manifest["converted_from"]
    assert source["framework"] == "mmaction2" and source["trained_segments"] == 8
    assert source["preprocessing"] == {
        "mean_0_255": MEAN_255,
        "std_0_255": STD_255,
        "resize_shorter_side": 256,
        "centre_crop": 224,
    }
    import hashlib

    assert source["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert source["assumed"] == [] and source["meta"]["mmengine_version"] == "0.10.7"
    assert source["meta"]["seed"] == 0  # a numpy scalar in meta is read, as a number

    weights = load_file(str(bundle.file(WEIGHTS)))
    pairs = {
        "stem.0.weight": "backbone.conv1.conv.weight",
        "stem.1.running_var": "backbone.conv1.bn.running_var",
        "layer1.0.conv1.weight": "backbone.layer1.0.conv1.conv.net.weight",  # shift wraps conv1
        "layer1.0.conv2.weight": "backbone.layer1.0.conv2.conv.weight",
        "layer3.2.bn2.running_mean": "backbone.layer3.2.conv2.bn.running_mean",
        "layer4.2.bn3.weight": "backbone.layer4.2.conv3.bn.weight",
        "layer2.0.downsample.0.weight": "backbone.layer2.0.downsample.conv.weight",
        "layer2.0.downsample.1.bias": "backbone.layer2.0.downsample.bn.bias",
        "head.weight": "cls_head.fc_cls.weight",
        "head.bias": "cls_head.fc_cls.bias",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(weights[ours], state[theirs]), ours
    assert len(weights) == len(state)  # the shift has no parameters: one tensor for one


def test_a_checkpoint_without_config_converts_on_tsm_defaults(tmp_path: Path) -> None:
    ckpt = tmp_path / "bare.pth"
    torch.save(mmaction2_tsm(50, 3, seed=1), ckpt)  # a bare state dict
    bundle = convert_mmaction2(
        ckpt, labels_file(tmp_path / "l.txt", 3), tmp_path, "b", clustering="slope"
    )
    source = bundle.manifest["converted_from"]
    assert source["trained_segments"] is None and bundle.spec.segments == 8
    assert "segments 8" in source["assumed"] and bundle.model_kwargs["clustering"] == "slope"
    other = convert_mmaction2(ckpt, tmp_path / "l.txt", tmp_path, "g4", num_clusters=4)
    assert other.spec.segments == 4  # nothing recorded to contradict it


def test_resnet18_tsm_with_stored_normalisation_converts(tmp_path: Path) -> None:
    """A ResNet-18 TSM becomes a ``full_video`` (ResNet-18) bundle; normalisation kept as
    buffers in the state dict (unpublished checkpoints) wins; all-zero non-local flags are
    no non-local blocks."""
    state = mmaction2_tsm(18, 3, seed=2)
    state["data_preprocessor.mean"] = torch.tensor([100.0, 110.0, 120.0]).view(3, 1, 1)
    state["data_preprocessor.std"] = torch.tensor([50.0, 51.0, 60.0]).view(3, 1, 1)
    cfg = config_text(
        depth=18, classes=3, backbone_extra="non_local=((0, 0), (0, 0), (0, 0), (0, 0))"
    )
    ckpt = save_checkpoint(tmp_path / "r18.pth", state, cfg)
    bundle = convert_mmaction2(ckpt, labels_file(tmp_path / "l.txt", 3), tmp_path, "r18")
    assert bundle.model_name == "full_video"
    assert bundle.spec.mean == pytest.approx((100 / 255, 110 / 255, 120 / 255))
    assert bundle.spec.std == pytest.approx((50 / 255, 51 / 255, 60 / 255))
    weights = load_file(str(bundle.file(WEIGHTS)))
    assert torch.equal(
        weights["layer4.1.conv2.weight"], state["backbone.layer4.1.conv2.conv.weight"]
    )
    assert torch.equal(
        weights["layer1.1.conv1.weight"], state["backbone.layer1.1.conv1.conv.net.weight"]
    )


# ----------------------------------------------------------------------------- refusals


def _refused(tmp_path: Path, match: str, ckpt: Path, labels: Path, **kw: Any) -> None:
    with pytest.raises(ConversionError, match=match):
        convert_mmaction2(ckpt, labels, tmp_path / "store", "x", **kw)
    assert not (tmp_path / "store" / "x" / "manifest.json").exists()


def _keys(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**mmaction2_tsm(50, 5, keys_only=True), **changes}


# (what, state, config, labels, convert kwargs, the refusal)
REFUSALS: list[tuple[str, Any, dict[str, Any] | None, int, dict[str, Any], str]] = [
    ("R101", lambda: mmaction2_tsm(101, 5, keys_only=True), {}, 5, {},
     "ResNet-101 TSM; full_video has ResNet-18 and ResNet-50"),
    ("TSN weights", lambda: mmaction2_tsm(50, 5, shift=False, keys_only=True), {}, 5, {},
     "no temporal shift .*a TSN ResNet, not TSM"),
    ("TSN config", _keys, {"backbone": "ResNet"}, 5, {}, "backbone.type='ResNet'"),
    ("MobileNetV2", lambda: {"backbone.conv1.conv.weight": torch.zeros(1)},
     {"backbone": "MobileNetV2TSM"}, 5, {}, "backbone.type='MobileNetV2TSM'"),
    ("non-local", _keys, {"backbone_extra": "non_local=((0, 0, 0), (1, 0, 1, 0), (0, 0), (0,))"},
     5, {}, "non-local blocks"),
    ("temporal pool", _keys, {"backbone_extra": "temporal_pool=True"}, 5, {},
     "backbone.temporal_pool=True"),
    ("depth", _keys, {"depth": 101}, 5, {}, r"backbone.depth \(the weights say\)=101"),
    ("segments", _keys, {"segments": 16}, 5, {"num_clusters": 8},
     "trained on 16 segments; --num-clusters 8"),
    ("labels", _keys, {}, 4, {}, "lists 4 labels; the checkpoint's classifier has 5"),
    ("no head", lambda: {k: v for k, v in _keys().items() if "cls_head" not in k}, {}, 5, {},
     "no cls_head.fc_cls.weight"),
    # shapes that do not fit: listed by the shared all-or-nothing load, in network order
    ("shapes", lambda: _keys(**{"cls_head.fc_cls.weight": torch.zeros(5, 2048)}), {}, 5, {},
     r"shape \(file vs network\) \(\d+\): stem.0.weight \(1,\) vs \(64, 3, 7, 7\)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "cfg", "labels", "kwargs", "match"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_other_architectures_and_mismatches_are_refused(
    tmp_path: Path, state: Any, cfg: dict[str, Any], labels: int, kwargs: dict[str, Any], match: str
) -> None:
    ckpt = save_checkpoint(tmp_path / "c.pth", state(), config_text(**cfg))
    _refused(tmp_path, match, ckpt, labels_file(tmp_path / "l.txt", labels), **kwargs)


def test_files_that_need_unpickling_are_refused_unread(tmp_path: Path) -> None:
    from test_pretrained import _Marker

    marker = _Marker()
    marker.__dict__["x"] = 1
    ckpt = tmp_path / "training.pth"
    torch.save({"state_dict": {}, "meta": {}, "message_hub": {"log": marker}}, ckpt)
    _refused(
        tmp_path,
        r"test_pretrained._Marker\); refusing to unpickle.*publish",
        ckpt,
        tmp_path / "l.txt",
    )
    assert _Marker.LOADED == []


def test_labels_are_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "k400.txt"
    path.write_text("abseiling\r\nair drumming \n  answering questions\n\n")
    assert read_labels(path) == ["abseiling", "air drumming", "answering questions"]
    path.write_text("a\n\nb\n")
    with pytest.raises(ConversionError, match="line 2 is blank"):
        read_labels(path)
    path.write_text("a\nb\na\n")
    with pytest.raises(ConversionError, match="'a' on line 3 repeats line 1"):
        read_labels(path)


def test_cli_refuses_an_existing_bundle_with_a_message(
    r50_checkpoint: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, labels = r50_checkpoint
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "manifest.json").write_text("{}")
    args = ["mmaction2", "--checkpoint", str(ckpt), "--labels", str(labels), "--out", str(tmp_path)]
    assert main([*args, "--name", "taken"]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a clustering the bundle cannot run
        main([*args, "--name", "n", "--clustering", "none"])


# ------------------------------------------------------------------------------ serving


@pytest.mark.slow
def test_the_service_answers_with_a_converted_bundle(
    r50_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    ckpt, labels = r50_checkpoint
    store = tmp_path / "store"
    convert_mmaction2(ckpt, labels, store, "tsm-k400")
    bundle = load_bundle(store / "tsm-k400")
    video = tmp_path / "clip.mp4"
    write_video(video, n=12, height=96, width=128)
    # the whole video in one forward pass: the reference for the service's streamed path
    frames, _ = decode_for(video, bundle.spec)
    expected = predict_frames(bundle.build_model(), frames, bundle.spec).scores
    settings = Settings(
        store=store,
        default_model="tsm-k400",
        backend="torch",
        load_in_background=False,
        upload_dir=tmp_path / "uploads",
        compute_threads=2,
    )
    with TestClient(create_app(settings)) as client:
        models = client.get("/models").json()
        assert [m["name"] for m in models["models"]] == ["tsm-k400"]
        with video.open("rb") as fh:
            response = client.post("/recognize", files={"file": ("clip.mp4", fh, "video/mp4")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tsm-k400" and body["family"] == "full_video"
    assert body["frames"] == 12 and body["clips"] == 1
    order = expected.order[:5].tolist()
    assert [t["label"] for t in body["top5"]] == [bundle.labels[i] for i in order]
    for top, index in zip(body["top5"], order):
        assert top["score"] == pytest.approx(float(expected.scores[index]), abs=1e-5)
    # random weights of a sane scale: five distinct, non-degenerate probabilities
    assert 0.2 < body["top5"][0]["score"] < 0.99 and body["top5"][4]["score"] > 1e-4


# --------------------------------------------------------------- parity with MMAction2 1.2.0


@pytest.fixture(scope="module")
def mmaction() -> Iterator[types.ModuleType]:
    """MMAction2's model registry, or a skip. Its 1.2.0 wheel lacks
    ``mmaction/models/localizers/drn/`` (upstream issue #2714): stand-ins for those two modules
    let ``mmaction.models`` import (DRN is never built here). CI sets
    ``ACTREC_REQUIRE_MMACTION2``: there a missing MMAction2 fails instead of skipping."""
    if os.environ.get("ACTREC_REQUIRE_MMACTION2"):
        importlib.import_module("mmengine")
        importlib.import_module("mmaction")
    pytest.importorskip("mmengine", reason="MMAction2 parity needs the parity extra")
    stubs = {
        "mmaction.models.localizers.drn": types.ModuleType("mmaction.models.localizers.drn"),
        "mmaction.models.localizers.drn.drn": types.ModuleType(
            "mmaction.models.localizers.drn.drn"
        ),
    }
    stubs["mmaction.models.localizers.drn.drn"].DRN = type("DRN", (), {})  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stubs.items():
            if name not in sys.modules:
                mp.setitem(sys.modules, name, module)
        registry = pytest.importorskip("mmaction.registry", reason="needs mmaction2==1.2.0")
        from mmaction.utils import register_all_modules

        register_all_modules()
        yield registry


@pytest.mark.slow
def test_logits_equal_mmaction2_on_the_same_eight_frames(
    mmaction: types.ModuleType, tmp_path: Path
) -> None:
    from mmengine.config import Config
    from mmengine.runner.checkpoint import save_checkpoint as mm_save
    from mmengine.runner.checkpoint import weights_to_cpu

    cfg = Config.fromstring(config_text(classes=400), file_format=".py")
    cfg.model.backbone.update(pretrained=None, pretrained2d=False)
    torch.manual_seed(0)
    model = mmaction.MODELS.build(cfg.model)
    model.init_weights()
    gen = torch.Generator().manual_seed(1)
    # Random BatchNorm statistics: first each layer's statistics of a random batch (so that
    # activations keep a sane scale through 16 blocks), then perturbed per channel.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
        m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 8, 3, 224, 224, generator=gen), mode="tensor", stage="head")
    for m in bns:
        mean, var = cast(torch.Tensor, m.running_mean), cast(torch.Tensor, m.running_var)
        mean += torch.randn(m.num_features, generator=gen) * 0.1 * var.sqrt()
        var *= torch.rand(m.num_features, generator=gen) * 0.5 + 0.75
    model.cls_head.fc_cls.weight.data = torch.randn(400, 2048, generator=gen) * 0.05
    model.cls_head.fc_cls.bias.data = torch.randn(400, generator=gen) * 0.1
    model.eval()
    ckpt = tmp_path / "tsm_r50_k400.pth"
    mm_save(
        {
            "meta": {"cfg": cfg.pretty_text, "seed": 0, "mmengine_version": "0.10.7"},
            "state_dict": weights_to_cpu(model.state_dict()),
        },
        str(ckpt),
    )
    labels = labels_file(tmp_path / "label_map_k400.txt", 400)

    x = torch.randn(1, 8, 3, 224, 224, generator=gen)  # normalised, (N, segments, C, H, W)
    with torch.no_grad():
        theirs = model(x, mode="tensor", stage="head")
    assert theirs.shape == (1, 400) and 1 < float(theirs.std()) < 100  # a meaningful scale

    uniform = convert_mmaction2(ckpt, labels, tmp_path, "uniform", clustering="uniform")
    assert uniform.spec.segments == 8  # g = 8 uniform clusters of 8 frames: one frame each
    with torch.no_grad():
        ours = uniform.build_model()(x.transpose(1, 2))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    # The default bundle clusters cumulatively; with T = g every frame is its own cluster
    # too (exactly g non-empty clusters), so it answers the same.
    default = convert_mmaction2(ckpt, labels, tmp_path, "default")
    with torch.no_grad():
        ours = default.build_model()(x.transpose(1, 2))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert (
        json.loads((tmp_path / "default" / "manifest.json").read_text())["labels"][399]
        == "class 399"
    )
