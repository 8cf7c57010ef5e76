"""The Triton Inference Server model repository (export.triton): every config.pbtxt parsed by
Triton's own model-config protobuf (shipped in ``tritonclient``), shapes against the ONNX
graphs, the TensorRT backend's plan selection, and the Python-backend step's code run here,
outside Triton, giving the service pipeline's top-5.

No tritonserver runs here: the step's ``model.py`` is driven through a stand-in for
``triton_python_backend_utils`` whose network calls run ONNX Runtime on the repository's own
model files; what the server itself does is not tested."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from export.onnx import OnnxForward, export_onnx
from export.triton import TritonExportError, main, pbtxt, write_repository
from models import create_model, get_spec
from models.aggregators import topk
from models.bundle import Bundle, add_bundle_file, write_bundle
from models.stream import TorchStages, recognize_video

if os.environ.get("ACTREC_REQUIRE_TRITONCLIENT"):  # CI (.ci/run): missing fails, not skips
    importlib.import_module("tritonclient.grpc.model_config_pb2")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]==2.73.0'"
)
# protobuf comes with tritonclient[grpc]; imported by name (it ships no type information).
text_format = importlib.import_module("google.protobuf.text_format")


def _exported(directory: Path, name: str) -> Bundle:
    torch.manual_seed(0)
    spec = get_spec(name)
    model = create_model(name, num_classes=6)
    bundle = write_bundle(
        directory / name,
        model=model,
        model_name=name,
        model_kwargs={"num_classes": 6},
        family=spec.family,
        labels=[f"action_{i}" for i in range(6)],
        spec=spec,
    )
    return export_onnx(bundle)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    root = tmp_path_factory.mktemp("bundles")
    return {name: _exported(root, name) for name in ("c3d_vll_tiny", "full_video_tiny")}


def _parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]


def test_configs_parse_as_triton_model_configs(tmp_path: Path, bundles: dict[str, Bundle]) -> None:
    repo = write_repository(bundles["full_video_tiny"], tmp_path / "repo", max_batch=4, name="fv")
    assert sorted(p.name for p in repo.iterdir()) == ["fv", "fv_early", "fv_late", "fv_net"]
    net = _parse(repo / "fv_net" / "config.pbtxt")
    assert (net.name, net.backend, net.max_batch_size) == ("fv_net", "onnxruntime", 4)
    assert list(net.dynamic_batching.preferred_batch_size) == [2, 4]
    assert net.dynamic_batching.max_queue_delay_microseconds > 0
    assert net.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (inp,), (out,) = net.input, net.output
    assert (inp.name, inp.data_type) == ("input", model_config_pb2.TYPE_FP32)
    assert list(inp.dims) == [3, -1, 64, 64] and list(out.dims) == [6]
    # The model file is the one the configuration describes (batch axis excluded).
    graph = onnx.load(repo / "fv_net" / "1" / "model.onnx").graph
    assert _dims(graph.input[0])[1:] == list(inp.dims)
    assert _dims(graph.output[0])[1:] == list(out.dims)
    for stage, dims in (("early", [3, -1, 64, 64]), ("late", [8, 16, 16, 16])):
        config = _parse(repo / f"fv_{stage}" / "config.pbtxt")
        assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == dims
        # Self-contained: the weights the bundle's stage graph reads from model.onnx are inside.
        onnx.checker.check_model(str(repo / f"fv_{stage}" / "1" / "model.onnx"))
    step = _parse(repo / "fv" / "config.pbtxt")
    assert (step.backend, step.max_batch_size) == ("python", 0)
    assert [i.name for i in step.input] == ["VIDEO"]
    assert step.input[0].data_type == model_config_pb2.TYPE_STRING
    assert [o.name for o in step.output] == ["LABELS", "SCORES", "UNKNOWN", "RESULT"]
    assert step.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    settings = json.loads((repo / "fv" / "1" / "step.json").read_text())
    assert settings["stages"] == {
        "early": "fv_early",
        "late": "fv_late",
        "context": 2,
        "num_clusters": 8,
        "clustering": "cumulative",
        "max_frames": 68,
    }
    assert (
        "from export.triton_step import TritonPythonModel"
        in (repo / "fv" / "1" / "model.py").read_text()
    )


def test_pbtxt_writes_what_protobuf_reads() -> None:
    text = pbtxt(
        {
            "name": 'a "quoted" name',
            "max_batch_size": 8,
            "parameters": ("map", {"k": {"string_value": "v\\1"}}),
            "optimization": {"cuda": {"graphs": True}},
        }
    )
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == 'a "quoted" name' and config.max_batch_size == 8
    assert config.parameters["k"].string_value == "v\\1" and config.optimization.cuda.graphs


class _StandInTritonUtils(ModuleType):
    """What ``triton_python_backend_utils`` offers a Python model, with the network requests
    run by ONNX Runtime on the repository's model files."""

    def __init__(self, repo: Path) -> None:
        super().__init__("triton_python_backend_utils")
        self.calls: dict[str, int] = {}
        sessions: dict[str, OnnxForward] = {}
        utils = self

        class Tensor:
            def __init__(self, name: str, array: np.ndarray) -> None:
                self._name, self._array = name, array

            def name(self) -> str:
                return self._name

            def as_numpy(self) -> np.ndarray:
                return self._array

        class InferenceResponse:
            def __init__(self, output_tensors: list[Tensor] = (), error: Any = None) -> None:  # type: ignore[assignment]
                self.output_tensors, self._error = list(output_tensors), error

            def has_error(self) -> bool:
                return self._error is not None

            def error(self) -> Any:
                return self._error

        class InferenceRequest:
            def __init__(
                self, model_name: str, requested_output_names: list[str], inputs: list[Tensor]
            ) -> None:
                self.model_name, self.inputs = model_name, inputs
                assert requested_output_names == ["output"]

            def exec(self) -> InferenceResponse:
                (tensor,) = self.inputs
                config = _parse(repo / self.model_name / "config.pbtxt")
                assert tensor.name() == config.input[0].name
                assert len(tensor.as_numpy()) <= max(config.max_batch_size, 1)
                if self.model_name not in sessions:
                    sessions[self.model_name] = OnnxForward(
                        repo / self.model_name / "1" / "model.onnx", threads=1
                    )
                utils.calls[self.model_name] = utils.calls.get(self.model_name, 0) + 1
                out = sessions[self.model_name](torch.from_numpy(tensor.as_numpy())).numpy()
                return InferenceResponse([Tensor("output", out)])

        self.Tensor, self.InferenceRequest, self.InferenceResponse = (
            Tensor,
            InferenceRequest,
            InferenceResponse,
        )
        self.TritonError = lambda message: SimpleNamespace(message=lambda: message)

    @staticmethod
    def _by_name(holder: Any, name: str) -> Any:
        tensors = holder.inputs if hasattr(holder, "inputs") else holder.output_tensors
        return next(t for t in tensors if t.name() == name)

    def get_input_tensor_by_name(self, request: Any, name: str) -> Any:
        return self._by_name(request, name)

    def get_output_tensor_by_name(self, response: Any, name: str) -> Any:
        return self._by_name(response, name)


def _load_step(
    repo: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, _StandInTritonUtils]:
    utils = _StandInTritonUtils(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location(f"step_{name}", repo / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {"model_repository": str(repo / name), "model_version": "1", "model_name": name}
    )
    return model, utils


@pytest.mark.parametrize("name", ["c3d_vll_tiny", "full_video_tiny"])
def test_python_step_gives_the_pipelines_top5(
    tmp_path: Path,
    bundles: dict[str, Bundle],
    make_video,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    bundle = bundles[name]
    repo = write_repository(bundle, tmp_path / "repo", max_batch=2)
    model, utils = _load_step(repo, name, monkeypatch)
    video = make_video("walk.mp4", n=70, height=64, width=64)
    pb = sys.modules["triton_python_backend_utils"]
    request = SimpleNamespace(
        inputs=[pb.Tensor("VIDEO", np.array([video.read_bytes()], dtype=object))]
    )
    broken = SimpleNamespace(inputs=[pb.Tensor("VIDEO", np.array([b"not a video"], dtype=object))])
    ok, failed = model.execute([request, broken])
    assert failed.has_error() and not ok.has_error()
    labels = [v.decode() for v in pb.get_output_tensor_by_name(ok, "LABELS").as_numpy()]
    scores = pb.get_output_tensor_by_name(ok, "SCORES").as_numpy()
    result = json.loads(pb.get_output_tensor_by_name(ok, "RESULT").as_numpy()[0])
    # What the service computes for the same file: the shared pipeline on the PyTorch network.
    network = bundle.build_model()
    stages = TorchStages(network) if name.startswith("full_video") else None
    with torch.no_grad():
        want = recognize_video(video, bundle.spec, network, stages=stages, batch_size=2)
    expected = topk(want.prediction.scores, 5, bundle.labels)
    assert labels == [label for label, _ in expected]
    np.testing.assert_allclose(scores, [score for _, score in expected], rtol=0, atol=1e-5)
    assert result["top5"][0]["label"] == labels[0] and result["frames"] == 70
    assert result["clips"] == want.prediction.inputs and result["unknown"] is False
    if name.startswith("full_video"):
        # Streamed: the early stage model chunk by chunk (twice), the late one once.
        assert utils.calls[f"{name}_late"] == 1 and utils.calls[f"{name}_early"] >= 4
        assert f"{name}_net" not in utils.calls
    else:
        assert utils.calls[f"{name}_net"] == -(-result["clips"] // 2)  # batches of 2


def test_tensorrt_backend_takes_the_bundles_aot_plan(
    tmp_path: Path, bundles: dict[str, Bundle]
) -> None:
    import shutil

    from models.bundle import load_bundle

    bundle = load_bundle(shutil.copytree(bundles["c3d_vll_tiny"].path, tmp_path / "c3d"))
    with pytest.raises(TritonExportError, match="exactly one TensorRT plan"):
        write_repository(bundle, tmp_path / "r0", backend="tensorrt")
    # Stand-in plan files: what export.trt records, not engines (nothing here loads them).
    for gpu, impl in (("nvidia-h200", "aot"), ("nvidia-h100-80gb-hbm3", "jit")):
        (bundle.path / f"model.{gpu}.plan").write_bytes(gpu.encode())
        bundle = add_bundle_file(bundle, f"model.{gpu}.plan", onnx="model.onnx", plugin_impl=impl)
    with pytest.raises(TritonExportError, match="found model.nvidia-h200.plan, model.nvidia-h100"):
        write_repository(bundle, tmp_path / "r1", backend="tensorrt")
    with pytest.raises(TritonExportError, match="Python plugin"):
        write_repository(bundle, tmp_path / "r2", backend="tensorrt", gpu="NVIDIA H100 80GB HBM3")
    with pytest.raises(TritonExportError, match="1..16"):
        write_repository(
            bundle, tmp_path / "r3", backend="tensorrt", gpu="NVIDIA H200", max_batch=32
        )
    repo = write_repository(bundle, tmp_path / "r4", backend="tensorrt", gpu="NVIDIA H200")
    config = _parse(repo / "c3d_net" / "config.pbtxt")
    assert (config.backend, config.platform, config.max_batch_size) == (
        "tensorrt",
        "tensorrt_plan",
        16,
    )
    assert (repo / "c3d_net" / "1" / "model.plan").read_bytes() == b"nvidia-h200"


def test_cli(
    tmp_path: Path, bundles: dict[str, Bundle], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"
    assert main(["--bundle", str(bundles["c3d_vll_tiny"].path), "--out", str(out), "--cpu"]) == 0
    assert "c3d_vll_tiny, c3d_vll_tiny_net" in capsys.readouterr().out
    config = _parse(out / "c3d_vll_tiny_net" / "config.pbtxt")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    bare = write_bundle(
        tmp_path / "bare",
        model=create_model("c3d_vll_tiny", num_classes=2),
        model_name="c3d_vll_tiny",
        model_kwargs={"num_classes": 2},
        family="c3d_vll",
        labels=["a", "b"],
        spec=get_spec("c3d_vll_tiny"),
    )
    assert main(["--bundle", str(bare.path), "--out", str(out)]) == 1
    assert "has no model.onnx" in capsys.readouterr().err
