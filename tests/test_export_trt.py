"""TensorRT export: the CLI without TensorRT, plan names, profiles from the manifest (full_video's
stage plans included), the windowed early stage, the plugin's GPU kernel against the PyTorch
clustering, and (marker ``tensorrt``) real engines."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from export._kernels import temporal_cluster_cuda, triton_available
from export.trt import INSTALL_HINT, profile_shapes, stage_plan_name, stage_profiles
from export.trt_runtime import (
    TrtEngine,
    TrtStages,
    early_in_windows,
    plan_name,
    tensorrt_available,
)
from models.bundle import ONNX_EARLY_FILE, ONNX_LATE_FILE, Bundle
from models.clustering import temporal_cluster
from models.stream import CHUNK_FRAMES, TorchStages

ROOT = Path(__file__).resolve().parents[1]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_tensorrt = pytest.mark.skipif(
    not tensorrt_available(),
    reason="needs tensorrt 10.x and a CUDA device (pip install 'tensorrt>=10,<11')",
)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_cli_without_tensorrt_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "export.trt", "--bundle", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [INSTALL_HINT]
    assert "pip install" in INSTALL_HINT and "tensorrt" in INSTALL_HINT


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_engine_and_plugin_refuse_clearly_without_tensorrt() -> None:
    from export.plugin import register

    with pytest.raises(RuntimeError, match="tensorrt package"):
        TrtEngine(None)  # type: ignore[arg-type]  # a wrong argument on purpose
    with pytest.raises(ImportError):
        register()


def test_plan_name_sanitises_the_gpu_name() -> None:
    assert plan_name("NVIDIA H100 80GB HBM3") == "model.nvidia-h100-80gb-hbm3.plan"
    assert (
        plan_name("NVIDIA GeForce RTX 4090 (laptop)") == "model.nvidia-geforce-rtx-4090-laptop.plan"
    )
    with pytest.raises(ValueError):
        plan_name("  ")


def test_profile_shapes_from_the_manifest() -> None:
    info: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": ["clips", 3, "frames", 64, 64]}],
        "dims": {
            "clips": {"min": 1, "opt": 4, "max": 16},
            "frames": {"min": 1, "opt": 32, "max": 512},
        },
    }
    assert profile_shapes(info) == ((1, 3, 1, 64, 64), (4, 3, 32, 64, 64), (16, 3, 512, 64, 64))
    assert profile_shapes(info, max_frames=20) == (
        (1, 3, 1, 64, 64),
        (4, 3, 20, 64, 64),
        (16, 3, 20, 64, 64),
    )
    clips_only = {
        "inputs": [{"name": "input", "shape": ["clips", 3, 16, 56, 56]}],
        "dims": {"clips": info["dims"]["clips"]},
    }
    assert profile_shapes(clips_only, max_frames=20)[2] == (16, 3, 16, 56, 56)


def test_stage_plan_names() -> None:
    gpu = "NVIDIA H100 80GB HBM3"
    assert stage_plan_name(ONNX_EARLY_FILE, gpu) == "model.early.nvidia-h100-80gb-hbm3.plan"
    assert stage_plan_name(ONNX_LATE_FILE, gpu) == "model.late.nvidia-h100-80gb-hbm3.plan"
    assert stage_plan_name(ONNX_EARLY_FILE, gpu) != plan_name(gpu)


def test_stage_profiles_from_an_exported_manifest(tmp_path: Path) -> None:
    bundle = _exported_bundle(tmp_path, "full_video_tiny")
    context = bundle.file_info(ONNX_EARLY_FILE)["context"]
    assert context == 2
    early, late = stage_profiles(bundle, "NVIDIA H200")
    # Frames: 1, the stream's chunk, the chunk plus the context on both sides; one video.
    assert early == (
        ONNX_EARLY_FILE,
        "model.early.nvidia-h200.plan",
        ((1, 3, 1, 64, 64), (1, 3, CHUNK_FRAMES, 64, 64), (1, 3, CHUNK_FRAMES + 4, 64, 64)),
    )
    # The g = 8 cluster means of layer1 (16 channels, 16x16): one fixed shape.
    assert late == (ONNX_LATE_FILE, "model.late.nvidia-h200.plan", ((1, 8, 16, 16, 16),) * 3)
    without = Bundle(tmp_path, {"files": {"weights.safetensors": {"sha256": ""}}})
    assert stage_profiles(without, "NVIDIA H200") == []


def test_early_in_windows_equals_one_call() -> None:
    from models import create_model

    torch.manual_seed(0)
    model = create_model("full_video_tiny", num_classes=4)
    stages = TorchStages(model.eval())
    x = torch.randn(1, 3, 50, 64, 64, generator=torch.Generator().manual_seed(4))
    calls: list[int] = []

    def early(chunk: torch.Tensor) -> torch.Tensor:
        calls.append(chunk.shape[2])
        return stages.early(chunk)

    got = early_in_windows(early, x, 12, stages.context)
    assert max(calls) <= 12 and len(calls) == 7  # 50 frames, 8 per window
    torch.testing.assert_close(got, stages.early(x), rtol=1e-5, atol=1e-5)
    calls.clear()
    early_in_windows(early, x[:, :, :12], 12, stages.context)
    assert calls == [12]
    with pytest.raises(ValueError, match="leave none"):
        early_in_windows(early, x, 4, 2)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_trt_stages_refuse_clearly_without_tensorrt(tmp_path: Path) -> None:
    early = {"sha256": "", "context": 2, "num_clusters": 8, "clustering": "cumulative"}
    bundle = Bundle(tmp_path, {"files": {ONNX_EARLY_FILE: early, ONNX_LATE_FILE: {}}})
    with pytest.raises(RuntimeError, match="tensorrt package"):
        TrtStages(bundle)


@pytest.mark.parametrize("method", ["cumulative", "slope", "uniform"])
def test_kernel_torch_path_equals_reference_on_cpu(method: str) -> None:
    generator = torch.Generator().manual_seed(1)
    for frames, g in ((1, 4), (3, 4), (12, 4), (17, 1), (9, 8)):
        x = torch.randn(2, frames, 5, 3, 3, generator=generator)
        out = torch.empty(2, g, 5, 3, 3)
        got = temporal_cluster_cuda(x, g, method, out=out, use_triton=False)
        assert got is out
        torch.testing.assert_close(got, temporal_cluster(x, g, method), rtol=0, atol=1e-6)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("use_triton", [False, True])
@pytest.mark.parametrize("method", ["cumulative", "slope", "uniform"])
def test_kernel_matches_reference_on_cuda(method: str, use_triton: bool) -> None:
    if use_triton and not triton_available():
        pytest.skip("triton is not installed")
    generator = torch.Generator().manual_seed(2)
    for frames, g in ((1, 8), (5, 8), (9, 8), (32, 8), (100, 4), (33, 1)):
        x = torch.randn(3, frames, 16, 7, 9, generator=generator)
        x[1, 2:5] = x[1, 1:2]  # equal neighbours: zero distances and ties
        expected = temporal_cluster(x, g, method)
        got = temporal_cluster_cuda(x.cuda(), g, method, use_triton=use_triton)
        torch.testing.assert_close(
            got.cpu(), expected, rtol=1e-5, atol=1e-5, msg=f"T={frames} g={g}"
        )
        half = temporal_cluster_cuda(x.cuda().half(), g, method, use_triton=use_triton)
        torch.testing.assert_close(
            half.float().cpu(), temporal_cluster(x.half(), g, method).float(), rtol=1e-2, atol=1e-2
        )


@needs_cuda
@pytest.mark.gpu
def test_kernel_runs_on_an_external_stream() -> None:
    # The plugin hands TensorRT's stream to torch as an ExternalStream; the kernel must follow it.
    stream = torch.cuda.Stream()
    x = torch.randn(2, 20, 8, 4, 4, device="cuda")
    out = torch.empty(2, 8, 8, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(torch.cuda.ExternalStream(stream.cuda_stream)):
        temporal_cluster_cuda(x, 8, "cumulative", out=out)
    stream.synchronize()
    torch.testing.assert_close(
        out.cpu(), temporal_cluster(x.cpu(), 8, "cumulative"), rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Real engines (TensorRT 10.x on a GPU)


def _exported_bundle(directory: Path, name: str) -> Bundle:
    from export.onnx import export_onnx
    from models import create_model, get_spec
    from models.bundle import write_bundle

    torch.manual_seed(0)
    defaults = get_spec(name)
    model = create_model(name, num_classes=4)
    bundle = write_bundle(
        directory / name,
        model=model,
        model_name=name,
        model_kwargs={"num_classes": 4},
        family=defaults.family,
        labels=list("abcd"),
        spec=defaults,
    )
    return export_onnx(bundle)


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("name", ["c3d_vll_tiny", "full_video_tiny"])
def test_engine_matches_pytorch(tmp_path: Path, name: str) -> None:
    from export.plugin import is_registered, register
    from export.trt import build_engine

    bundle = build_engine(_exported_bundle(tmp_path, name), max_frames=64)
    plan = plan_name(torch.cuda.get_device_name())
    info = bundle.manifest["files"][plan]
    assert info["precision"] == "fp32" and info["tensorrt"]
    if name.startswith("full_video"):
        assert is_registered() and info["plugins"] == ["actrec::TemporalCluster"]
    register()  # idempotent
    engine = TrtEngine(bundle)
    model = bundle.build_model()
    defaults = bundle.spec
    for frames in (9, 32, 64) if not defaults.input_frames else (defaults.input_frames,):
        x = torch.randn(2, 3, frames, *defaults.input_size)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(engine(x), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.tensorrt
@needs_tensorrt
def test_stage_engines_match_torch_stages(tmp_path: Path, make_video) -> None:
    from export.trt import build_engine
    from models.pipeline import decode_for, predict_frames
    from models.stream import recognize_video

    bundle = build_engine(_exported_bundle(tmp_path, "full_video_tiny"), max_frames=64)
    gpu = torch.cuda.get_device_name()
    for name in (ONNX_EARLY_FILE, ONNX_LATE_FILE):
        assert bundle.manifest["files"][stage_plan_name(name, gpu)]["onnx"] == name
    stages = TrtStages(bundle)
    model = bundle.build_model()
    reference = TorchStages(model)
    assert stages.max_frames == CHUNK_FRAMES + 2 * reference.context
    for frames in (1, 9, CHUNK_FRAMES + 4, 150):  # 150: beyond the profile, in windows
        x = torch.randn(1, 3, frames, 64, 64)
        torch.testing.assert_close(stages.early(x), reference.early(x), rtol=1e-3, atol=1e-3)
    means = torch.rand(1, 8, 16, 16, 16)
    torch.testing.assert_close(stages.late(means), reference.late(means), rtol=1e-3, atol=1e-3)
    video = make_video("long.mp4", n=100, height=64, width=64)
    got = recognize_video(video, bundle.spec, model, stages=stages, chunk_frames=16)
    frames_uint8, _ = decode_for(video, bundle.spec)
    with torch.no_grad():
        want = predict_frames(model, frames_uint8, bundle.spec)
    assert got.prediction.scores.order.tolist() == want.scores.order.tolist()
    torch.testing.assert_close(got.prediction.scores.scores, want.scores.scores, atol=1e-3, rtol=0)
