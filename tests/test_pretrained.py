"""``--pretrained``: ImageNet ResNet-18/50 (torchvision's and timm's key layout) into full_video
and VGG16 into attention_lstm, the refusals with their listings, and the manifest record.

torchvision's C extension does not load here, so the files are built from its model
definitions as its source states them (``torchvision/models/resnet.py``): ``conv1`` 7x7/2 and
``bn1``; per stage ``layerS.B.conv1``.. with ``bn1``..; BasicBlock two 3x3 convolutions,
Bottleneck 1x1, 3x3 (with the stride), 1x1 to 4x the width; ``downsample.0`` (1x1 conv) and
``downsample.1`` (BatchNorm) on a block that changes the stride or the width; ``fc``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_attention_lstm import VGG16_CONVS

from models.full_video import FullVideoNet
from models.registry import create_model
from training.config import Family, TrainConfig
from training.pretrained import load_pretrained, pretrained_path
from training.run import main as train_main
from training.synth import generate
from training.tasks import Task, make_task

# torchvision's ResNets: blocks per stage and whether the block is a Bottleneck.
RESNETS = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True)}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def resnet_convs(depth: int) -> list[tuple[str, str, int, int, int]]:
    """torchvision's ResNet convolutions in order: (conv name, its BatchNorm's name, out
    channels, in channels, kernel)."""
    layers, bottleneck = RESNETS[depth]
    expansion = 4 if bottleneck else 1
    convs = [("conv1", "bn1", 64, 3, 7)]
    inplanes = 64
    for stage, blocks in enumerate(layers, 1):
        planes = 64 * 2 ** (stage - 1)
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            if bottleneck:
                shapes = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                shapes = [(planes, inplanes, 3), (planes, planes, 3)]
            convs += [(f"{p}.conv{i}", f"{p}.bn{i}", *s) for i, s in enumerate(shapes, 1)]
            if b == 0 and (stage > 1 or inplanes != planes * expansion):
                convs.append(
                    (f"{p}.downsample.0", f"{p}.downsample.1", planes * expansion, inplanes, 1)
                )
            inplanes = planes * expansion
    return convs


def random_bn(gen: torch.Generator, channels: int) -> list[torch.Tensor]:
    """BatchNorm tensors in :data:`BN` order, random but well-conditioned."""
    return [
        torch.rand(channels, generator=gen) + 0.5,
        torch.randn(channels, generator=gen) * 0.1,
        torch.randn(channels, generator=gen) * 0.1,
        torch.rand(channels, generator=gen) + 0.5,
        torch.tensor(11),
    ]


def torchvision_resnet(depth: int, seed: int = 0, classes: int = 1000) -> dict[str, torch.Tensor]:
    """A random state dict with exactly torchvision's ``resnet<depth>()`` keys and shapes."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for conv, bn, cout, cin, k in resnet_convs(depth):
        state[f"{conv}.weight"] = (
            torch.randn(cout, cin, k, k, generator=gen) * (2 / (cin * k * k)) ** 0.5
        )
        state.update({f"{bn}.{n}": t for n, t in zip(BN, random_bn(gen, cout))})
    features = resnet_convs(depth)[-1][2]
    state["fc.weight"] = torch.randn(classes, features, generator=gen)
    state["fc.bias"] = torch.randn(classes, generator=gen)
    return state


def _ours(key: str) -> str:
    """full_video's name of a torchvision ResNet key: the stem is ``stem.0`` / ``stem.1``."""
    if key == "conv1.weight":
        return "stem.0.weight"
    return "stem.1." + key[len("bn1.") :] if key.startswith("bn1.") else key


def _task(family: Family, model: str, classes: int = 3, **kw: Any) -> Task:
    return make_task(
        TrainConfig(family=family, data="-", model=model, **kw), [str(i) for i in range(classes)]
    )


def _fresh(task: Task) -> torch.nn.Module:
    torch.manual_seed(5)
    return create_model(task.model_name, spec=task.spec(), **task.model_kwargs())


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# ------------------------------------------------------------------------ full_video ResNets


@pytest.mark.parametrize(
    ("depth", "variant", "suffix"),
    [
        (18, "full_video", ".pth"),
        (18, "full_video_tsm", ".safetensors"),
        (50, "full_video_r50", ".safetensors"),
    ],
)
def test_torchvision_resnet_loads_into_full_video(
    tmp_path: Path, depth: int, variant: str, suffix: str
) -> None:
    state = torchvision_resnet(depth)
    path = _save(state, tmp_path / f"resnet{depth}{suffix}")
    task = _task("full_video", variant)
    model = cast(FullVideoNet, _fresh(task))
    head = model.head.weight.detach().clone()
    record = load_pretrained(model, task, str(path))

    # torchvision's stem is our stem, the stages keep their names, fc is not ours
    own = model.state_dict()
    assert torch.equal(own["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(own["stem.1.running_var"], state["bn1.running_var"])
    last = f"layer4.1.conv{3 if depth == 50 else 2}.weight"
    assert torch.equal(own[last], state[last])
    for key in ("layer2.0.downsample.0.weight", "layer3.0.downsample.1.bias"):
        assert torch.equal(own[key], state[key])
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[_ours(key)], value), key
    # the classifier is new: its initialisation stays
    assert torch.equal(model.head.weight, head)
    assert record == {
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "loaded": len(state) - 2,
        "fresh_modules": ["head"],
        "ignored": ["fc.bias", "fc.weight"],
    }
    assert len(own) == len(state)  # one tensor of ours per tensor of theirs, fc for head


def test_timm_layout_without_batch_norm_counters_loads(tmp_path: Path) -> None:
    """timm's plain resnet18/resnet50 name every tensor as torchvision does; files that leave
    out BatchNorm's num_batches_tracked (older torchvision ones too) still load."""
    state = {
        k: v for k, v in torchvision_resnet(18, seed=2).items() if "num_batches_tracked" not in k
    }
    path = _save(state, tmp_path / "resnet18.a1_in1k.safetensors")
    task = _task("full_video", "full_video")
    model = cast(FullVideoNet, _fresh(task))
    record = load_pretrained(model, task, str(path))
    assert record["loaded"] == len(state) - 2
    own = model.state_dict()
    assert int(own["stem.1.num_batches_tracked"]) == 0
    assert torch.equal(own["layer1.1.bn2.weight"], state["layer1.1.bn2.weight"])


def test_a_resnet_that_does_not_fit_is_refused_with_the_keys_listed(tmp_path: Path) -> None:
    task = _task("full_video", "full_video")
    model = _fresh(task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r50 = _save(torchvision_resnet(50), tmp_path / "r50.safetensors")
    with pytest.raises(SystemExit) as err:
        load_pretrained(model, task, str(r50))
    text = str(err.value)
    assert text.startswith(
        f"--pretrained {r50}: full_video takes an ImageNet ResNet-18 or ResNet-50"
    )
    extra = set(torchvision_resnet(50)) - set(
        torchvision_resnet(18)
    )  # conv3, bn3, layer1 downsample...
    assert f"not in the network ({len(extra)}): " in text
    assert "missing from the file (" not in text  # every ResNet-18 key has a ResNet-50 namesake
    assert (
        "shape (file vs network)" in text
        and "layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3)" in text
    )
    for key, value in model.state_dict().items():  # nothing copied
        assert torch.equal(value, before[key]), key

    # a missing key is named, in the network's names
    state = torchvision_resnet(18)
    del state["layer3.1.bn2.running_mean"]
    with pytest.raises(SystemExit, match=r"missing from the file \(1\): layer3.1.bn2.running_mean"):
        load_pretrained(model, task, str(_save(state, tmp_path / "holey.pth")))
    # the CPU variant is narrower: shapes differ from the stem on
    tiny = _task("full_video", "full_video_tiny")
    with pytest.raises(SystemExit, match=r"stem.0.weight \(64, 3, 7, 7\) vs \(16, 3, 7, 7\)"):
        load_pretrained(_fresh(tiny), tiny, str(tmp_path / "holey.pth"))
    # timm's deep-stem variants (resnet50d...) are another architecture, said so
    deep = {k: v for k, v in torchvision_resnet(18).items() if k != "conv1.weight"}
    deep["conv1.0.weight"] = torch.zeros(32, 3, 3, 3)
    with pytest.raises(SystemExit, match="deep-stem ResNet"):
        load_pretrained(model, task, str(_save(deep, tmp_path / "deep.pth")))


class _Marker:
    """Unpickling this would record it: a refusal must leave ``LOADED`` empty."""

    LOADED: list[str] = []

    def __setstate__(self, state: dict[str, Any]) -> None:
        _Marker.LOADED.append("unpickled")


def test_unsafe_missing_and_unfitting_files_are_refused(tmp_path: Path) -> None:
    task = _task("full_video", "full_video")
    model = _fresh(task)
    unsafe = tmp_path / "unsafe.pth"
    marker = _Marker()
    marker.__dict__["x"] = 1
    torch.save({"conv1.weight": torch.zeros(1), "extra": marker}, unsafe)
    with pytest.raises(SystemExit, match=r"test_pretrained._Marker\); refusing to unpickle"):
        load_pretrained(model, task, str(unsafe))
    assert _Marker.LOADED == []
    with pytest.raises(SystemExit, match="weights file not found"):
        load_pretrained(model, task, str(tmp_path / "nope.pth"))
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(SystemExit, match="does not hold a plain state dict"):
        load_pretrained(model, task, str(tmp_path / "list.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(SystemExit, match="cannot be read safely|not a PyTorch file"):
        load_pretrained(model, task, str(tmp_path / "junk.pth"))
    c3d = _task("c3d_vll", "c3d_vll_tiny")
    with pytest.raises(SystemExit, match="c3d_vll has no standard ImageNet backbone"):
        load_pretrained(_fresh(c3d), c3d, str(_save(torchvision_resnet(18), tmp_path / "r18.pth")))


# ------------------------------------------------------------------------ attention_lstm VGG16


def test_vgg16_loads_into_attention_lstm_through_pretrained(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    state = {}
    for idx, cin, cout in VGG16_CONVS:
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen)
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=gen)
    state["classifier.6.bias"] = torch.randn(5, generator=gen)  # stands in for the fc layers
    path = _save(state, tmp_path / "vgg16.safetensors")
    # the CPU variant at full VGG width, plain VGG16 (taps pool3, pool4: conv layers up to 21)
    task = _task(
        "attention_lstm",
        "attention_lstm_tiny",
        model_kwargs={"vgg_width": 1.0, "vgg_batch_norm": False},
    )
    model = _fresh(task)
    record = load_pretrained(model, task, str(path))
    for idx, _, _ in VGG16_CONVS[:10]:
        assert torch.equal(
            model.state_dict()[f"preconv.features.{idx}.weight"], state[f"features.{idx}.weight"]
        )
    assert record["loaded"] == 20
    assert record["fresh_modules"] == ["branches", "ds_heads", "head", "lstm"]
    deeper = [f"features.{i}.{n}" for i in (24, 26, 28) for n in ("bias", "weight")]
    assert record["ignored"] == sorted(["classifier.6.bias", *deeper])
    # the narrow default VGG cannot take full-width weights
    narrow = _task("attention_lstm", "attention_lstm_tiny")
    with pytest.raises(SystemExit, match=r"features.0.weight \(64, 3, 3, 3\) vs \(8, 3, 3, 3\)"):
        load_pretrained(_fresh(narrow), narrow, str(path))


def test_vgg_weights_is_a_deprecated_spelling_of_pretrained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="training"):
        assert pretrained_path(TrainConfig(family="attention_lstm", vgg_weights="v.pth")) == "v.pth"
    assert "--vgg-weights is deprecated" in caplog.text
    assert pretrained_path(TrainConfig(pretrained="p.pth", vgg_weights="p.pth")) == "p.pth"
    assert pretrained_path(TrainConfig()) == ""
    with pytest.raises(SystemExit, match="disagree"):
        pretrained_path(TrainConfig(pretrained="p.pth", vgg_weights="v.pth"))
    with pytest.raises(SystemExit, match="both set the starting weights"):
        pretrained_path(TrainConfig(pretrained="p.pth", init_from="store/b"))


# ------------------------------------------------------------------------ a run, end to end


@pytest.mark.slow
def test_a_run_records_the_pretrained_file_and_starts_from_it(tmp_path: Path) -> None:
    data = generate(tmp_path / "m4d", classes="4", per_class=2, seed=1, frames=8, progress=False)
    state = torchvision_resnet(18, seed=3)
    path = _save(state, tmp_path / "resnet18.pth")
    common = [
        "--family",
        "full_video",
        "--model",
        "full_video",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "store"),
    ]
    common += ["--epochs", "1", "--batch-size", "2", "--limit-train", "2", "--limit-test", "1"]
    common += ["--workers", "0", "--threads", "2", "--progress", "false", "--augment", "false"]
    # lr 0: the trained weights are the file's (BatchNorm statistics move in train mode)
    assert train_main([*common, "--name", "r18", "--pretrained", str(path), "--lr", "0"]) == 0
    manifest = json.loads((tmp_path / "store" / "r18" / "manifest.json").read_text())
    record = manifest["training"]["pretrained"]
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["file"] == str(path) and record["fresh_modules"] == ["head"]
    assert (
        manifest["config"]["pretrained"] == str(path) and manifest["training"]["init_from"] is None
    )
    weights = load_file(str(tmp_path / "store" / "r18" / "weights.safetensors"))
    assert torch.equal(weights["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(weights["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])

    # a file that does not fit stops the run before it trains: no bundle
    r50 = _save(torchvision_resnet(50), tmp_path / "r50.safetensors")
    with pytest.raises(SystemExit, match="not in the network"):
        train_main([*common, "--name", "bad", "--pretrained", str(r50)])
    assert not (tmp_path / "store" / "bad" / "manifest.json").exists()
