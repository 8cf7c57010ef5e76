"""The ``TemporalCluster`` TensorRT plugin (``tensorrt.plugin``, TensorRT 10.x).

The full-video clustering (:func:`models.clustering.temporal_cluster`; the paper is cited in
:mod:`models.full_video`) as a plugin for the ``actrec::TemporalCluster`` node that
:mod:`export.onnx` writes. :func:`register` makes TensorRT's ONNX parser map that node to the
plugin instead of expanding its ONNX function; call it before parsing (``export.trt``) and
before deserialising an engine (``export.trt_runtime``, the service). The implementation runs
:func:`export._kernels.temporal_cluster_cuda` on TensorRT's stream. ``tensorrt`` is imported
only inside :func:`register`.

Details: docs/export.md#the-temporalcluster-plugin.
"""

# No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations of
# the decorated functions at registration and needs them as real types, not strings.

import threading
from typing import Any

__all__ = ["PLUGIN_NAME", "PLUGIN_NAMESPACE", "PLUGIN_ID", "register", "is_registered"]

PLUGIN_NAME = "TemporalCluster"
PLUGIN_NAMESPACE = "actrec"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

_lock = threading.Lock()
_registered = False


def is_registered() -> bool:
    """Whether :func:`register` has run in this process."""
    return _registered


def register() -> None:
    """Register the ``actrec::TemporalCluster`` plugin with TensorRT; idempotent.

    Raises:
        ImportError: ``tensorrt`` (10.x, with ``tensorrt.plugin``) is not installed.
    """
    global _registered
    with _lock:
        if _registered:
            return
        import tensorrt.plugin as trtp  # lazy: TensorRT exists only on GPU machines

        _define(trtp)
        _registered = True


def _define(trtp: Any) -> None:
    """Declare shape/type, autotune and implementation of the plugin to ``tensorrt.plugin``."""

    @trtp.register(PLUGIN_ID)
    def temporal_cluster_desc(
        x: trtp.TensorDesc, num_clusters: int, method: str
    ) -> trtp.TensorDesc:
        # (N, T, C, H, W) -> (N, g, C, H, W), same dtype: only the frame axis changes.
        out = x.like()
        out.shape_expr[1] = num_clusters
        return out

    @trtp.autotune(PLUGIN_ID)
    def temporal_cluster_autotune(
        x: trtp.TensorDesc, num_clusters: int, method: str, outputs: tuple[trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        # Input and output share one type; the distances are computed in float32 either way.
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
            temporal_cluster_cuda(features, num_clusters, method, out=result)
