"""Model bundles: written atomically, verified by checksum, rebuilt from the manifest alone."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch

from models import VariantSpec, create_model, fileio, get_spec
from models.bundle import BundleError, _from_format_1, add_bundle_file, load_bundle, write_bundle
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


def test_bundle_files_follow_the_umask_not_0600(tmp_path: Path) -> None:
    # A service running as another user (the Docker image) must be able to read a bundle.
    _, bundle = _bundle(tmp_path)
    for name in ("manifest.json", "weights.safetensors"):
        mode = stat.S_IMODE((bundle.path / name).stat().st_mode)
        assert mode == 0o666 & ~fileio._UMASK, f"{name} is {oct(mode)}"
        assert mode & stat.S_IRGRP, f"{name} is not group-readable ({oct(mode)})"


def test_stale_temp_files_are_removed_on_load_fresh_ones_kept(tmp_path: Path) -> None:
    _, bundle = _bundle(tmp_path)
    stale = bundle.path / ".repository.safetensors.abc123.tmp"
    fresh = bundle.path / ".manifest.json.def456.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    load_bundle(bundle.path)
    assert not stale.exists()
    assert fresh.exists(), "a temp file another process may still be writing was removed"


def test_format_1_manifest_is_read_as_the_same_spec(tmp_path: Path) -> None:
    # Format 1 stated the clip shape in the sampler kwargs (and again in the network kwargs).
    model, bundle = _bundle(tmp_path)
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    old = dict(manifest)
    del old["spec"]
    old["format_version"] = 1
    old["model"] = {"name": "c3d_vll_tiny", "kwargs": {"num_classes": 3, "clip_len": 16}}
    old["preprocessing"] = {
        "family": "c3d_vll",
        "input_size": [56, 56],
        "decode_size": [64, 64],
        "clip_len": 16,
        "mean": list(get_spec("c3d_vll_tiny").mean),
        "std": list(get_spec("c3d_vll_tiny").std),
        "sampler": "consecutive",
        "sampler_kwargs": {"clip_len": 16, "stride": 16},
        "aggregator": "majority_vote",
        "aggregator_kwargs": {},
        "output": "logits",
    }
    (bundle.path / "manifest.json").write_text(json.dumps(old))
    loaded = load_bundle(bundle.path)
    assert loaded.spec == get_spec("c3d_vll_tiny")
    assert loaded.model_kwargs == {"num_classes": 3}
    x = torch.randn(1, 3, 16, 56, 56)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.build_model()(x), model(x))


def test_format_1_ms3d_and_full_video_shapes_move_into_the_spec() -> None:
    ms3d = _from_format_1(
        {
            "format_version": 1,
            "model": {"name": "ms3d_tiny", "kwargs": {"pathway_sizes": [4, 8, 12]}},
            "preprocessing": {
                "family": "ms3d",
                "input_size": [64, 64],
                "clip_len": 24,
                "sampler": "pz",
                "sampler_kwargs": {"sizes": [4, 8, 12], "walks": 2},
            },
        }
    )
    assert ms3d["spec"]["pathways"] == [4, 8, 12]
    assert ms3d["spec"]["sampler_kwargs"] == {"walks": 2}
    assert "clip_len" not in ms3d["spec"] and ms3d["model"]["kwargs"] == {}
    fv = _from_format_1(
        {
            "format_version": 1,
            "model": {"name": "full_video_tiny", "kwargs": {"num_clusters": 6}},
            "preprocessing": {
                "family": "full_video",
                "input_size": [64, 64],
                "clip_len": 0,
                "sampler": "all",
                "sampler_kwargs": {"min_frames": 6},
            },
        }
    )
    assert fv["spec"]["segments"] == 6 and fv["spec"]["sampler_kwargs"] == {}
    assert fv["model"]["kwargs"] == {}


def test_spec_derived_values() -> None:
    c3d = get_spec("c3d_vll")
    assert c3d.decode_hw() == (128, 171) and c3d.crop() == (112, 112)
    tiny = get_spec("full_video_tiny")
    assert tiny.decode_hw() == (64, 64) and tiny.crop() is None
    assert tiny.sampler_args() == {"min_frames": 8} and tiny.input_frames == 0
    assert get_spec("ms3d").input_frames == 7 + 17 + 25
    assert VariantSpec.from_dict(c3d.to_dict()) == c3d
    with pytest.raises(ValueError, match="unknown variant spec keys"):
        VariantSpec.from_dict({**c3d.to_dict(), "stride": 3})
