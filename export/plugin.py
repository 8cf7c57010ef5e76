"""The ``TemporalCluster`` TensorRT plugin (``tensorrt.plugin``, TensorRT 10.x).

Paper: Liu et al., "No frame left behind: Full Video Action Recognition" (CVPR 2021),
``papers/003_9ed3c60eac2eb6a4.txt``, Section 3.3: frames are cut into ``g`` temporal clusters
by the Hamming distance of their sign-binarised activations and averaged per cluster.

The exported ONNX graph (:mod:`export.onnx`) holds the clustering as one node
``actrec::TemporalCluster`` with attributes ``num_clusters``, ``method`` and
``plugin_namespace="actrec"``. TensorRT's ONNX parser maps a node that carries
``plugin_namespace`` to a registered plugin of that name and namespace, and otherwise expands
the model-local function of the same name; :func:`register` makes the first happen. Call it
before parsing the ONNX (``export.trt``) and before deserialising an engine
(``export.trt_runtime``, the service): a plan built with the plugin needs the same
``register``/``impl`` definitions in the loading process.

The implementation (``trtp.impl``) runs :func:`export._kernels.temporal_cluster_cuda` (a Triton
kernel for the Hamming counts, torch ops for the assignment and the means) on TensorRT's stream
through ``torch.cuda.ExternalStream``; ``trtp.autotune`` offers FP32 and FP16 with linear
layout. ``tensorrt`` is imported only inside :func:`register`.
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
