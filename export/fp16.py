"""An FP16 twin of an exported FP32 graph, for strongly typed FP16 TensorRT engines.

TensorRT 11 removed weak typing and ``BuilderFlag.FP16``: a strongly typed network computes
in the types its ONNX graph states. :func:`to_fp16` rewrites a graph of :mod:`export.onnx`
so that it states FP16 everywhere except where precision matters:

- **kept in FP32**: every reduction (``ReduceMean``... the spatial and segment means of the
  heads, ms3d's L2 norm), ``Softmax``/``LogSoftmax``, ``CumSum``, normalisation layers, the
  custom ``actrec::TemporalCluster`` node (its Hamming distances, cumulative sums and cluster
  means; the node's function body is typed by its input, so it stays FP32 too), and inputs
  that ONNX requires as float32 (``Resize`` scales);
- **interface unchanged**: the input ``input`` and the output ``output`` stay float32, with
  casts after and before, so every backend calls the FP16 graph as it calls the FP32 one;
- weights feeding only FP16 nodes are stored as FP16 (half the file); a weight also used in
  FP32 stays FP32 and is cast where FP16 needs it.

Casts are inserted where a value produced in one type is consumed in the other (TensorRT and
ONNX Runtime fuse or fold them). ``python -m export.onnx --fp16`` writes the result as
``model.fp16.onnx`` (and the stage graphs' twins) after checking it against PyTorch with ONNX
Runtime; docs/export.md#fp16.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["FP16_TOLERANCE", "FP32_OPS", "FP32_INPUTS", "fp16_name", "to_fp16"]

# Absolute output difference allowed between the FP16 graph in ONNX Runtime and the FP32
# PyTorch network (FP16 has 11 significant bits: about 1e-3 relative per operation).
FP16_TOLERANCE = 5e-2

# Ops computed in float32 in the FP16 graph.
FP32_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceSumSquare",
        "GlobalAveragePool",
        "GlobalLpPool",
        "Softmax",
        "LogSoftmax",
        "LpNormalization",
        "CumSum",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
    }
)
# Inputs that ONNX types as float32 whatever the data's type: (op, input index).
FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
# Ops that take any element type and leave it alone (shape queries), or set it themselves.
_NEUTRAL_OPS = frozenset({"Shape", "Size", "Cast", "CastLike"})
_CONSTANT_OPS = frozenset({"Constant", "ConstantOfShape"})
_FLOAT = TensorProto.FLOAT
_HALF = TensorProto.FLOAT16


def fp16_name(onnx_file: str) -> str:
    """The FP16 twin of an ONNX file of the bundle.

    >>> fp16_name("model.early.onnx")
    'model.early.fp16.onnx'
    """
    return onnx_file.removesuffix(".onnx") + ".fp16.onnx"


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value, from shape inference, then by propagation (a
    node ONNX cannot infer, like the custom one, gives its outputs its first input's type)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        elem = value.type.tensor_type.elem_type
        if elem:
            types[value.name] = elem
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
        first = next((types[i] for i in node.input if i in types), None)
        for out in node.output:
            if out not in types and first is not None:
                types[out] = first
    return types


def _node_precision(node: onnx.NodeProto, types: dict[str, int]) -> str:
    """``"fp32"``, ``"fp16"``, ``"neutral"`` (no requirement) or ``"const"``."""
    if node.op_type in _CONSTANT_OPS:
        return "const"
    if node.op_type in _NEUTRAL_OPS:
        return "neutral"
    floats = [v for v in (*node.input, *node.output) if v and types.get(v) == _FLOAT]
    if not floats:
        return "neutral"
    if node.domain not in ("", "ai.onnx") or node.op_type in FP32_OPS:
        return "fp32"
    return "fp16"


def _required(node: onnx.NodeProto, index: int, precision: str) -> int | None:
    """The element type input ``index`` of ``node`` must have (``None``: any)."""
    if precision == "fp32" or (node.op_type, index) in FP32_INPUTS:
        return _FLOAT
    if precision == "fp16":
        return _HALF
    return None


def to_fp16(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The FP16 twin of ``proto`` (see the module docstring) and the op types kept in FP32.

    ``proto`` must hold its weights (load external data first). Model-local functions are
    copied unchanged: the only one, ``TemporalCluster``, runs in FP32.
    """
    out = copy.deepcopy(proto)
    graph = out.graph
    types = _elem_types(proto)
    kinds = [_node_precision(n, types) for n in graph.node]
    consumers: dict[str, list[int | None]] = {}
    for node, kind in zip(graph.node, kinds):
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append(
                _required(node, index, kind) if types.get(name) == _FLOAT else None
            )
    for value in graph.output:
        consumers.setdefault(value.name, []).append(_FLOAT)

    def only_half(name: str) -> bool:
        wanted = consumers.get(name, [])
        return bool(wanted) and all(w == _HALF for w in wanted)

    actual = {name: elem for name, elem in types.items()}
    for init in graph.initializer:
        if init.data_type == _FLOAT and only_half(init.name):
            half = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(half, init.name))
            actual[init.name] = _HALF

    kept = sorted(
        {
            (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for n, kind in zip(graph.node, kinds)
            if kind == "fp32"
        }
    )
    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast_to(name: str, elem: int) -> str:
        key = (name, elem)
        if key not in casts:
            suffix = "fp16" if elem == _HALF else "fp32"
            casts[key] = f"{name}__{suffix}"
            nodes.append(
                helper.make_node(
                    "Cast", [name], [casts[key]], name=f"cast_{suffix}_{name}", to=elem
                )
            )
        return casts[key]

    for node, kind in zip(graph.node, kinds):
        if kind == "const":
            _constant_to_half(node, types, only_half, actual)
        for index, name in enumerate(node.input):
            if not name or types.get(name) != _FLOAT:
                continue
            want = _required(node, index, kind)
            if want is not None and actual.get(name) != want:
                node.input[index] = cast_to(name, want)
        if kind == "fp16":
            for name in node.output:
                if types.get(name) == _FLOAT:
                    actual[name] = _HALF
        nodes.append(node)

    renames = {}
    for value in graph.output:
        if actual.get(value.name) == _HALF:
            renames[value.name] = f"{value.name}__fp16"
    for node in nodes:
        for index, name in enumerate(node.output):
            if name in renames:
                node.output[index] = renames[name]
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    for original, renamed in renames.items():
        nodes.append(
            helper.make_node("Cast", [renamed], [original], name=f"cast_out_{original}", to=_FLOAT)
        )
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale types; consumers infer them again
    onnx.checker.check_model(out)
    return out, kept


def _constant_to_half(
    node: onnx.NodeProto,
    types: dict[str, int],
    only_half: Callable[[str], bool],
    actual: dict[str, int],
) -> None:
    """A float ``Constant``/``ConstantOfShape`` read only by FP16 nodes produces FP16."""
    name = node.output[0]
    if types.get(name) != _FLOAT or not only_half(name):
        return
    values = [a for a in node.attribute if a.name == "value"]
    if not values and node.op_type == "ConstantOfShape":  # float32 zero by default
        node.attribute.append(
            helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16)))
        )
        actual[name] = _HALF
    for attr in values:
        if attr.t.data_type == _FLOAT:
            half = numpy_helper.to_array(attr.t).astype(np.float16)
            attr.t.CopyFrom(numpy_helper.from_array(half, attr.t.name))
            actual[name] = _HALF
