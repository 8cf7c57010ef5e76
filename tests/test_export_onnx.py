"""ONNX export: all four families match PyTorch in ONNX Runtime; the TemporalCluster node and
its model-local function; dynamic frame counts for full_video; full_video's two stage graphs
and the streamed recognition on them; verification failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import export.onnx as export_onnx_module
from export.onnx import (
    CLUSTER_DOMAIN,
    CLUSTER_OP,
    PLUGIN_NAMESPACE,
    ExportError,
    OnnxStages,
    export_onnx,
    main,
    onnx_forward,
    temporal_cluster_function,
)
from models import create_model, get_spec
from models.bundle import (
    ONNX_EARLY_FILE,
    ONNX_FILE,
    ONNX_LATE_FILE,
    Bundle,
    BundleError,
    add_bundle_file,
    load_bundle,
    write_bundle,
)
from models.clustering import temporal_cluster
from models.fileio import sha256_file
from models.pipeline import decode_for, predict_frames
from models.stream import CHUNK_FRAMES, TorchStages, recognize_video

# (registry name, constructor kwargs, constant-fold the graph): the unrolled joint LSTM skips
# the optimizer, which takes ~11 s on its graph and changes nothing ONNX Runtime computes.
CASES = [
    ("c3d_vll_tiny", {"num_classes": 4}, True),
    ("attention_lstm_tiny", {"num_classes": 4}, False),
    ("ms3d_tiny", {}, True),
    ("full_video_tiny", {"num_classes": 4}, True),
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bundle(directory: Path, name: str, kwargs: dict) -> Bundle:
    torch.manual_seed(0)
    defaults = get_spec(name)
    model = create_model(name, **kwargs)
    return write_bundle(
        directory / name,
        model=model,
        model_name=name,
        model_kwargs=kwargs,
        family=defaults.family,
        labels=[f"c{i}" for i in range(kwargs.get("num_classes", 4))],
        spec=defaults,
    )


@pytest.fixture(scope="module")
def full_video_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    bundle = _bundle(tmp_path_factory.mktemp("fv"), "full_video_tiny", {"num_classes": 4})
    return export_onnx(bundle, opset=20)


# ---------------------------------------------------------------------------------------------
# The clustering function body alone


def _cluster_model(num_clusters: int, method: str, opset: int = 17) -> bytes:
    """A model whose graph is one TemporalCluster node, run by ONNX Runtime via the function."""
    node = helper.make_node(
        CLUSTER_OP,
        ["x"],
        ["y"],
        domain=CLUSTER_DOMAIN,
        num_clusters=num_clusters,
        method=method,
        plugin_namespace=PLUGIN_NAMESPACE,
    )
    graph = helper.make_graph(
        [node],
        "cluster",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", "c", "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "g", "c", "h", "w"])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CLUSTER_DOMAIN, 1)],
        functions=[temporal_cluster_function(num_clusters, method, opset)],
        ir_version=9,
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run(model: bytes, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def test_cluster_function_hand_computed() -> None:
    # Four frames of four features; sign patterns ++++, -+++, --++, ---- give neighbour
    # Hamming distances 1/4, 1/4, 2/4. Frame t holds its pattern times (t + 1).
    signs = torch.tensor(
        [[1, 1, 1, 1], [-1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, -1]], dtype=torch.float32
    )
    x = (signs * torch.arange(1, 5, dtype=torch.float32)[:, None]).reshape(1, 4, 4, 1, 1)
    # Cumulative, g = 2: C = 0, 1/4, 1/2, 1 -> floor(2C) = 0, 0, 1, 2 -> min(., 1) = 0, 0, 1, 1.
    cumulative = torch.tensor([[-0.5, 1.5, 1.5, 1.5], [-3.5, -3.5, -0.5, -0.5]])
    # Slope, g = 2: one cut after the largest distance (frames 2 | 3) -> 0, 0, 0, 1.
    slope = torch.tensor([[-4 / 3, 0.0, 2.0, 2.0], [-4.0, -4.0, -4.0, -4.0]])
    # Uniform, g = 2: floor(2i / 4) = 0, 0, 1, 1, the same segments as cumulative here.
    for method, expected in (("cumulative", cumulative), ("slope", slope), ("uniform", cumulative)):
        got = _run(_cluster_model(2, method), x).reshape(2, 4)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=method)


@pytest.mark.parametrize("method", ["cumulative", "slope", "uniform"])
@pytest.mark.parametrize("num_clusters", [1, 3, 5])
def test_cluster_function_matches_reference(method: str, num_clusters: int) -> None:
    model = _cluster_model(num_clusters, method)
    generator = torch.Generator().manual_seed(num_clusters)
    for frames in (1, 2, 4, 7, 13):
        x = torch.randn(2, frames, 3, 2, 2, generator=generator)
        # A still stretch (zero distances) and a repeated frame exercise ties and fallbacks.
        if frames >= 4:
            x[1, 1:] = x[1, :1]
            x[0, 2] = x[0, 1]
        expected = temporal_cluster(x, num_clusters, method)
        got = _run(model, x)
        assert got.shape == (2, num_clusters, 3, 2, 2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"T={frames}")


# ---------------------------------------------------------------------------------------------
# Whole networks


@pytest.mark.parametrize(("name", "kwargs", "optimize"), CASES, ids=[c[0] for c in CASES])
def test_every_family_exports_and_matches_pytorch(
    tmp_path: Path, name: str, kwargs: dict, optimize: bool
) -> None:
    bundle = export_onnx(_bundle(tmp_path, name, kwargs), optimize=optimize)
    info = bundle.manifest["files"]["model.onnx"]
    path = bundle.path / "model.onnx"
    assert info["sha256"] == sha256_file(path)
    assert load_bundle(bundle.path).has("model.onnx")  # the checksum verifies on reload
    assert info["opset"] == 17 and info["max_abs_diff"] <= 1e-3
    assert info["inputs"][0]["name"] == "input" and info["outputs"][0]["name"] == "output"
    dynamic_time = name.startswith("full_video")
    assert info["dynamic_axes"]["input"] == (
        {"0": "clips", "2": "frames"} if dynamic_time else {"0": "clips"}
    )
    # Only a clustering full_video network is split into stages.
    assert bundle.has(ONNX_EARLY_FILE) == bundle.has(ONNX_LATE_FILE) == (name == "full_video_tiny")

    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == [
        "output"
    ]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "clips"

    # A batch size the export never saw, through a fresh session.
    defaults = bundle.spec
    length = defaults.input_frames or 11
    x = torch.randn(1, 3, length, *defaults.input_size, generator=torch.Generator().manual_seed(5))
    model = bundle.build_model()
    with torch.no_grad():
        expected = model(x)
    got = onnx_forward(path)(x)
    assert got.shape == expected.shape
    assert info["outputs"][0]["shape"] == ["clips", *expected.shape[1:]]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_full_video_graph_holds_one_cluster_node_backed_by_function(
    full_video_bundle: Bundle,
) -> None:
    model = onnx.load(full_video_bundle.path / "model.onnx")
    assert sorted((o.domain, o.version) for o in model.opset_import) == [
        ("", 20),
        (CLUSTER_DOMAIN, 1),
    ]
    custom = [n for n in model.graph.node if n.domain == CLUSTER_DOMAIN]
    assert [n.op_type for n in custom] == [CLUSTER_OP]
    attrs = {a.name: helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attrs == {"num_clusters": 8, "method": b"cumulative", "plugin_namespace": b"actrec"}
    # The decomposition lives only in the function, not in the main graph.
    assert not {"CumSum", "Xor", "ArgMax"} & {n.op_type for n in model.graph.node}
    (function,) = model.functions
    assert (function.domain, function.name) == (CLUSTER_DOMAIN, CLUSTER_OP)
    body = {n.op_type for n in function.node}
    assert {"Greater", "Xor", "ReduceSum", "CumSum", "Floor", "Equal", "MatMul"} <= body
    info = full_video_bundle.manifest["files"]["model.onnx"]
    assert info["custom_ops"][0]["plugin_namespace"] == "actrec"
    assert info["dims"]["frames"]["min"] == 1


def test_full_video_dynamic_frames_through_one_file(full_video_bundle: Bundle) -> None:
    forward = onnx_forward(full_video_bundle.path / "model.onnx")
    model = full_video_bundle.build_model()
    h, w = full_video_bundle.spec.input_size
    generator = torch.Generator().manual_seed(3)
    for frames in (9, 32, 100):
        x = torch.randn(1, 3, frames, h, w, generator=generator)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(forward(x), expected, rtol=1e-4, atol=1e-4, msg=f"T={frames}")


def test_verification_on_a_real_video(tmp_path: Path, make_video) -> None:
    video = make_video("walk.mp4", n=20, height=64, width=64)
    bundle = export_onnx(_bundle(tmp_path, "c3d_vll_tiny", {"num_classes": 4}), video=video)
    checks = bundle.manifest["files"]["model.onnx"]["verified_on"]
    (entry,) = [c for c in checks if c["name"] == "video walk.mp4"]
    assert entry["shape"] == [1, 3, 16, 56, 56]  # 20 frames -> one 16-frame clip, centre crop
    assert entry["max_abs_diff"] <= 1e-3


def test_difference_above_tolerance_fails_with_the_number(tmp_path: Path, monkeypatch) -> None:
    bundle = _bundle(tmp_path, "c3d_vll_tiny", {"num_classes": 4})
    real = export_onnx_module.onnx_forward

    def shifted(path, **kwargs):
        forward = real(path, **kwargs)
        return lambda x: forward(x) + 0.5

    monkeypatch.setattr(export_onnx_module, "onnx_forward", shifted)
    with pytest.raises(ExportError, match=r"differs from PyTorch by 0\.5"):
        export_onnx(bundle, tolerance=0.01)
    assert not (bundle.path / "model.onnx").exists()
    assert not list(bundle.path.glob("*.tmp"))
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert "model.onnx" not in manifest["files"]


def test_opset_above_20_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "c3d_vll_tiny", {"num_classes": 4})
    with pytest.raises(ExportError, match="opset 21"):
        export_onnx(bundle, opset=21)


def test_cli(tmp_path: Path, capsys) -> None:
    bundle = _bundle(tmp_path, "ms3d_tiny", {})
    assert main(["--bundle", str(bundle.path)]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and "model.onnx" in out
    assert main(["--bundle", str(tmp_path / "missing")]) == 1
    assert "not a model bundle" in capsys.readouterr().err


def test_onnx_forward_returns_float32_tensor(full_video_bundle: Bundle) -> None:
    x = np.zeros((1, 3, 4, *full_video_bundle.spec.input_size), dtype=np.float32)
    out = onnx_forward(full_video_bundle.path / "model.onnx", threads=1)(torch.from_numpy(x))
    assert out.dtype == torch.float32 and out.shape == (1, 4)


# ---------------------------------------------------------------------------------------------
# full_video's stage graphs


def test_stage_graphs_are_verified_and_recorded(full_video_bundle: Bundle) -> None:
    bundle = load_bundle(full_video_bundle.path)  # every checksum, the stage files' included
    early = bundle.file_info(ONNX_EARLY_FILE)
    late = bundle.file_info(ONNX_LATE_FILE)
    assert (early["context"], early["num_clusters"], early["clustering"]) == (2, 8, "cumulative")
    for info in (early, late):
        assert info["opset"] == 20 and info["max_abs_diff"] <= info["tolerance"] == 1e-3
        names = [check["name"] for check in info["verified_on"]]
        assert [n.split(" -> ")[0] for n in names] == [f"spec N=2 T={t}" for t in (1, 9, 33)]
        # The weights are read from model.onnx as exported now, not stored a second time.
        link = info["external_data"]
        assert link["location"] == ONNX_FILE
        assert link["sha256"] == bundle.file_info(ONNX_FILE)["sha256"]
        assert link["tensors"] > 0
    assert early["inputs"][0]["shape"] == ["clips", 3, "frames", 64, 64]
    assert early["outputs"][0]["shape"] == ["clips", "frames", 16, 16, 16]
    assert early["dims"]["frames"] == {"min": 1, "opt": CHUNK_FRAMES, "max": CHUNK_FRAMES + 4}
    assert late["inputs"][0]["shape"] == ["clips", 8, 16, 16, 16]
    assert late["outputs"][0]["shape"] == ["clips", 4]
    assert late["stage"] == "late" and early["stage"] == "early"
    for name in (ONNX_EARLY_FILE, ONNX_LATE_FILE):
        assert (bundle.path / name).stat().st_size < 200_000, name
        graph = onnx.load(bundle.path / name).graph  # follows the external data
        assert not {n.domain for n in graph.node} - {""}  # no custom node: no plugin needed
        assert [i.name for i in graph.input] == ["input"]
        assert [o.name for o in graph.output] == ["output"]
    dims = onnx.load(bundle.path / ONNX_EARLY_FILE).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims][:3] == ["clips", "", "frames"]


def test_stage_graphs_match_the_torch_stages(full_video_bundle: Bundle) -> None:
    model = full_video_bundle.build_model()
    torch_stages = TorchStages(model)
    stages = OnnxStages(full_video_bundle, threads=1)
    assert (stages.context, stages.num_clusters, stages.clustering) == (2, 8, "cumulative")
    generator = torch.Generator().manual_seed(7)
    for frames in (1, 5, CHUNK_FRAMES + 4, 100):
        x = torch.randn(1, 3, frames, 64, 64, generator=generator)
        got = stages.early(x)
        assert got.shape == (1, frames, 16, 16, 16)
        torch.testing.assert_close(got, torch_stages.early(x), rtol=1e-4, atol=1e-4)
    means = torch.rand(1, 8, 16, 16, 16, generator=generator)
    torch.testing.assert_close(stages.late(means), torch_stages.late(means), rtol=1e-4, atol=1e-4)


def test_streamed_recognition_on_onnx_stages_equals_torch_and_in_memory(
    full_video_bundle: Bundle, make_video
) -> None:
    # ~100 frames in chunks of 16: several chunks each pass, each early call with context.
    video = make_video("long.mp4", n=100, height=64, width=64)
    bundle = full_video_bundle
    spec = bundle.spec
    model = bundle.build_model()
    onnx_answer = recognize_video(
        video,
        spec,
        onnx_forward(bundle.file(ONNX_FILE), threads=1),
        stages=OnnxStages(bundle, threads=1),
        chunk_frames=16,
    )
    torch_answer = recognize_video(video, spec, model, stages=TorchStages(model), chunk_frames=16)
    frames, _ = decode_for(video, spec)
    assert len(frames) == 100
    with torch.no_grad():
        in_memory = predict_frames(model, frames, spec)
    want = in_memory.scores
    for answer in (onnx_answer, torch_answer):
        got = answer.prediction.scores
        assert got.order[:5].tolist() == want.order[:5].tolist()
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5)


def test_stage_graphs_are_refused_once_model_onnx_changed(
    tmp_path: Path, full_video_bundle: Bundle
) -> None:
    copy = load_bundle(shutil.copytree(full_video_bundle.path, tmp_path / "copy"))
    proto = onnx.load(copy.path / ONNX_FILE)
    proto.doc_string = "changed"  # another valid model.onnx: other bytes, other offsets
    onnx.save(proto, copy.path / ONNX_FILE)
    bundle = add_bundle_file(copy, ONNX_FILE)
    with pytest.raises(BundleError, match="has changed since"):
        OnnxStages(bundle)


def test_onnx_stages_need_the_stage_graphs(tmp_path: Path) -> None:
    bundle = export_onnx(_bundle(tmp_path, "c3d_vll_tiny", {"num_classes": 4}))
    with pytest.raises(BundleError, match="no model.early.onnx"):
        OnnxStages(bundle.path)


# ---------------------------------------------------------------------------------------------
# FP16 twins (model.fp16.onnx and the stage graphs'), for strongly typed FP16 TensorRT engines


def _elem_type(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def test_fp16_twins_of_full_video_match_pytorch(tmp_path: Path, full_video_bundle: Bundle) -> None:
    from export.onnx import export_fp16

    bundle = export_fp16(shutil.copytree(full_video_bundle.path, tmp_path / "fv"))
    info = bundle.file_info("model.fp16.onnx")
    assert info["precision"] == "fp16" and info["source"] == ONNX_FILE
    assert info["fp32_ops"] == ["ReduceMean", "actrec::TemporalCluster"]
    assert 0 < info["max_abs_diff"] <= info["tolerance"] == 5e-2
    assert [c["name"] for c in info["verified_on"]] == [f"spec N=2 T={t}" for t in (1, 9, 33)]
    assert info["custom_ops"] == bundle.file_info(ONNX_FILE)["custom_ops"]
    proto = onnx.load(bundle.path / "model.fp16.onnx")
    graph = proto.graph
    # The interface stays float32; the weights are FP16 but what feeds FP32 nodes.
    assert [_elem_type(v) for v in (*graph.input, *graph.output)] == [TensorProto.FLOAT] * 2
    floats = [t.data_type for t in graph.initializer if t.data_type in (1, TensorProto.FLOAT16)]
    assert floats and set(floats) == {TensorProto.FLOAT16}
    producers = {out: node for node in graph.node for out in node.output}
    (cluster,) = [n for n in graph.node if n.op_type == CLUSTER_OP]
    feed = producers[cluster.input[0]]
    assert feed.op_type == "Cast" and helper.get_attribute_value(feed.attribute[0]) == 1
    # A frame count and batch the checks never used, through a fresh session.
    x = torch.randn(2, 3, 40, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = bundle.build_model()(x)
    got = onnx_forward(bundle.path / "model.fp16.onnx")(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-2)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
    # The stage graphs' twins: verified as the FP32 ones were, and self-contained.
    for name in ("model.early.fp16.onnx", "model.late.fp16.onnx"):
        entry = bundle.file_info(name)
        assert entry["precision"] == "fp16" and entry["max_abs_diff"] <= 5e-2
        assert "external_data" not in entry
        model = onnx.load(bundle.path / name, load_external_data=False)
        assert all(t.data_location != TensorProto.EXTERNAL for t in model.graph.initializer)
    assert bundle.file_info("model.late.fp16.onnx")["fp32_ops"] == ["ReduceMean"]


def test_fp16_export_of_a_clip_family_and_its_tolerance(tmp_path: Path) -> None:
    bundle = export_onnx(_bundle(tmp_path, "c3d_vll_tiny", {"num_classes": 4}), fp16=True)
    fp16, fp32 = (bundle.path / f for f in ("model.fp16.onnx", "model.onnx"))
    assert bundle.file_info("model.fp16.onnx")["max_abs_diff"] <= 5e-2
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(bundle, fp16=True, fp16_tolerance=1e-9)
    assert load_bundle(bundle.path).has("model.onnx")  # rewritten and verified in FP32
    assert not list(bundle.path.glob("*.tmp"))
