"""The ``TemporalCluster`` TensorRT plugin (``tensorrt.plugin``, TensorRT 10.9 to 11.x).

The full-video clustering (:func:`models.clustering.temporal_cluster`; the paper is cited in
:mod:`models.full_video`) as a plugin for the ``actrec::TemporalCluster`` node that
:mod:`export.onnx` writes. :func:`register` declares it to ``tensorrt.plugin`` with two
implementations:

- ``trtp.aot_impl``: the fused Triton kernel of :mod:`export._kernels`, compiled to PTX at
  build time for the build GPU and embedded in the plan, which then loads in any TensorRT
  runtime (``trtexec --loadEngine``, Triton Inference Server's TensorRT backend) with no
  Python and no registration. Chosen by ``python -m export.trt --plugin aot`` (the default).
- ``trtp.impl``: :func:`export._kernels.temporal_cluster_cuda` called from Python on
  TensorRT's stream (``--plugin jit``); a plan built this way needs :func:`register` in the
  process that deserialises it (``export.trt_runtime`` does that).

The ONNX parser hands the string attribute ``method`` over with a trailing NUL: every path
reads it through :func:`export._kernels.method_code`, which strips it. ``tensorrt`` is
imported only inside :func:`register`, which also refuses TensorRT below 10.9
(:func:`export.trt_compat.check_version`).

Details: docs/export.md#the-temporalcluster-plugin.
"""

# No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations of
# the decorated functions at registration and needs them as real types, not strings.

import os
import threading
from typing import Any

__all__ = [
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_ID",
    "DEFAULT_TMAX_FRAMES",
    "aot_launch",
    "output_desc",
    "register",
    "is_registered",
]

PLUGIN_NAME = "TemporalCluster"
PLUGIN_NAMESPACE = "actrec"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
# Frames the AOT kernel covers when TensorRT does not give the profile's maximum.
DEFAULT_TMAX_FRAMES = 1024

_lock = threading.Lock()
_registered = False


def is_registered() -> bool:
    """Whether :func:`register` has run in this process."""
    return _registered


def register() -> None:
    """Register the ``actrec::TemporalCluster`` plugin with TensorRT; idempotent.

    Raises:
        ImportError: ``tensorrt`` (with ``tensorrt.plugin``) is not installed.
        export.trt_compat.TensorRTUnsupported: TensorRT is outside 10.9 .. 11.x.
    """
    global _registered
    with _lock:
        if _registered:
            return
        from export.trt_compat import import_tensorrt

        import_tensorrt()  # the version gate
        import tensorrt.plugin as trtp  # lazy: TensorRT exists only on GPU machines

        _define(trtp)
        _registered = True


def output_desc(trtp: Any, x: Any, num_clusters: int) -> Any:
    """``(N, T, C, H, W)`` -> ``(N, g, C, H, W)``, same dtype: only the frame axis changes.

    Every axis is a ``trtp.ShapeExpr`` (``g`` a constant one): a plain int in a shape
    expression is read as an expression by TensorRT 10.9 and later only.
    """
    dims = list(x.shape_expr)
    dims[1] = trtp.ShapeExpr(int(num_clusters))
    return trtp.from_shape_expr(tuple(dims), dtype=x.dtype)


def aot_launch(trtp: Any, x: Any, kernel: Any) -> tuple[Any, Any]:
    """``(launch params, extra args)`` of the fused kernel for input ``x``: one program of
    ``kernel.block_threads`` threads per video; the scalars ``frames`` and ``features``
    (``C * H * W``) between the input and output pointers, as the kernel declares them."""
    shape = x.shape_expr
    params = trtp.KernelLaunchParams()
    params.grid_x = shape[0]
    params.block_x = kernel.block_threads
    params.shared_mem = kernel.shared
    features = shape[2] * shape[3] * shape[4]
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(shape[1]), trtp.SymInt32(features)])
    return params, extra


def _max_frames(x: Any) -> int:
    """The profile's largest frame count for the input descriptor (TensorRT gives the shape
    to ``aot_impl``), else ``ACTREC_TRT_MAX_FRAMES`` or :data:`DEFAULT_TMAX_FRAMES`."""
    try:
        shape = x.shape
        return int(shape.max[1] if shape.is_dynamic else shape[1])
    except (AttributeError, ValueError, RuntimeError, TypeError):
        return int(os.environ.get("ACTREC_TRT_MAX_FRAMES", DEFAULT_TMAX_FRAMES))


def _define(trtp: Any) -> None:
    """Declare shape/type, autotune and both implementations to ``tensorrt.plugin``."""

    @trtp.register(PLUGIN_ID)
    def temporal_cluster_desc(
        x: trtp.TensorDesc, num_clusters: int, method: str
    ) -> trtp.TensorDesc:
        return output_desc(trtp, x, num_clusters)

    @trtp.autotune(PLUGIN_ID)
    def temporal_cluster_autotune(
        x: trtp.TensorDesc, num_clusters: int, method: str, outputs: tuple[trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        # Input and output share one type; distances and sums are float32 either way.
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16", "LINEAR")]

    @trtp.impl(PLUGIN_ID)
    def temporal_cluster_impl(
        x: trtp.Tensor, num_clusters: int, method: str, outputs: tuple[trtp.Tensor], stream: int
    ) -> None:
        import torch

        from export._kernels import temporal_cluster_cuda

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            features = torch.as_tensor(x, device="cuda")
            result = torch.as_tensor(outputs[0], device="cuda")
            temporal_cluster_cuda(features, int(num_clusters), method, out=result)

    if not hasattr(trtp, "aot_impl"):
        return

    @trtp.aot_impl(PLUGIN_ID)
    def temporal_cluster_aot(
        x: trtp.TensorDesc,
        num_clusters: int,
        method: str,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]:
        import tensorrt as trt
        import torch

        from export._kernels import compile_aot_kernel

        if isinstance(num_clusters, (str, bytes)):
            # TensorRT passes the attributes to aot_impl by position, in the node's order;
            # export.trt writes num_clusters first, a graph from elsewhere may not.
            num_clusters, method = method, num_clusters

        major, minor = torch.cuda.get_device_capability()
        kernel = compile_aot_kernel(
            dtype="fp16" if x.dtype == trt.float16 else "fp32",
            num_clusters=int(num_clusters),
            method=method,
            max_frames=_max_frames(x),
            arch=major * 10 + minor,
        )
        params, extra = aot_launch(trtp, x, kernel)
        return kernel.name, kernel.ptx, params, extra
