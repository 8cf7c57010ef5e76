"""TensorRT export: the CLI without TensorRT, plan names, profiles from the manifest (full_video's
stage plans included), the windowed early stage, the plugin's GPU kernel against the PyTorch
clustering, and (marker ``tensorrt``) real engines.

Without TensorRT, the version gate, the attribute decoding, the plugin definitions, the parser
preparation, the plugin-layer record and the timing-cache handling are tested as our own code
against stand-ins for the TensorRT objects they touch (attributes named as in TensorRT's
Python API); none of these tests runs TensorRT. The fused clustering kernel runs in Triton's
interpreter on the CPU and its ahead-of-time PTX is assembled by the ``ptxas`` Triton ships."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnx
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
if os.environ.get("ACTREC_REQUIRE_TRITON"):  # CI (.ci/run): the CPU Triton tests must run
    importlib.import_module("triton")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_tensorrt = pytest.mark.skipif(
    not tensorrt_available(),
    reason="needs tensorrt 10.9 .. 11.x and a CUDA device (pip install 'tensorrt>=10.9,<12')",
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
@pytest.mark.parametrize(
    ("name", "plugin"),
    [
        ("c3d_vll_tiny", "aot"),
        ("full_video_tiny", "aot"),
        ("full_video_tiny", "jit"),
        ("full_video_tiny", "none"),
    ],
)
def test_engine_matches_pytorch(tmp_path: Path, name: str, plugin: str) -> None:
    from export.plugin import register
    from export.trt import build_engine

    bundle = build_engine(_exported_bundle(tmp_path, name), max_frames=64, plugin=plugin)
    plan = plan_name(torch.cuda.get_device_name())
    info = bundle.manifest["files"][plan]
    assert info["precision"] == "fp32" and info["tensorrt"] and info["strongly_typed"]
    if name.startswith("full_video"):
        want = "onnx-function" if plugin == "none" else plugin
        assert info["plugin_impl"] == want
        assert bool(info["plugin_layers"]) == (plugin != "none")
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


@pytest.mark.tensorrt
@needs_tensorrt
def test_fp16_engine_is_strongly_typed_and_close(tmp_path: Path) -> None:
    from export.onnx import export_onnx
    from export.trt import build_engine

    bundle = export_onnx(_exported_bundle(tmp_path, "full_video_tiny"), fp16=True)
    bundle = build_engine(bundle, fp16=True, max_frames=64)
    info = bundle.manifest["files"][plan_name(torch.cuda.get_device_name())]
    assert info["precision"] == "fp16" and info["onnx"] == "model.fp16.onnx"
    engine = TrtEngine(bundle)
    x = torch.randn(1, 3, 40, 64, 64)
    with torch.no_grad():
        expected = bundle.build_model()(x)
    torch.testing.assert_close(engine(x), expected, rtol=5e-2, atol=5e-2)


# ---------------------------------------------------------------------------------------------
# Our code around TensorRT, against stand-ins (no TensorRT runs here)


def test_version_gate() -> None:
    from export.trt_compat import TensorRTUnsupported, check_version, parse_version

    assert parse_version("10.13.0.35") == (10, 13, 0, 35)
    assert parse_version("11.0.0b1") == (11, 0, 0)
    for ok in ("10.9.0.34", "10.13.3.9", "11.4.0.106"):
        assert check_version(ok)[:2] >= (10, 9)
    for old in ("10.8.0.43", "10.6.0", "9.3.0"):
        with pytest.raises(TensorRTUnsupported, match=r"too old.*10\.9 or newer.*pip install"):
            check_version(old)
    with pytest.raises(TensorRTUnsupported, match="newer than"):
        check_version("12.0.1")
    with pytest.raises(TensorRTUnsupported, match="cannot read"):
        check_version("dev")


def test_old_tensorrt_is_refused_before_anything_is_built(monkeypatch, tmp_path: Path) -> None:
    import types

    from export import plugin
    from export.trt import main
    from export.trt_compat import TensorRTUnsupported

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setattr(plugin, "_registered", False)
    with pytest.raises(TensorRTUnsupported, match="10.8.0.43 is too old"):
        plugin.register()
    assert not plugin.is_registered()
    with pytest.raises(RuntimeError, match="10.8.0.43 is too old"):
        TrtEngine(None)  # type: ignore[arg-type]  # refused before the bundle is read
    assert not tensorrt_available()
    assert main(["--bundle", str(tmp_path)]) == 2


def test_method_attribute_is_read_without_its_nul() -> None:
    from export._kernels import KernelError, method_code

    assert method_code("cumulative\x00") == 0
    assert method_code(b"slope\x00") == 1
    assert method_code(" uniform\x00\x00") == 2
    assert method_code(1) == 1
    for bad in ("cumulativ", "", 3, True):
        with pytest.raises(KernelError):
            method_code(bad)
    x = torch.randn(2, 9, 4, 3, 3, generator=torch.Generator().manual_seed(3))
    got = temporal_cluster_cuda(x, 4, "slope\x00", use_triton=False)
    torch.testing.assert_close(got, temporal_cluster(x, 4, "slope"), rtol=0, atol=1e-6)


class _Expr:
    """A symbolic dimension as ``tensorrt.plugin.ShapeExpr``: records constants and products."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __mul__(self, other: _Expr) -> _Expr:
        return _Expr(("*", self.value, other.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Expr) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


class _StandInPlugin:
    """The parts of ``tensorrt.plugin`` that export.plugin uses, with the documented
    signature rules of ``trtp.impl`` and ``trtp.aot_impl`` checked at decoration."""

    def __init__(self) -> None:
        self.defined: dict[str, Any] = {}
        self.ShapeExpr = _Expr
        self.TensorDesc = type("TensorDesc", (), {})
        self.Tensor = type("Tensor", (), {})
        self.AutoTuneCombination = lambda types, layout: (types, layout)
        self.KernelLaunchParams = type("KernelLaunchParams", (), {})
        self.SymExprs = type("SymExprs", (), {})
        self.SymInt32 = lambda expr: ("i32", expr)
        self.SymIntExprs = type(
            "SymIntExprs", (self.SymExprs,), {"from_tuple": classmethod(lambda cls, t: list(t))}
        )

    def from_shape_expr(self, dims: tuple, dtype: object) -> Any:
        return SimpleNamespace(shape_expr=list(dims), dtype=dtype)

    def _decorator(self, kind: str, params: list[str] | None = None):
        def wrap(plugin_id: str):
            assert plugin_id == "actrec::TemporalCluster"

            def decorate(fn):
                if params is not None:
                    assert list(inspect.signature(fn).parameters) == params, kind
                self.defined[kind] = fn
                return fn

            return decorate

        return wrap

    def __getattr__(self, kind: str) -> Any:
        schemas = {
            "register": None,
            "autotune": None,
            "impl": ["x", "num_clusters", "method", "outputs", "stream"],
            "aot_impl": ["x", "num_clusters", "method", "outputs", "tactic"],
        }
        if kind not in schemas:
            raise AttributeError(kind)
        return self._decorator(kind, schemas[kind])


def test_plugin_shape_and_aot_launch_on_stand_ins(monkeypatch) -> None:
    pytest.importorskip("triton", reason="the AOT kernel is compiled by Triton")
    import typing

    from export import plugin

    trtp = _StandInPlugin()
    plugin._define(trtp)
    assert set(trtp.defined) == {"register", "autotune", "impl", "aot_impl"}
    returns = typing.get_type_hints(trtp.defined["aot_impl"])["return"]
    assert typing.get_origin(returns) is tuple and len(typing.get_args(returns)) == 4

    dims = [_Expr(f"d{i}") for i in range(5)]
    x = SimpleNamespace(
        shape_expr=dims,
        dtype="float32",
        shape=SimpleNamespace(is_dynamic=True, max=(16, 100, 16, 16, 16)),
    )
    out = trtp.defined["register"](x, 8, "cumulative\x00")
    # The frame axis is a constant shape expression, never a plain int; the others are x's.
    assert isinstance(out.shape_expr[1], _Expr) and out.shape_expr[1].value == 8
    assert [out.shape_expr[i] for i in (0, 2, 3, 4)] == [dims[i] for i in (0, 2, 3, 4)]
    assert out.dtype == "float32" and x.shape_expr[1] == _Expr("d1")  # the input unchanged

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(float16="float16"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    name, ptx, params, extra = trtp.defined["aot_impl"](x, 8, "slope\x00", (out,), 0)
    # Attributes in another order than declared (TensorRT passes them by position).
    swapped = trtp.defined["aot_impl"](x, "slope\x00", 8, (out,), 0)
    assert swapped[1] == ptx
    assert name == "means_kernel" and ".target sm_90" in ptx
    entry = ptx[ptx.index(".entry") : ptx.index(")", ptx.index(".entry"))]
    assert entry.count(".param") == 4  # x, frames, features, out: Triton's scratch removed
    assert ".param .u64 .ptr .global .align 1 means_kernel_param_3" in entry
    assert params.grid_x == dims[0] and params.block_x == 256
    assert extra == [("i32", dims[1]), ("i32", _Expr(("*", ("*", "d2", "d3"), "d4")))]


def test_aot_ptx_assembles_for_sm90() -> None:
    triton = pytest.importorskip("triton", reason="the AOT kernel is compiled by Triton")
    from export._kernels import compile_aot_kernel

    kernel = compile_aot_kernel(
        dtype="fp16", num_clusters=8, method="cumulative", max_frames=512, arch=90, ptx_isa=84
    )
    assert (kernel.tmax, kernel.block_threads, kernel.arch) == (512, 256, 90)
    assert ".version 8.4" in kernel.ptx
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip("this Triton wheel ships no ptxas")
    source = Path(tempfile.mkdtemp()) / "kernel.ptx"
    source.write_text(kernel.ptx)
    result = subprocess.run(
        [str(ptxas), "--gpu-name", "sm_90a", str(source), "-o", str(source.with_suffix(".cubin"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert source.with_suffix(".cubin").stat().st_size > 1000


def test_strip_unused_params() -> None:
    from export._kernels import KernelError, strip_unused_params

    ptx = (
        ".version 8.4\n.visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,"
        "\n\t.param .u64 k_param_2,\n\t.param .u64 k_param_3\n)\n{\n\tld.param.b64 %rd1, "
        "[k_param_0];\n\tld.param.b32 %r1, [k_param_1];\n}\n"
    )
    stripped = strip_unused_params(ptx, keep=2)
    assert "k_param_2" not in stripped and "k_param_3" not in stripped
    assert ".entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1\n)" in stripped
    assert strip_unused_params(ptx, keep=4) == ptx  # nothing to remove
    with pytest.raises(KernelError, match="k_param_1 is used"):
        strip_unused_params(ptx, keep=1)
    with pytest.raises(KernelError, match="fewer than 5"):
        strip_unused_params(ptx, keep=5)
    with pytest.raises(KernelError, match="one .entry"):
        strip_unused_params(ptx + ptx, keep=2)


_INTERPRETED = """
import json, sys, torch
from export._kernels import fused_cluster_ids, fused_cluster_means
from models.clustering import assign_clusters, hamming_distances, temporal_cluster
generator = torch.Generator().manual_seed(5)
rows = []
for method in ("cumulative", "slope", "uniform"):
    for frames, g in ((1, 4), (3, 4), (12, 4), (9, 1), (9, 8), (21, 3)):
        x = torch.randn(2, frames, 5, 3, 3, generator=generator)
        if frames >= 6:
            x[1, 1:3] = x[1, :1]  # equal neighbours: zero distances and ties
            x[1, 4:] = x[1, 4:5]  # a still stretch
        ids = fused_cluster_ids(x, g, method, block=16)
        means = fused_cluster_means(x, g, method, block=16)
        rows.append({
            "case": f"{method} T={frames} g={g}",
            "ids_equal": torch.equal(ids.long(), assign_clusters(hamming_distances(x), g, method)),
            "max_diff": float((means - temporal_cluster(x, g, method)).abs().max()),
        })
long = torch.randn(1, 20, 2, 2, 2, generator=generator)
rows.append({
    "case": "T > TMAX",
    "nan": bool(fused_cluster_means(long, 4, "slope", tmax=16, block=16).isnan().all()),
    "ids": fused_cluster_ids(long, 4, "slope", tmax=16, block=16).tolist(),
})
print(json.dumps(rows))
"""


def test_fused_kernel_in_the_triton_interpreter() -> None:
    pytest.importorskip("triton", reason="the fused kernel is written in Triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _INTERPRETED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    *cases, overflow = rows
    assert len(cases) == 18
    for row in cases:
        assert row["ids_equal"], row["case"]
        assert row["max_diff"] <= 1e-5, row
    assert overflow["nan"] and overflow["ids"] == [[-1] * 20]


def _one_node_model(num_clusters: int = 3, method: str = "slope") -> onnx.ModelProto:
    from onnx import TensorProto, helper

    from export.onnx import PLUGIN_NAMESPACE, temporal_cluster_function

    node = helper.make_node(
        "TemporalCluster",
        ["x"],
        ["y"],
        domain="actrec",
        num_clusters=num_clusters,
        method=method,
        plugin_namespace=PLUGIN_NAMESPACE,
    )
    shape = ["n", "t", "c", "h", "w"]
    graph = helper.make_graph(
        [node],
        "cluster",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("actrec", 1)],
        functions=[temporal_cluster_function(num_clusters, method, 17)],
        ir_version=9,
    )


def test_prepare_for_parser() -> None:
    import onnxruntime as ort
    from onnx import helper

    from export.trt import prepare_for_parser

    model = _one_node_model()
    x = torch.randn(2, 11, 3, 2, 2, generator=torch.Generator().manual_seed(1)).numpy()
    want = temporal_cluster(torch.from_numpy(x), 3, "slope")

    def attrs(proto: onnx.ModelProto) -> list[tuple[str, object]]:
        (node,) = proto.graph.node
        return [(a.name, helper.get_attribute_value(a)) for a in node.attribute]

    aot = prepare_for_parser(model, "aot")
    # The plugin attributes keep their order (TensorRT hands them to aot_impl by position).
    assert attrs(aot) == [
        ("num_clusters", 3),
        ("method", b"slope"),
        ("plugin_namespace", b"actrec"),
        ("aot", 1),
    ]
    assert attrs(prepare_for_parser(aot, "jit")) == attrs(aot)[:3]
    assert attrs(prepare_for_parser(aot, "none")) == [("num_clusters", 3), ("method", b"slope")]
    # helper.make_node sorts attributes by name; the input itself is not modified.
    assert [name for name, _ in attrs(model)] == ["method", "num_clusters", "plugin_namespace"]
    for variant in (aot, prepare_for_parser(model, "none")):
        onnx.checker.check_model(variant)
        session = ort.InferenceSession(
            variant.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        got = torch.from_numpy(session.run(None, {"x": x})[0])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="plugin must be one of"):
        prepare_for_parser(model, "python")


def _stand_in_trt(**flags: int) -> SimpleNamespace:
    return SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(**flags))


def test_network_flags_are_strongly_typed_with_the_plugin_preference() -> None:
    from export.trt_compat import TensorRTUnsupported, network_flags

    trt = _stand_in_trt(STRONGLY_TYPED=3, PREFER_AOT_PYTHON_PLUGINS=5, PREFER_JIT_PYTHON_PLUGINS=6)
    assert network_flags(trt, "aot") == (1 << 3) | (1 << 5)
    assert network_flags(trt, "jit") == (1 << 3) | (1 << 6)
    assert network_flags(trt, "none") == 1 << 3
    assert network_flags(_stand_in_trt(STRONGLY_TYPED=3), "aot") == 1 << 3
    with pytest.raises(TensorRTUnsupported, match="strongly typed"):
        network_flags(_stand_in_trt(EXPLICIT_BATCH=0), "aot")
    with pytest.raises(ValueError):
        network_flags(trt, "fast")


def test_plugin_layers_and_what_the_manifest_records() -> None:
    from export.trt import plugin_record
    from export.trt_compat import plugin_layers

    core = SimpleNamespace(plugin_name="TemporalCluster", plugin_namespace="actrec")
    plugin_v3 = SimpleNamespace(
        get_capability_interface=lambda kind: core if kind == "core" else None
    )
    layers = [
        SimpleNamespace(type="conv", name="/stem/conv"),
        SimpleNamespace(type="v3", name="/TemporalCluster", get_plugin=lambda: plugin_v3),
        SimpleNamespace(type="v2", name="/other", plugin=SimpleNamespace(plugin_name="Old")),
    ]
    trt = SimpleNamespace(
        LayerType=SimpleNamespace(CONVOLUTION="conv", PLUGIN_V2="v2", PLUGIN_V3="v3"),
        PluginCapabilityType=SimpleNamespace(CORE="core"),
    )
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    found = plugin_layers(trt, network)
    assert found == [
        {"layer": "/TemporalCluster", "plugin": "actrec::TemporalCluster"},
        {"layer": "/other", "plugin": "Old"},
    ]
    record = plugin_record("model.onnx", True, "aot", found[:1])
    assert record == {
        "plugins": ["actrec::TemporalCluster"],
        "plugin_impl": "aot",
        "plugin_layers": ["/TemporalCluster"],
    }
    # The node expanded into standard layers: refused when the plugin was asked for ...
    with pytest.raises(RuntimeError, match="did not map model.onnx's TemporalCluster"):
        plugin_record("model.onnx", True, "jit", [])
    # ... and recorded as what it is when it was not; graphs without the node record nothing.
    assert plugin_record("model.onnx", True, "none", [])["plugin_impl"] == "onnx-function"
    assert plugin_record("model.late.onnx", False, "aot", []) == {
        "plugins": [],
        "plugin_impl": None,
        "plugin_layers": [],
    }


def test_runtime_reads_how_a_plan_clusters() -> None:
    from export.trt_runtime import plugin_impl, torch_dtype

    assert plugin_impl({"plugin_impl": "aot", "plugins": ["actrec::TemporalCluster"]}) == "aot"
    assert plugin_impl({"plugin_impl": None, "plugins": []}) is None
    # Plans from before plugin_impl was recorded listed their (Python) plugin.
    assert plugin_impl({"plugins": ["actrec::TemporalCluster"]}) == "jit"
    assert plugin_impl({}) is None
    trt = SimpleNamespace(float32="f32", float16="f16", int32="i32")
    assert torch_dtype(trt, "f16") is torch.float16 and torch_dtype(trt, "f32") is torch.float32
    with pytest.raises(RuntimeError, match="of type fp8"):
        torch_dtype(trt, "fp8")


def test_timing_cache_per_version_and_device_written_before_the_plan(
    tmp_path: Path, monkeypatch
) -> None:
    import export.trt as trt_module
    from export.trt_compat import timing_cache_name

    a = timing_cache_name("fv", "nvidia-h200", (9, 0), "10.13.0.35")
    assert a == "fv.nvidia-h200.sm90.trt10.13.0.35.timing-cache"
    assert (
        len(
            {
                a,
                timing_cache_name("fv", "nvidia-h200", (9, 0), "11.4.0.106"),
                timing_cache_name("fv", "nvidia-h100", (9, 0), "10.13.0.35"),
                timing_cache_name("fv", "nvidia-h200", (10, 0), "10.13.0.35"),
            }
        )
        == 4
    )

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"fresh-cache"

    class Config:
        attached: list[bytes] = []
        cache_out: Cache | None = Cache(b"")

        def create_timing_cache(self, data: bytes) -> Cache:
            return Cache(data)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            assert ignore_mismatch is False
            self.attached.append(cache.data)
            return cache.data != b"from-another-gpu"  # the builder refuses a foreign cache

        def get_timing_cache(self) -> Cache | None:
            return self.cache_out

        def set_memory_pool_limit(self, *args: object) -> None: ...

        def add_optimization_profile(self, profile: object) -> None: ...

    class Builder:
        def __init__(self, logger: object) -> None: ...

        def create_network(self, flags: int) -> SimpleNamespace:
            return SimpleNamespace(num_layers=0, get_layer=None)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> SimpleNamespace:
            return SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network: object, config: object) -> bytes:
            return b"plan"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None: ...

    trt = SimpleNamespace(
        Logger=Logger,
        Builder=Builder,
        MemoryPoolType=SimpleNamespace(WORKSPACE=0),
        LayerType=SimpleNamespace(PLUGIN_V3="v3"),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=3),
    )
    writes: list[str] = []
    real_write = trt_module.atomic_write_bytes
    monkeypatch.setattr(trt_module, "_parse", lambda *a: object())

    def write(path: Path, data: bytes) -> Path:
        writes.append(Path(path).name)
        return real_write(path, data)

    monkeypatch.setattr(trt_module, "atomic_write_bytes", write)
    cache_path = tmp_path / a
    cache_path.write_bytes(b"from-another-gpu")
    builder = trt_module._Builder(trt, workspace_gb=1, cache_path=cache_path, plugin="aot")
    shapes = ((1, 3), (1, 3), (1, 3))
    outcome = builder.build(tmp_path / "m.onnx", shapes, tmp_path / "m.plan", lambda layers: {})
    assert Config.attached == [b"from-another-gpu", b""]  # refused, so a fresh cache was used
    assert outcome.cache_reused is False and outcome.cache_name == a
    assert writes == [a, "m.plan"]  # the cache before the plan
    assert cache_path.read_bytes() == b"fresh-cache"
    Config.attached.clear()
    cache_path.write_bytes(b"ours")

    def nothing(layers: list[dict[str, str]]) -> dict[str, Any]:
        return {}

    assert builder.build(tmp_path / "m.onnx", shapes, tmp_path / "m.plan", nothing).cache_reused
    assert Config.attached == [b"ours"]
    Config.cache_out = None  # no cache to keep: the plan alone is written
    writes.clear()
    outcome = builder.build(tmp_path / "m.onnx", shapes, tmp_path / "m.plan", nothing)
    assert outcome.cache_name is None and writes == ["m.plan"]
