"""int8 export: model.int8.onnx calibrated on the training videos, checked by top-1 agreement
with model.onnx on the test videos, recorded in the manifest, refused when the agreement
falls short; full_video's clustering node kept float; the service serving it as
onnxruntime-int8."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto

from export.onnx import CLUSTER_OP, INT8_FILE, ExportError, OnnxForward, main
from export.quantize import export_int8
from models.bundle import ONNX_FILE, Bundle, load_bundle
from models.fileio import sha256_file
from models.pipeline import decode_for, predict_frames
from service import Settings, create_app
from service.backends import (
    INT8_BACKEND,
    BackendUnavailable,
    Offer,
    choose_backend,
    load_backend,
)
from training.datasets import load_dataset
from training.synth import generate

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "bundles"
C3D = "c3d_vll-move4digits"
FULL = "full_video-move4digits"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _copy(name: str, directory: Path) -> Path:
    target = directory / name
    shutil.copytree(DEMO / name, target, ignore=shutil.ignore_patterns("checkpoint.pt"))
    return target


_DATA: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _demo_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fresh copy of the data the demo bundles were fine-tuned on (the second stage of
    demo/train_bundles.sh: the varied look, 60 videos per class, seed 0), so the
    calibration and test lists are the bundles' own; a clean checkout has no data/."""
    data = tmp_path_factory.mktemp("data") / "move4digits-varied"
    generate(data, classes="4", per_class=60, seed=0, style="varied", progress=False)
    _DATA[:] = [data]


def _data(bundle: Path | Bundle) -> Path:
    config = (bundle if isinstance(bundle, Bundle) else load_bundle(bundle)).config
    assert Path(config["data"]).name == _DATA[0].name  # the bundles' dataset
    return _DATA[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the demo c3d_vll and full_video bundles, each quantized once."""
    root = tmp_path_factory.mktemp("store")
    c3d = _copy(C3D, root)
    # Through the command line: re-exports model.onnx, then quantizes it.
    argv = ["--bundle", str(c3d), "--quantize", "int8", "--data", str(_data(c3d))]
    assert main([*argv, "--calibration-videos", "4", "--test-videos", "8"]) == 0
    full = _copy(FULL, root)
    export_int8(full, data=_data(full), calibration_videos=4, test_videos=8)
    return root


def _test_videos(bundle: Bundle, count: int) -> list[tuple[Path, str]]:
    splits = load_dataset(_data(bundle), split=1)
    entries = splits.test[:: max(1, len(splits.test) // count)][:count]
    return [(e.path, splits.classes[e.label]) for e in entries]


def test_int8_file_is_recorded_with_its_agreement(store: Path) -> None:
    bundle = load_bundle(store / C3D)
    info = bundle.file_info(INT8_FILE)
    assert info["sha256"] == sha256_file(bundle.path / INT8_FILE)
    assert info["precision"] == "int8" and info["quant_format"] == "QDQ"
    assert info["source"] == ONNX_FILE
    assert info["source_sha256"] == bundle.file_info(ONNX_FILE)["sha256"]
    assert info["calibration"]["videos"] == 4 and info["calibration"]["inputs"] >= 4
    agreement = info["agreement"]
    assert agreement["videos"] == 8 and agreement["split"] == "test"
    assert agreement["top1_agreement"] >= agreement["min_agreement"] == 0.99
    assert agreement["fp32_top1"] - agreement["int8_top1"] <= agreement["max_accuracy_drop"]
    # The weights of every Conv and Gemm are int8, dequantized in the graph.
    graph = onnx.load(str(bundle.path / INT8_FILE)).graph
    int8_weights = {i.name for i in graph.initializer if i.data_type == TensorProto.INT8}
    dequantized = {n.output[0] for n in graph.node if n.input[0] in int8_weights}
    compute = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert compute and all(n.input[1] in dequantized for n in compute)


def test_int8_answers_agree_with_fp32_in_memory(store: Path) -> None:
    """Recomputed on other test videos and by the in-memory path, not the export's own."""
    bundle = load_bundle(store / C3D)
    fp32 = OnnxForward(bundle.file(ONNX_FILE), threads=1)
    int8 = OnnxForward(bundle.file(INT8_FILE), threads=1)
    same = 0
    videos = _test_videos(bundle, 6)
    for path, _ in videos:
        frames, _ = decode_for(path, bundle.spec)
        a = predict_frames(fp32, frames, bundle.spec)
        b = predict_frames(int8, frames, bundle.spec)
        assert not torch.equal(a.outputs, b.outputs)  # it does compute something else
        same += a.scores.label == b.scores.label
    assert same == len(videos)


def test_full_video_keeps_its_cluster_node_float(store: Path) -> None:
    bundle = load_bundle(store / FULL)
    proto = onnx.load(str(bundle.path / INT8_FILE))
    clusters = [n for n in proto.graph.node if n.op_type == CLUSTER_OP]
    assert len(clusters) == 1 and [f.name for f in proto.functions] == [CLUSTER_OP]
    producers = {o: n for n in proto.graph.node for o in n.output}
    assert producers[clusters[0].input[0]].op_type != "DequantizeLinear"
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert bundle.file_info(INT8_FILE)["custom_ops"][0]["op"] == CLUSTER_OP
    assert bundle.file_info(INT8_FILE)["agreement"]["top1_agreement"] >= 0.99


def test_refused_when_agreement_falls_short(tmp_path: Path) -> None:
    bundle = _copy(C3D, tmp_path)
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(ExportError, match=r"agrees with fp32 on .* not written"):
        export_int8(bundle, data=_data(bundle), calibration_videos=2, test_videos=4,
                    min_agreement=1.01)  # fmt: skip
    assert not (bundle / INT8_FILE).exists()
    assert (bundle / "manifest.json").read_text() == before
    assert not load_bundle(bundle).has(INT8_FILE)


def test_without_a_dataset_it_says_so(tmp_path: Path) -> None:
    bundle = _copy(C3D, tmp_path)
    with pytest.raises(ExportError, match="--data"):
        export_int8(bundle, data=tmp_path / "nowhere")


def test_choosing_int8() -> None:
    offer = Offer(onnx=True, plan=True, onnxruntime=True, tensorrt=True, int8=True)
    assert choose_backend("auto", offer, "int8") == INT8_BACKEND
    assert choose_backend("onnxruntime", offer, "int8") == INT8_BACKEND
    assert choose_backend("auto", offer) == "tensorrt"
    with pytest.raises(BackendUnavailable, match="ONNX Runtime only"):
        choose_backend("tensorrt", offer, "int8")
    no_int8 = Offer(onnx=True, plan=False, onnxruntime=True, tensorrt=False)
    with pytest.raises(BackendUnavailable, match="--quantize int8"):
        choose_backend("auto", no_int8, "int8")
    with pytest.raises(ValueError, match="precision"):
        choose_backend("auto", offer, "int4")


def test_backend_runs_the_int8_graph(store: Path) -> None:
    bundle = load_bundle(store / FULL)
    backend = load_backend(bundle, "auto", device="cpu", threads=1, precision="int8")
    assert backend.name == INT8_BACKEND and backend.info["precision"] == "int8"
    assert backend.info["file"] == INT8_FILE and backend.stages is None
    fp32 = load_backend(bundle, "onnxruntime", device="cpu", threads=1)
    assert fp32.info["precision"] == "fp32" and fp32.stages is not None
    path, _ = _test_videos(bundle, 1)[0]
    frames, _ = decode_for(path, bundle.spec)
    a = predict_frames(fp32.forward, frames, bundle.spec)
    b = predict_frames(backend.forward, frames, bundle.spec)
    assert a.scores.label == b.scores.label and not torch.equal(a.outputs, b.outputs)


def test_service_answers_with_int8_and_says_so(store: Path, tmp_path: Path) -> None:
    settings = Settings(
        store=store,
        precision="int8",
        default_model=C3D,
        load_in_background=False,
        upload_dir=tmp_path,
        compute_threads=1,
        warmup=False,
    )
    path, _ = _test_videos(load_bundle(store / C3D), 1)[0]
    with TestClient(create_app(settings)) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models[C3D]["backend"] == INT8_BACKEND
        files = {"file": ("video.mp4", path.read_bytes())}
        answer = client.post("/recognize", files=files)
    assert answer.status_code == 200, answer.text
    assert answer.json()["backend"] == INT8_BACKEND
