"""Model bundles: written atomically, verified by checksum, rebuilt from the manifest alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import create_model, get_spec
from models.bundle import BundleError, add_bundle_file, load_bundle, write_bundle
from models.fileio import atomic_write, atomic_write_bytes, sha256_file


def _bundle(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("c3d_vll_tiny", num_classes=3)
    bundle = write_bundle(
        tmp_path / "b",
        model=model,
        model_name="c3d_vll_tiny",
        model_kwargs={"num_classes": 3},
        family="c3d_vll",
        labels=["a", "b", "c"],
        spec=get_spec("c3d_vll_tiny"),
        config={"lr": 0.1},
        metrics={"top1": 0.5},
    )
    return model, bundle


def test_roundtrip_rebuilds_same_network(tmp_path: Path) -> None:
    model, bundle = _bundle(tmp_path)
    loaded = load_bundle(bundle.path)
    assert loaded.labels == ["a", "b", "c"]
    assert loaded.family == "c3d_vll"
    assert loaded.spec == get_spec("c3d_vll_tiny")
    d = loaded.spec
    x = torch.randn(2, 3, d.input_frames, *d.input_size)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.build_model()(x), model(x))
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["files"]["weights.safetensors"]["sha256"] == sha256_file(
        bundle.path / "weights.safetensors"
    )
    assert not list(bundle.path.glob("*.tmp")), "temp files left behind"


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _, bundle = _bundle(tmp_path)
    weights = bundle.path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fails its sha256 check"):
        load_bundle(bundle.path)


def test_missing_file_and_bad_version_are_refused(tmp_path: Path) -> None:
    _, bundle = _bundle(tmp_path)
    (bundle.path / "extra.bin").write_bytes(b"x")
    add_bundle_file(bundle.path, "extra.bin", kind="test")
    assert load_bundle(bundle.path).has("extra.bin")
    (bundle.path / "extra.bin").unlink()
    with pytest.raises(BundleError, match="extra.bin is missing"):
        load_bundle(bundle.path)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format 99 is not supported"):
        load_bundle(bundle.path)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nowhere")


def test_atomic_write_leaves_original_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def _fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, _fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
