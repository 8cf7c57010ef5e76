"""The demo bundles shipped in demo/bundles: intact, their ONNX equal to their weights, and
scoring what their manifests say on a freshly generated Move4Digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.bundle import ONNX_FILE, REPOSITORY_FILE, Bundle, load_bundle
from models.pipeline import decode_for, prepare_inputs, run_network
from models.repository import Repository
from service.quickstart import DEMO_BUNDLES, DEMO_VIDEOS, FAMILIES, shipped
from training.datasets import load_dataset
from training.evaluate import evaluate_videos
from training.synth import generate

NAMES = [f"{family}-move4digits" for family in FAMILIES]


def _bundle(name: str) -> Bundle:
    return load_bundle(DEMO_BUNDLES / name)  # verifies every checksum


@pytest.mark.parametrize("name", NAMES)
def test_shipped_bundle_is_intact_and_serving_sized(name: str) -> None:
    bundle = _bundle(name)
    assert bundle.has(ONNX_FILE)
    assert bundle.family == name.split("-")[0]
    if bundle.family == "ms3d":
        assert bundle.has(REPOSITORY_FILE)
    # Only what serving needs: no resume checkpoint, no stray temp files.
    assert not (bundle.path / "checkpoint.pt").exists()
    assert not list(bundle.path.glob(".*.tmp"))
    size = sum(p.stat().st_size for p in bundle.path.iterdir())
    assert size < 8_000_000, f"{name} is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("name", NAMES)
def test_shipped_onnx_matches_the_weights(name: str) -> None:
    pytest.importorskip("onnxruntime")
    from export.onnx import OnnxForward

    bundle = _bundle(name)
    model = bundle.build_model()
    onnx = OnnxForward(bundle.file(ONNX_FILE), threads=1)
    for video in sorted(DEMO_VIDEOS.glob("*.mp4")):
        frames, _ = decode_for(video, bundle.spec)
        inputs = prepare_inputs(frames, bundle.spec)
        with torch.no_grad():
            want = model(inputs)
        got = run_network(onnx, inputs)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_quickstart_finds_every_shipped_bundle() -> None:
    assert [b.name for b in shipped()] == NAMES
    assert len(list(DEMO_VIDEOS.glob("*.mp4"))) >= 1


@pytest.mark.slow
def test_shipped_bundles_score_their_manifest_on_fresh_move4digits(tmp_path: Path) -> None:
    # The same generator, look and seed as demo/train_bundles.sh's second stage, whose test
    # split the manifests' figures are on: a fresh copy of the data.
    data = tmp_path / "move4digits-varied"
    generate(data, classes="4", per_class=60, seed=0, style="varied")
    test = [(e.path, e.label) for e in load_dataset(data).test]
    torch.set_num_threads(2)
    for name in NAMES:
        bundle = _bundle(name)
        model = bundle.build_model()
        centres = gamma = None
        expected = bundle.metrics["top1"]
        if bundle.family == "ms3d":
            repo = Repository.load(bundle.file(REPOSITORY_FILE))
            centres, gamma = repo.centres_tensor(), math.inf
            # The served repository holds every class (held-out ones added after training).
            expected = bundle.metrics["all_classes_after_adding_top1"]
        with torch.no_grad():
            summary, _ = evaluate_videos(
                model,
                test,
                bundle.spec,
                len(bundle.labels),
                batch_size=16,
                max_inputs=bundle.eval_max_clips,
                centres=centres,
                gamma=gamma,
            )
        assert abs(summary["top1"] - expected) <= 0.02, (name, summary["top1"], expected)
