"""Export a model bundle's network to ONNX, checked against PyTorch with ONNX Runtime.

``python -m export.onnx --bundle DIR [--opset N] [--video FILE] [--tolerance X]`` writes
``DIR/model.onnx`` and records it in the bundle's manifest (checksum, opset, input/output names
and shapes, dynamic axes, the ONNX Runtime vs PyTorch difference). The graph has one input
``input`` (normalised clips, as :func:`models.pipeline.prepare_inputs` makes them) and one
output ``output``, exactly what the eval-mode PyTorch forward returns; ``N`` is dynamic for
every family, ``T`` also for ``full_video``.

A ``full_video`` bundle that clusters also gets the two stage graphs its streamed two-pass
clustering runs (:mod:`models.stream`): ``model.early.onnx`` (stem + layer1, frames ->
layer1 activations, dynamic frame axis) and ``model.late.onnx`` (layer2 .. head, the ``g``
cluster means -> logits), each verified against :class:`models.stream.TorchStages`. Their
weights are ONNX external data pointing into ``model.onnx``, which holds the same tensors, so
the split adds the graphs and not a second copy of the network. :class:`OnnxStages` runs them.

``--quantize int8`` also writes ``model.int8.onnx`` (:mod:`export.quantize`): ONNX Runtime
static int8 quantization (QDQ) calibrated on the bundle's training videos, written only when
its top-1 agrees with ``model.onnx`` on the test videos (>= 99%, accuracy within 1 point).

``--fp16`` also writes the FP16 twins of these graphs (``model.fp16.onnx``,
``model.early.fp16.onnx``, ``model.late.fp16.onnx``; :func:`export_fp16`,
:mod:`export.fp16`): FP16 but for the clustering and the reductions, float32 in and out,
checked against the PyTorch network the same way, for strongly typed FP16 TensorRT engines.

The full-video clustering becomes one ``actrec::TemporalCluster`` node backed by a
model-local ONNX function traced from :func:`models.clustering.temporal_cluster`, which
TensorRT can map to the plugin of :mod:`export.plugin`. The graph, the exporter choice and
the figures: docs/export.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import os
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
from onnx import external_data_helper, helper, numpy_helper
from torch import Tensor, nn

from export.fp16 import FP16_TOLERANCE, fp16_name, to_fp16
from models.bundle import (
    ONNX_EARLY_FILE,
    ONNX_FILE,
    ONNX_INPUT,
    ONNX_LATE_FILE,
    ONNX_OUTPUT,
    Bundle,
    BundleError,
    add_bundle_file,
    load_bundle,
)
from models.clustering import temporal_cluster
from models.fileio import atomic_write
from models.pipeline import decode_for, prepare_inputs, run_network
from models.spec import VariantSpec
from models.stream import CHUNK_FRAMES, TorchStages, stages_for

__all__ = [
    "CLUSTER_DOMAIN",
    "CLUSTER_OP",
    "PLUGIN_NAMESPACE",
    "MAX_OPSET",
    "INT8_FILE",
    "ExportError",
    "Verification",
    "export_onnx",
    "export_network",
    "export_fp16",
    "export_stages",
    "share_weights",
    "stage_settings",
    "OnnxStages",
    "temporal_cluster_function",
    "example_input",
    "OnnxForward",
    "onnx_forward",
    "main",
]


CLUSTER_DOMAIN = "actrec"
CLUSTER_OP = "TemporalCluster"
# The TensorRT plugin is registered as "actrec::TemporalCluster" (export.plugin).
PLUGIN_NAMESPACE = "actrec"
# TensorRT 10's ONNX parser reads opsets up to 20; the TorchScript exporter stops there too.
MAX_OPSET = 20
MIN_OPSET = 17
# Absolute difference allowed between ONNX Runtime and PyTorch outputs.
DEFAULT_TOLERANCE = 1e-3
# Clips per batch the TensorRT profiles are built for (min, opt, max); frames for full_video.
CLIP_RANGE = (1, 4, 16)
FRAME_RANGE = (1, 32, 512)
# The stage graphs run one video at a time; the early one on a chunk of frames plus the
# temporal shift's context on both sides (models.stream._early).
STAGE_CLIP_RANGE = (1, 1, 1)
# The int8 twin of model.onnx (export.quantize).
INT8_FILE = "model.int8.onnx"
# Initializers at least this large are read from model.onnx instead of stored again.
SHARE_MIN_BYTES = 1024


class ExportError(RuntimeError):
    """The export failed or ONNX Runtime disagrees with PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class Verification:
    """One comparison of ONNX Runtime with PyTorch.

    Attributes:
        name: What was compared (``"spec N=3"``, ``"video clip.mp4"``...).
        shape: Input shape.
        output_shape: Output shape.
        max_abs_diff: Largest absolute difference of the outputs.
    """

    name: str
    shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float


# ---------------------------------------------------------------------------------------------
# The TemporalCluster node


class _TemporalClusterOp(torch.autograd.Function):
    """Runs the PyTorch clustering; exports as one ``actrec::TemporalCluster`` node."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, num_clusters: int, method: str) -> Tensor:
        return temporal_cluster(x, num_clusters, method)

    @staticmethod
    def symbolic(g: Any, x: Any, num_clusters: int, method: str) -> Any:
        out = g.op(
            f"{CLUSTER_DOMAIN}::{CLUSTER_OP}",
            x,
            num_clusters_i=num_clusters,
            method_s=method,
            plugin_namespace_s=PLUGIN_NAMESPACE,
        )
        sizes = x.type().varyingSizes() if x.type().dim() is not None else None
        if sizes is not None and len(sizes) == 5:
            out.setType(x.type().with_sizes([sizes[0], num_clusters, *sizes[2:]]))
        return out


def _clustering_of(model: nn.Module) -> tuple[int, str] | None:
    """``(g, method)`` of a network that clusters frames, else ``None``."""
    method = getattr(model, "clustering", None)
    if method in (None, "none") or not hasattr(model, "cluster"):
        return None
    return int(cast(Any, model).num_clusters), str(method)


@contextlib.contextmanager
def _cluster_as_node(model: nn.Module) -> Iterator[None]:
    """While exporting, route ``model.cluster`` through :class:`_TemporalClusterOp`."""
    spec = _clustering_of(model)
    if spec is None:
        yield
        return
    g, method = spec
    patched: Any = model  # an nn.Module's attributes are typed as tensors or modules
    patched.cluster = types.MethodType(
        lambda self, features: _TemporalClusterOp.apply(features, g, method), model
    )
    try:
        yield
    finally:
        del model.cluster


class _ClusterOnly(nn.Module):
    def __init__(self, num_clusters: int, method: str) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.method = method

    def forward(self, x: Tensor) -> Tensor:
        return temporal_cluster(x, self.num_clusters, self.method)


def temporal_cluster_function(
    num_clusters: int, method: str, opset: int = MIN_OPSET
) -> onnx.FunctionProto:
    """The model-local function ``actrec::TemporalCluster``: the clustering in standard ops.

    The body is traced from :func:`models.clustering.temporal_cluster` with every axis of the
    ``(N, T, C, H, W)`` input dynamic, so it is the PyTorch reference by construction. The
    unrolled steps that refill empty clusters and the ``TopK`` of slope clustering depend on
    ``num_clusters`` and ``method``, so the body is generated for the values the node carries;
    the function declares the three attributes with those values as defaults.

    Args:
        num_clusters: ``g``.
        method: ``"cumulative"``, ``"slope"`` or ``"uniform"``.
        opset: Default-domain opset of the body (that of the model it goes into).
    """
    _check_opset(opset)
    example = torch.randn(2, 2 * num_clusters + 1, 4, 3, 3)
    graph = _trace_to_onnx(
        _ClusterOnly(num_clusters, method).eval(),
        example,
        opset=opset,
        input_names=["x"],
        output_names=["means"],
        dynamic_axes={
            "x": {i: f"d{i}" for i in range(5)},
            "means": {0: "d0", 2: "d2", 3: "d3", 4: "d4"},
        },
    ).graph
    nodes = [_initializer_as_constant(init) for init in graph.initializer]
    for index, node in enumerate(graph.node):
        node.name = f"tc_{index}_{node.op_type}"
        nodes.append(node)
    attributes = [
        helper.make_attribute("num_clusters", num_clusters),
        helper.make_attribute("method", method),
        helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE),
    ]
    function = helper.make_function(
        CLUSTER_DOMAIN,
        CLUSTER_OP,
        inputs=[graph.input[0].name],
        outputs=[graph.output[0].name],
        nodes=nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[],
        doc_string=(
            f"Temporal clustering of (N, T, C, H, W) activations into (N, g, C, H, W) cluster "
            f"means, g = {num_clusters}, method = {method}; decomposition of "
            "models.clustering.temporal_cluster."
        ),
    )
    function.attribute_proto.extend(attributes)
    return function


def _initializer_as_constant(tensor: onnx.TensorProto) -> onnx.NodeProto:
    # Function bodies hold no initializers; constants become Constant nodes.
    return helper.make_node(
        "Constant", [], [tensor.name], name=f"const_{tensor.name}", value=tensor
    )


# ---------------------------------------------------------------------------------------------
# Export


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET} (TensorRT 10 reads <= 20)"
        )


def _trace_to_onnx(
    module: nn.Module,
    example: Tensor,
    *,
    opset: int,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    optimize: bool = True,
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter warns about itself and about Python ints read off traced shapes
        # (channel counts, static by construction).
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
                dynamo=False,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    model = onnx.load_from_string(buffer.getvalue())
    if not optimize:
        return model
    import onnxscript.optimizer  # heavy import, needed here only

    # Folds the shape arithmetic the tracer leaves behind (about half the nodes); the custom
    # node is kept as it is. One pass: the second one finds little and doubles the time.
    return onnxscript.optimizer.optimize(model, num_iterations=1)


def example_input(spec: VariantSpec, *, clips: int = 2, frames: int | None = None) -> Tensor:
    """A random ``(clips, 3, T, H, W)`` input of the bundle's own spec.

    ``T`` is the clip length, or ``frames`` (default 16) for whole-video families.
    """
    length = spec.input_frames or (frames if frames is not None else 16)
    generator = torch.Generator().manual_seed(clips * 1000 + length)
    return torch.randn(clips, 3, length, *spec.input_size, generator=generator)


def export_network(
    model: nn.Module,
    spec: VariantSpec,
    *,
    opset: int = MIN_OPSET,
    optimize: bool = True,
) -> onnx.ModelProto:
    """Trace an eval-mode network into the ONNX graph described in the module docstring.

    ``optimize=False`` skips the constant folding by ``onnxscript.optimizer`` (seconds per
    thousand nodes: about 11 s for the unrolled joint LSTM); ONNX Runtime and TensorRT fold
    the same constants when they load the file.
    """
    _check_opset(opset)
    model = model.eval()
    dynamic_time = spec.input_frames == 0
    input_axes = {0: "clips", 2: "frames"} if dynamic_time else {0: "clips"}
    example = example_input(spec, clips=2, frames=16)
    with _cluster_as_node(model):
        proto = _trace_to_onnx(
            model,
            example,
            opset=opset,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: input_axes, ONNX_OUTPUT: {0: "clips"}},
            optimize=optimize,
        )
    clustering = _clustering_of(model)
    if clustering is not None:
        if sum(node.op_type == CLUSTER_OP for node in proto.graph.node) != 1:
            raise ExportError(f"expected one {CLUSTER_OP} node in the exported graph")
        g, method = clustering
        proto.functions.append(temporal_cluster_function(g, method, opset=opset))
        if all(entry.domain != CLUSTER_DOMAIN for entry in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(CLUSTER_DOMAIN, 1))
    return _finish(proto, "Input: normalised clips (N, 3, T, H, W); output: the eval-mode forward.")


def _finish(proto: onnx.ModelProto, doc: str) -> onnx.ModelProto:
    # Function attributes with defaults (attribute_proto) need IR version 9 (ONNX 1.15).
    proto.ir_version = max(proto.ir_version, 9)
    proto.producer_name = "actrec.export.onnx"
    proto.doc_string = doc
    onnx.checker.check_model(proto)
    return proto


class _EarlyStage(nn.Module):
    """``(N, 3, T, H, W)`` frames -> ``(N, T, C, h, w)`` layer1 activations."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model.early_features(x)  # type: ignore[operator]
        return out


class _LateStage(nn.Module):
    """``(N, g, C, h, w)`` cluster means -> ``(N, num_classes)`` logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, segments: Tensor) -> Tensor:
        m = self.model
        out: Tensor = m.forward_head(m.late_features(segments))  # type: ignore[operator]
        return out


def export_stages(
    model: nn.Module,
    spec: VariantSpec,
    *,
    opset: int = MIN_OPSET,
    optimize: bool = True,
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Trace a clustering full_video network's two stages, ``(early, late)``.

    ``early``: input ``input`` ``(clips, 3, frames, H, W)``, output ``output``
    ``(clips, frames, C, h, w)`` (``model.early_features``; the temporal shift is slices and
    concatenation, so ``frames`` stays dynamic). ``late``: input ``input`` ``(clips, g, C, h,
    w)`` with ``g`` fixed, output ``output`` logits (``forward_head(late_features(.))``).
    Traced exactly as :func:`export_network` traces the whole network.
    """
    _check_opset(opset)
    model = model.eval()
    example = example_input(spec, clips=2, frames=16)
    early = _trace_to_onnx(
        _EarlyStage(model).eval(),
        example,
        opset=opset,
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        dynamic_axes={
            ONNX_INPUT: {0: "clips", 2: "frames"},
            ONNX_OUTPUT: {0: "clips", 1: "frames"},
        },
        optimize=optimize,
    )
    with torch.no_grad():
        segments = model.cluster(model.early_features(example))  # type: ignore[operator]
    late = _trace_to_onnx(
        _LateStage(model).eval(),
        segments,
        opset=opset,
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        dynamic_axes={ONNX_INPUT: {0: "clips"}, ONNX_OUTPUT: {0: "clips"}},
        optimize=optimize,
    )
    return (
        _finish(early, "Input: normalised frames (N, 3, T, H, W); output: layer1 (N, T, C, h, w)."),
        _finish(late, "Input: cluster means (N, g, C, h, w); output: logits (N, num_classes)."),
    )


def share_weights(
    proto: onnx.ModelProto, source: bytes, location: str, *, min_bytes: int = SHARE_MIN_BYTES
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``proto`` whose initializers found byte for byte in ``source`` (the content
    of the file ``location``, beside the graph) are ONNX external data pointing there.

    Any equal byte range is the tensor's data, whichever tensor of ``source`` it belongs to;
    initializers under ``min_bytes`` or not found stay in the graph.

    Returns:
        The new graph and ``{"tensors": n, "bytes": b}`` shared.
    """
    out = copy.deepcopy(proto)
    tensors = total = 0
    for init in out.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        array = numpy_helper.to_array(init)
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        if len(data) < min_bytes:
            continue
        offset = source.find(data)
        if offset < 0:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(array, name))  # raw_data, as the helper needs
        external_data_helper.set_external_data(init, location, offset, len(data))
        init.ClearField("raw_data")
        tensors += 1
        total += len(data)
    return out, {"tensors": tensors, "bytes": total}


class OnnxForward:
    """An ONNX Runtime session with the contract of a backend forward: float32 tensor in and
    out, as :func:`models.pipeline.run_network` expects.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (``None`` or 0: ONNX Runtime's default); when given, one
            operator runs at a time (parallel operators only add contention per request).
        providers: Execution providers in order of preference (default: CPU only).

    Attributes:
        providers: The providers the session actually uses.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self.providers: list[str] = self._session.get_providers()

    def __call__(self, inputs: Tensor) -> Tensor:
        array = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._session.run([self._output], {self._input: array})[0])


def onnx_forward(path: str | os.PathLike, *, threads: int | None = None) -> OnnxForward:
    """An ONNX Runtime (CPU) forward with the contract of a backend: float32 tensor in and out."""
    return OnnxForward(path, threads=threads)


class OnnxStages:
    """:class:`models.stream.WholeVideoStages` backed by the bundle's two stage graphs in
    ONNX Runtime (two :class:`OnnxForward` sessions).

    Args:
        bundle: A loaded bundle or its directory, exported with its stage graphs.
        threads: Intra-op threads per session, as :class:`OnnxForward`.
        providers: Execution providers, as :class:`OnnxForward`.

    Raises:
        BundleError: No stage graphs, or stale ones (see :func:`stage_settings`).
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        settings = stage_settings(bundle)
        self.context: int = settings["context"]
        self.num_clusters: int = settings["num_clusters"]
        self.clustering: str = settings["clustering"]
        self._early = OnnxForward(
            bundle.file(ONNX_EARLY_FILE), threads=threads, providers=providers
        )
        self._late = OnnxForward(bundle.file(ONNX_LATE_FILE), threads=threads, providers=providers)
        self.providers = self._early.providers

    def early(self, x: Tensor) -> Tensor:
        """``(1, 3, t, H, W)`` frames -> ``(1, t, C, h, w)`` layer1 activations."""
        return self._early(x)

    def late(self, segments: Tensor) -> Tensor:
        """``(1, g, C, h, w)`` cluster means -> ``(1, num_classes)`` logits."""
        return self._late(segments)


def _compare(
    name: str,
    inputs: Tensor,
    torch_forward: Callable[[Tensor], Tensor],
    ort_forward: Callable[[Tensor], Tensor],
) -> Verification:
    with torch.no_grad():
        expected = run_network(torch_forward, inputs)
    got = run_network(ort_forward, inputs)
    if got.shape != expected.shape:
        raise ExportError(
            f"{name}: ONNX Runtime output {tuple(got.shape)} != PyTorch {tuple(expected.shape)}"
        )
    diff = float((got - expected).abs().max()) if expected.numel() else 0.0
    if not np.isfinite(diff):
        diff = float("inf")
    return Verification(name, tuple(inputs.shape), tuple(expected.shape), diff)


def _verification_inputs(
    spec: VariantSpec, video: str | os.PathLike | None
) -> list[tuple[str, Tensor]]:
    cases: list[tuple[str, Tensor]] = []
    if spec.input_frames:
        cases.append(("spec N=3", example_input(spec, clips=3)))
    else:
        # Frame counts off the export example's 16 so a baked-in length would show.
        for frames in (1, 9, 33):
            cases.append((f"spec N=2 T={frames}", example_input(spec, clips=2, frames=frames)))
    if video is not None:
        frames_uint8, _ = decode_for(video, spec)
        cases.append((f"video {Path(video).name}", prepare_inputs(frames_uint8, spec)))
    return cases


def _shape_entry(name: str, shape: list[int | str]) -> dict[str, Any]:
    return {"name": name, "shape": shape}


def export_onnx(
    bundle: Bundle | str | os.PathLike,
    *,
    opset: int = MIN_OPSET,
    video: str | os.PathLike | None = None,
    tolerance: float | None = None,
    optimize: bool = True,
    fp16: bool = False,
    fp16_tolerance: float = FP16_TOLERANCE,
) -> Bundle:
    """Export a bundle's network to ``<bundle>/model.onnx``, verify it, record it.

    The file is written atomically and only after ONNX Runtime matched PyTorch on the bundle's
    own input spec (several batch sizes; several frame counts for ``full_video``) and, when
    ``video`` is given, on that decoded video through :func:`models.pipeline.prepare_inputs`.
    A ``full_video`` network that clusters then gets its two stage graphs, each verified the
    same way against :class:`models.stream.TorchStages` (the early one on those inputs, the
    late one on their ``g`` cluster means) and written the same way, after ``model.onnx``,
    whose bytes hold their weights.

    Args:
        bundle: A loaded bundle or its directory.
        opset: Default-domain ONNX opset, 17..20.
        video: A real video to verify on.
        tolerance: Largest absolute output difference accepted (default 1e-3).
        optimize: Constant-fold the graph (:func:`export_network`).
        fp16: Also write the FP16 twins (:func:`export_fp16`).
        fp16_tolerance: Largest absolute difference accepted for them.

    Returns:
        The reloaded bundle, whose manifest lists ``model.onnx`` (and for a clustering
        ``full_video`` network ``model.early.onnx`` and ``model.late.onnx``).

    Raises:
        ExportError: Unsupported opset, a failed export, or a difference above ``tolerance``
            (the message gives the number).
        BundleError: The bundle does not load.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    _check_opset(opset)
    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    spec = bundle.spec
    try:
        model = bundle.build_model()
    except RuntimeError as err:  # load_state_dict: shapes of the weights vs today's code
        first = str(err).strip().splitlines()
        raise ExportError(
            f"{bundle.path}: the weights do not fit {bundle.model_name} as the code builds it now "
            f"({first[1].strip() if len(first) > 1 else first[0]}); retrain or use matching code"
        ) from err
    started = time.perf_counter()
    try:
        proto = export_network(model, spec, opset=opset, optimize=optimize)
    except ExportError:
        raise
    except Exception as err:  # the tracer raises many types; name the bundle and the cause
        raise ExportError(
            f"{bundle.path}: ONNX export of {bundle.model_name} failed: {err}"
        ) from err
    export_s = time.perf_counter() - started
    cases = _verification_inputs(spec, video)
    results = _write_verified(bundle, ONNX_FILE, proto.SerializeToString(), cases, model, tolerance)
    dynamic_time = spec.input_frames == 0
    length: int | str = "frames" if dynamic_time else spec.input_frames
    input_shape: list[int | str] = ["clips", 3, length, *spec.input_size]
    output_shape: list[int | str] = ["clips", *results[0].output_shape[1:]]
    dims = {"clips": dict(zip(("min", "opt", "max"), CLIP_RANGE))}
    if dynamic_time:
        dims["frames"] = dict(zip(("min", "opt", "max"), FRAME_RANGE))
    info: dict[str, Any] = {
        "opset": opset,
        "inputs": [_shape_entry(ONNX_INPUT, input_shape)],
        "outputs": [_shape_entry(ONNX_OUTPUT, output_shape)],
        "dynamic_axes": {
            ONNX_INPUT: {0: "clips", 2: "frames"} if dynamic_time else {0: "clips"},
            ONNX_OUTPUT: {0: "clips"},
        },
        "dims": dims,
        **_verified_entry(results, tolerance),
        "exporter": f"torch.onnx (TorchScript) {torch.__version__}",
        "export_s": round(export_s, 2),
        "optimized": optimize,
    }
    clustering = _clustering_of(model)
    if clustering is not None:
        info["custom_ops"] = [
            {
                "domain": CLUSTER_DOMAIN,
                "op": CLUSTER_OP,
                "plugin_namespace": PLUGIN_NAMESPACE,
                "num_clusters": clustering[0],
                "method": clustering[1],
                "function": True,
            }
        ]
    bundle = add_bundle_file(bundle, ONNX_FILE, **info)
    stages = stages_for(model)
    if stages is not None and stages.clustering != "none":
        _export_stage_files(bundle, model, stages, cases, opset, optimize, tolerance)
    if fp16:
        export_fp16(load_bundle(bundle.path), video=video, tolerance=fp16_tolerance, model=model)
    # Reloaded, so the caller sees the manifest as JSON holds it (axis keys as strings).
    return load_bundle(bundle.path)


def export_fp16(
    bundle: Bundle | str | os.PathLike,
    *,
    video: str | os.PathLike | None = None,
    tolerance: float = FP16_TOLERANCE,
    model: nn.Module | None = None,
) -> Bundle:
    """Write ``model.fp16.onnx`` (and, where the bundle has them, the FP16 twins of the stage
    graphs) from the bundle's FP32 graphs by :func:`export.fp16.to_fp16`, each verified in
    ONNX Runtime against the FP32 PyTorch network as its FP32 graph was (the same inputs)
    and recorded with ``precision: "fp16"``, ``fp32_ops`` (what stayed FP32) and
    ``source`` (the FP32 file). They hold their weights (no external data).

    Raises:
        BundleError: The bundle has no ``model.onnx``.
        ExportError: A difference above ``tolerance``.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    model = bundle.build_model() if model is None else model.eval()
    cases = _verification_inputs(bundle.spec, video)
    graphs: list[tuple[str, Callable[[Tensor], Tensor], list[tuple[str, Tensor]]]] = [
        (ONNX_FILE, model, cases)
    ]
    if bundle.has(ONNX_EARLY_FILE) and bundle.has(ONNX_LATE_FILE):
        stages = TorchStages(model)
        with torch.no_grad():
            means = [(f"{n} -> means", model.cluster(stages.early(x))) for n, x in cases]  # type: ignore[operator]
        graphs += [(ONNX_EARLY_FILE, stages.early, cases), (ONNX_LATE_FILE, stages.late, means)]
    for source, reference, inputs in graphs:
        proto, kept = to_fp16(onnx.load(str(bundle.file(source))))  # external data read in
        name = fp16_name(source)
        results = _write_verified(
            bundle, name, proto.SerializeToString(), inputs, reference, tolerance, label="fp16 "
        )
        fp32 = bundle.file_info(source)
        info = {
            k: v
            for k, v in fp32.items()
            if k not in ("sha256", "external_data", "max_abs_diff", "tolerance", "verified_on")
        }
        info.update(precision="fp16", fp32_ops=kept, source=source)
        info.update(_verified_entry(results, tolerance))
        bundle = add_bundle_file(bundle, name, **info)
    return load_bundle(bundle.path)


def _write_verified(
    bundle: Bundle,
    file: str,
    data: bytes,
    cases: list[tuple[str, Tensor]],
    reference: Callable[[Tensor], Tensor],
    tolerance: float,
    *,
    label: str = "",
) -> list[Verification]:
    """Write ``data`` as ``<bundle>/<file>`` atomically, only once ONNX Runtime running the
    written file (beside the bundle's other files, which external data may point to) matched
    ``reference`` on every case within ``tolerance``."""
    results: list[Verification] = []

    def write_and_verify(tmp: Path) -> None:
        tmp.write_bytes(data)
        onnx.checker.check_model(str(tmp))  # as written: follows external data to its file
        forward = onnx_forward(tmp)
        for name, inputs in cases:
            result = _compare(name, inputs, reference, forward)
            results.append(result)
            print(
                f"{bundle.name}: {label}{name} {list(result.shape)} "
                f"max abs diff {result.max_abs_diff:.3e}"
            )
        worst = max(r.max_abs_diff for r in results)
        if not worst <= tolerance:
            raise ExportError(
                f"{bundle.path}: ONNX Runtime differs from PyTorch by {worst:.6g} "
                f"(tolerance {tolerance:g}); {file} not written"
            )

    atomic_write(bundle.path / file, write_and_verify)
    return results


def _verified_entry(results: list[Verification], tolerance: float) -> dict[str, Any]:
    return {
        "max_abs_diff": max(r.max_abs_diff for r in results),
        "tolerance": tolerance,
        "verified_on": [
            {"name": r.name, "shape": list(r.shape), "max_abs_diff": r.max_abs_diff}
            for r in results
        ],
    }


def _export_stage_files(
    bundle: Bundle,
    model: nn.Module,
    stages: TorchStages,
    cases: list[tuple[str, Tensor]],
    opset: int,
    optimize: bool,
    tolerance: float,
) -> Bundle:
    """Write, verify and record ``model.early.onnx`` and ``model.late.onnx``."""
    spec = bundle.spec
    started = time.perf_counter()
    try:
        early, late = export_stages(model, spec, opset=opset, optimize=optimize)
    except Exception as err:  # the tracer raises many types; name the bundle and the cause
        raise ExportError(f"{bundle.path}: ONNX export of the stages failed: {err}") from err
    export_s = round(time.perf_counter() - started, 2)
    source = (bundle.path / ONNX_FILE).read_bytes()
    link = {"location": ONNX_FILE, "sha256": hashlib.sha256(source).hexdigest()}
    common = {
        "opset": opset,
        "exporter": f"torch.onnx (TorchScript) {torch.__version__}",
        "export_s": export_s,
        "optimized": optimize,
    }
    g = stages.num_clusters

    # The early graph on the whole model's inputs: frame counts 1, 9, 33 (and the video).
    shared, counts = share_weights(early, source, ONNX_FILE)
    early_results = _write_verified(
        bundle,
        ONNX_EARLY_FILE,
        shared.SerializeToString(),
        cases,
        stages.early,
        tolerance,
        label="early ",
    )
    acts = early_results[0].output_shape[2:]
    h = stages.context
    info: dict[str, Any] = {
        "stage": "early",
        "inputs": [_shape_entry(ONNX_INPUT, ["clips", 3, "frames", *spec.input_size])],
        "outputs": [_shape_entry(ONNX_OUTPUT, ["clips", "frames", *acts])],
        "dynamic_axes": {
            ONNX_INPUT: {0: "clips", 2: "frames"},
            ONNX_OUTPUT: {0: "clips", 1: "frames"},
        },
        "dims": {
            "clips": dict(zip(("min", "opt", "max"), STAGE_CLIP_RANGE)),
            "frames": {"min": 1, "opt": CHUNK_FRAMES, "max": CHUNK_FRAMES + 2 * h},
        },
        **_verified_entry(early_results, tolerance),
        "context": h,
        "num_clusters": g,
        "clustering": stages.clustering,
        "external_data": {**link, **counts},
        **common,
    }
    bundle = add_bundle_file(bundle, ONNX_EARLY_FILE, **info)

    # The late graph on what it gets in the stream: the g cluster means of those frames.
    with torch.no_grad():
        means = [
            (f"{name} -> g={g} means", model.cluster(stages.early(x)))  # type: ignore[operator]
            for name, x in cases
        ]
    shared, counts = share_weights(late, source, ONNX_FILE)
    late_results = _write_verified(
        bundle,
        ONNX_LATE_FILE,
        shared.SerializeToString(),
        means,
        stages.late,
        tolerance,
        label="late ",
    )
    info = {
        "stage": "late",
        "inputs": [_shape_entry(ONNX_INPUT, ["clips", g, *acts])],
        "outputs": [_shape_entry(ONNX_OUTPUT, ["clips", *late_results[0].output_shape[1:]])],
        "dynamic_axes": {ONNX_INPUT: {0: "clips"}, ONNX_OUTPUT: {0: "clips"}},
        "dims": {"clips": dict(zip(("min", "opt", "max"), STAGE_CLIP_RANGE))},
        **_verified_entry(late_results, tolerance),
        "num_clusters": g,
        "external_data": {**link, **counts},
        **common,
    }
    return add_bundle_file(bundle, ONNX_LATE_FILE, **info)


def stage_settings(bundle: Bundle) -> dict[str, Any]:
    """``context``, ``num_clusters`` and ``clustering`` of a bundle's stage graphs, from the
    manifest entry of ``model.early.onnx``.

    Raises:
        BundleError: The bundle has no stage graphs, or ``model.onnx``, which holds their
            weights, changed after they were exported.
    """
    for name in (ONNX_EARLY_FILE, ONNX_LATE_FILE):
        if not bundle.has(name):
            raise BundleError(
                f"{bundle.path} has no {name}; run python -m export.onnx --bundle {bundle.path}"
            )
        link = bundle.file_info(name).get("external_data")
        if link and (
            not bundle.has(link["location"])
            or bundle.file_info(link["location"])["sha256"] != link["sha256"]
        ):
            raise BundleError(
                f"{bundle.path}: {name} reads its weights from {link['location']} as it was "
                f"when exported, and that file has changed since; "
                f"re-run python -m export.onnx --bundle {bundle.path}"
            )
    info = bundle.file_info(ONNX_EARLY_FILE)
    return {
        "context": int(info["context"]),
        "num_clusters": int(info["num_clusters"]),
        "clustering": str(info["clustering"]),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m export.onnx``: export and verify; exit 1 with the reason on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m export.onnx", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", required=True, help="model bundle directory")
    parser.add_argument(
        "--opset", type=int, default=MIN_OPSET, help=f"ONNX opset {MIN_OPSET}..{MAX_OPSET}"
    )
    parser.add_argument(
        "--video", help="a real video to verify on (decoded, sampled as in serving)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=None, help=f"max abs diff (default {DEFAULT_TOLERANCE})"
    )
    parser.add_argument(
        "--no-optimize", action="store_true", help="skip constant folding (faster export)"
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also write model.fp16.onnx (FP16 but the clustering and reductions), verified",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write model.int8.onnx (static int8, QDQ), calibrated on the training videos "
        "and verified by top-1 agreement with model.onnx on the test videos",
    )
    parser.add_argument(
        "--data", help="the training dataset for --quantize, if not where the manifest says"
    )
    parser.add_argument(
        "--calibration-videos",
        type=int,
        default=32,
        help="--quantize: training videos to calibrate on, spread over the split (0: all)",
    )
    parser.add_argument(
        "--test-videos",
        type=int,
        default=0,
        help="--quantize: test videos to check agreement on, spread over the split (0: all)",
    )
    args = parser.parse_args(argv)
    from models.bundle import BundleError
    from video.errors import VideoError

    try:
        bundle = export_onnx(
            args.bundle,
            opset=args.opset,
            video=args.video,
            tolerance=args.tolerance,
            optimize=not args.no_optimize,
            fp16=args.fp16,
        )
        if args.quantize == "int8":
            from export.quantize import export_int8

            bundle = export_int8(
                bundle,
                data=args.data,
                calibration_videos=args.calibration_videos,
                test_videos=args.test_videos,
            )
    except (ExportError, BundleError, VideoError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    names = (ONNX_FILE, ONNX_EARLY_FILE, ONNX_LATE_FILE)
    for name in (*names, *(fp16_name(n) for n in names)):
        if name == ONNX_FILE or bundle.has(name):
            info = bundle.file_info(name)
            print(
                f"wrote {bundle.path / name} (opset {info['opset']}, "
                f"max abs diff {info['max_abs_diff']:.3e})"
            )
    if bundle.has(INT8_FILE):
        agreement = bundle.file_info(INT8_FILE)["agreement"]
        print(
            f"wrote {bundle.path / INT8_FILE} (top-1 agreement {agreement['top1_agreement']:.2%} "
            f"on {agreement['videos']} test videos, top-1 {agreement['int8_top1']:.2%} vs fp32 "
            f"{agreement['fp32_top1']:.2%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
