"""Static int8 quantization of a bundle's ``model.onnx`` with ONNX Runtime, verified by agreement.

``python -m export.onnx --bundle DIR --quantize int8`` writes ``DIR/model.int8.onnx``
(:func:`export_int8`): ONNX Runtime static quantization in QDQ format (``QuantizeLinear`` /
``DequantizeLinear`` pairs around the quantized nodes, which ONNX Runtime's CPU provider fuses
into int8 kernels), int8 weights per output channel, uint8 activations with ranges calibrated
(min/max) on the bundle's **training** videos decoded, sampled and normalised exactly as the
service does (:func:`models.pipeline.decode_for` + :func:`models.pipeline.prepare_inputs`).

What stays float:

- every node but ``Conv``, ``Gemm`` and ``MatMul`` (pools, normalisation, reductions, softmax,
  the LSTM's gates...), and for ``ms3d`` and ``attention_lstm`` also their ``Gemm`` /
  ``MatMul`` nodes: ms3d's embedding is matched against class centres with a distance
  threshold, and the joint LSTM's recurrent products compound their error over the steps;
- full_video's ``actrec::TemporalCluster`` node, which also reads its input in float: the
  sign bits of the clustering come from the exact layer1 activations, not their int8 copy.

There is no tolerance on the outputs (int8 changes them by design); the check is the answer.
On the bundle's **test** videos, through :func:`models.stream.recognize_video` (the service's
path), the int8 graph's top-1 must agree with ``model.onnx``'s on at least
:data:`MIN_AGREEMENT` of the videos and its top-1 accuracy must be within
:data:`MAX_ACCURACY_DROP` of fp32's; otherwise nothing is written and :class:`ExportError`
says by how much it missed. Both figures are recorded in the manifest entry. docs/export.md#int8.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.onnx import INT8_FILE, ExportError, OnnxForward
from models.bundle import ONNX_FILE, REPOSITORY_FILE, Bundle, add_bundle_file, load_bundle
from models.fileio import atomic_write, sha256_file
from models.pipeline import Forward, decode_for, prepare_inputs
from models.repository import Repository
from models.stream import recognize_video
from video.errors import VideoError

__all__ = [
    "MAX_ACCURACY_DROP",
    "MIN_AGREEMENT",
    "QUANTIZED_OPS",
    "Agreement",
    "export_int8",
    "measure_agreement",
    "quantize_graph",
]

# The int8 graph's top-1 must equal fp32's on this fraction of the test videos ...
MIN_AGREEMENT = 0.99
# ... and its top-1 accuracy may be at most this much below fp32's (a fraction: 1 point).
MAX_ACCURACY_DROP = 0.01
# Ops whose compute is quantized; everything else runs in float between the QDQ pairs.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# Ops quantized too so that int8 flows from one quantized op to the next (ONNX Runtime fuses a
# DequantizeLinear -> op -> QuantizeLinear group into its int8 kernel only when the op's output
# is quantized): activations, pools, residual adds, and full_video's shift (slices, concat).
_INT8_FLOW_OPS = (
    "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Concat", "Slice",
    "Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
)  # fmt: skip
# Shape-only ops between an activation and the clustering node, kept float with it.
_PASSTHROUGH_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"})
# Per family, quantizable ops kept float (see the module docstring).
_FLOAT_OPS = {"ms3d": ("Gemm", "MatMul"), "attention_lstm": ("Gemm", "MatMul")}
# Calibration batches of at most this many inputs (the calibrator keeps only each batch's
# per-tensor minimum and maximum, so memory does not grow with the number of videos).
_CALIBRATION_BATCH = 8
DEFAULT_CALIBRATION_VIDEOS = 32


@dataclass(frozen=True)
class Agreement:
    """The int8 graph against fp32 on the test videos.

    Attributes:
        videos: Test videos compared (undecodable ones are left out).
        agreement: Fraction of them where both give the same top-1.
        fp32_top1: Top-1 accuracy of ``model.onnx``.
        int8_top1: Top-1 accuracy of the int8 graph.
    """

    videos: int
    agreement: float
    fp32_top1: float
    int8_top1: float


# ---------------------------------------------------------------------------------------------
# The data: the bundle's training and test videos


def _dataset_videos(
    bundle: Bundle, data: str | os.PathLike | None
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """``(train, test)`` videos of the bundle's dataset split as ``(path, class name)``, cut to
    the run's ``limit_train`` / ``limit_test``; ``data`` overrides the recorded dataset path."""
    from training.datasets import DatasetError, load_dataset

    config = bundle.config
    root = data if data is not None else config.get("data")
    if not root:
        raise ExportError(
            f"{bundle.path}: the manifest records no training dataset; give its path (--data)"
        )
    try:
        splits = load_dataset(Path(root), split=int(config.get("split") or 1))
    except (DatasetError, OSError) as err:
        raise ExportError(
            f"{bundle.path}: cannot read the training dataset {root} ({err}); give its path "
            "(--data)"
        ) from err

    def named(entries: Sequence[Any], limit: int) -> list[tuple[Path, str]]:
        entries = entries[:limit] if limit else entries
        return [(Path(e.path), splits.classes[e.label]) for e in entries]

    train = named(splits.train, int(config.get("limit_train") or 0))
    test = named(splits.test, int(config.get("limit_test") or 0))
    if not train or not test:
        raise ExportError(f"{bundle.path}: dataset {root} has no training or no test videos")
    return train, test


def _evenly(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread over ``items`` (all of them for ``count`` 0 or past the end);
    split lists are sorted by class, so this covers every class."""
    if not count or count >= len(items):
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def _calibration_batches(
    videos: Sequence[Path], bundle: Bundle, max_inputs: int
) -> Iterator[np.ndarray]:
    """Network inputs of ``videos`` as the service makes them, in batches."""
    spec = bundle.spec
    for path in videos:
        try:
            frames, _ = decode_for(path, spec)
        except VideoError:
            continue  # an unusable training video only means one fewer calibration sample
        inputs = prepare_inputs(frames, spec, max_inputs=max_inputs)
        for start in range(0, len(inputs), _CALIBRATION_BATCH):
            yield inputs[start : start + _CALIBRATION_BATCH].numpy()


class _Reader:
    """An ONNX Runtime ``CalibrationDataReader`` over :func:`_calibration_batches`."""

    def __init__(self, input_name: str, batches: Iterator[np.ndarray]) -> None:
        self._input = input_name
        self._batches = batches
        self.batches = 0
        self.inputs = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.batches += 1
        self.inputs += len(batch)
        return {self._input: np.ascontiguousarray(batch, dtype=np.float32)}


# ---------------------------------------------------------------------------------------------
# The graph


def _is_custom(node: onnx.NodeProto) -> bool:
    return node.domain not in ("", "ai.onnx", "com.microsoft")


def _cluster_paths(proto: onnx.ModelProto) -> list[str]:
    """Names of the shape-only nodes feeding custom-domain nodes (``actrec::TemporalCluster``),
    back to the op that computes their input."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    names: list[str] = []
    todo = [i for n in proto.graph.node if _is_custom(n) for i in n.input]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.op_type in _PASSTHROUGH_OPS and node.name not in names:
            names.append(node.name)
            todo.extend(node.input[:1])
    return names


def _float_nodes(proto: onnx.ModelProto, family: str) -> list[str]:
    """Names of the quantizable nodes that stay float for ``family``, and the shape-only
    nodes in front of the clustering node."""
    kept = _FLOAT_OPS.get(family, ())
    return [n.name for n in proto.graph.node if n.op_type in kept] + _cluster_paths(proto)


def _float_inputs_for_custom_nodes(proto: onnx.ModelProto, float_nodes: Sequence[str]) -> int:
    """Rewire custom-domain nodes (``actrec::TemporalCluster``) and the shape-only nodes in
    front of them (``float_nodes``) that read a ``DequantizeLinear`` output to that pair's
    float input, so the clustering sees exact activations; returns how many inputs moved."""
    dq_source: dict[str, str] = {}
    q_source = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in q_source:
            dq_source[node.output[0]] = q_source[node.input[0]]
    moved = 0
    path = set(float_nodes)
    for node in proto.graph.node:
        if not (_is_custom(node) or node.name in path):
            continue
        for index, name in enumerate(node.input):
            if name in dq_source:
                node.input[index] = dq_source[name]
                moved += 1
    return moved


def quantize_graph(
    source: str | os.PathLike,
    target: str | os.PathLike,
    reader: Any,
    *,
    family: str,
) -> dict[str, Any]:
    """Quantize the ONNX file ``source`` into ``target`` (QDQ, see the module docstring),
    calibrated on what ``reader`` (a ``CalibrationDataReader``) yields.

    Returns:
        What the manifest records of the quantization (formats, ops, nodes kept float).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(source))
    excluded = _float_nodes(proto, family)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "quantized.onnx"
        quantize_static(
            str(source),
            str(raw),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=[*QUANTIZED_OPS, *_INT8_FLOW_OPS],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(raw))
    moved = _float_inputs_for_custom_nodes(quantized, _cluster_paths(proto))
    quantized.producer_name = "actrec.export.quantize"
    onnx.checker.check_model(quantized)
    Path(target).write_bytes(quantized.SerializeToString())
    nodes = quantized.graph.node
    return {
        "quant_format": "QDQ",
        "activations": "uint8 per tensor (min/max calibration)",
        "weights": "int8 per output channel",
        "quantized_ops": sorted(
            {n.op_type for n in proto.graph.node if n.op_type in QUANTIZED_OPS}
            - set(_FLOAT_OPS.get(family, ()))
        ),
        "float_nodes": excluded,
        "float_inputs_restored": moved,
        "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in nodes),
    }


# ---------------------------------------------------------------------------------------------
# Agreement


def _top1(
    forward: Forward, bundle: Bundle, videos: Sequence[tuple[Path, str]]
) -> dict[Path, str | None]:
    """Each decodable video's top-1 label through the service's streamed path."""
    spec = bundle.spec
    centres = gamma = None
    labels = bundle.labels
    if spec.aggregator == "nearest_centre":
        repo = Repository.load(bundle.file(REPOSITORY_FILE))
        centres, gamma, labels = repo.centres_tensor(), repo.gamma, repo.names
    out: dict[Path, str | None] = {}
    for path, _ in videos:
        try:
            answer = recognize_video(
                path,
                spec,
                forward,
                max_inputs=bundle.eval_max_clips,
                centres=centres,
                gamma=gamma,
            )
        except VideoError:
            continue
        scores = answer.prediction.scores
        out[path] = None if scores.unknown else labels[scores.label]
    return out


def measure_agreement(
    bundle: Bundle, int8_file: str | os.PathLike, videos: Sequence[tuple[Path, str]]
) -> Agreement:
    """Top-1 of ``model.onnx`` and of ``int8_file`` on ``videos`` (``(path, class)``)."""
    fp32 = _top1(OnnxForward(bundle.file(ONNX_FILE)), bundle, videos)
    int8 = _top1(OnnxForward(int8_file), bundle, videos)
    truth = dict(videos)
    common = [p for p in fp32 if p in int8]
    if not common:
        raise ExportError(f"{bundle.path}: none of the {len(videos)} test videos decodes")
    n = len(common)
    return Agreement(
        videos=n,
        agreement=sum(fp32[p] == int8[p] for p in common) / n,
        fp32_top1=sum(fp32[p] == truth[p] for p in common) / n,
        int8_top1=sum(int8[p] == truth[p] for p in common) / n,
    )


# ---------------------------------------------------------------------------------------------
# The bundle file


def export_int8(
    bundle: Bundle | str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    calibration_videos: int = DEFAULT_CALIBRATION_VIDEOS,
    test_videos: int = 0,
    min_agreement: float = MIN_AGREEMENT,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
) -> Bundle:
    """Write, verify and record ``<bundle>/model.int8.onnx`` from the bundle's ``model.onnx``.

    Args:
        bundle: A loaded bundle or its directory, exported (``model.onnx``).
        data: The training dataset, where it is not at the path the manifest records.
        calibration_videos: Training videos to calibrate on, evenly spread over the split
            (0: all).
        test_videos: Test videos to check on, evenly spread over the split (0: all).
        min_agreement: Least fraction of test videos where int8 and fp32 agree on top-1.
        max_accuracy_drop: Largest drop of top-1 accuracy (a fraction) accepted.

    Returns:
        The reloaded bundle, whose manifest lists ``model.int8.onnx`` with ``precision``,
        the quantization, ``calibration`` and ``agreement``.

    Raises:
        ExportError: No dataset, or the int8 graph misses a threshold (nothing is written).
        BundleError: The bundle does not load or has no ``model.onnx``.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    source = bundle.file(ONNX_FILE)
    train, test = _dataset_videos(bundle, data)
    calibration = [path for path, _ in _evenly(train, calibration_videos)]
    checked = _evenly(test, test_videos)
    name = INT8_FILE
    reader = _Reader(
        onnx.load(str(source), load_external_data=False).graph.input[0].name,
        _calibration_batches(calibration, bundle, bundle.eval_max_clips),
    )
    result: dict[str, Any] = {}

    def write_and_verify(tmp: Path) -> None:
        result.update(quantize_graph(source, tmp, reader, family=bundle.family))
        if reader.inputs == 0:
            raise ExportError(f"{bundle.path}: no training video decoded for calibration")
        agreement = measure_agreement(bundle, tmp, checked)
        result["agreement"] = agreement
        drop = agreement.fp32_top1 - agreement.int8_top1
        print(
            f"{bundle.name}: int8 vs fp32 on {agreement.videos} test videos: top-1 agreement "
            f"{agreement.agreement:.2%}, top-1 {agreement.int8_top1:.2%} vs "
            f"{agreement.fp32_top1:.2%}"
        )
        if agreement.agreement < min_agreement or drop > max_accuracy_drop:
            raise ExportError(
                f"{bundle.path}: the int8 graph agrees with fp32 on {agreement.agreement:.2%} "
                f"of {agreement.videos} test videos (needs >= {min_agreement:.2%}) and its "
                f"top-1 is {agreement.int8_top1:.2%} vs {agreement.fp32_top1:.2%} (drop "
                f"allowed {max_accuracy_drop:.2%}); {name} not written"
            )

    atomic_write(bundle.path / name, write_and_verify)
    fp32 = bundle.file_info(ONNX_FILE)
    keys = ("opset", "inputs", "outputs", "dynamic_axes", "dims", "custom_ops")
    info: dict[str, Any] = {k: fp32[k] for k in keys if k in fp32}
    agreement = result.pop("agreement")
    info.update(
        precision="int8",
        source=ONNX_FILE,
        source_sha256=sha256_file(source),
        **result,
        calibration={
            "videos": len(calibration),
            "inputs": reader.inputs,
            "batches": reader.batches,
            "split": "train",
        },
        agreement={
            "videos": agreement.videos,
            "split": "test",
            "top1_agreement": agreement.agreement,
            "fp32_top1": agreement.fp32_top1,
            "int8_top1": agreement.int8_top1,
            "min_agreement": min_agreement,
            "max_accuracy_drop": max_accuracy_drop,
        },
        onnxruntime=_ort_version(),
    )
    add_bundle_file(bundle, name, **info)
    return load_bundle(bundle.path)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
