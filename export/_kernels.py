"""The GPU kernel behind the ``TemporalCluster`` TensorRT plugin, testable without TensorRT.

Computes :func:`models.clustering.temporal_cluster` (the full-video clustering; the paper is
cited in :mod:`models.full_video`) on a CUDA device, on the caller's current stream (the plugin
wraps TensorRT's stream in ``torch.cuda.ExternalStream``):

1. Neighbour Hamming counts of the sign bits: one pass over the activations, by a Triton
   kernel when Triton is importable (it is the only step that reads all ``N * T * C * H * W``
   values), else by the reference's torch ops.
2. The cluster assignment on the ``(N, T - 1)`` distances: the reference functions of
   :mod:`models.clustering`.
3. The means: one batched matmul of the ``(N, g, T)`` averaging matrix with the activations,
   written into the caller's output buffer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from models.clustering import assign_clusters, cluster_weights, hamming_distances

__all__ = ["triton_available", "hamming_counts", "temporal_cluster_cuda"]

# Elements of one frame's activation reduced per Triton program.
_BLOCK = 1024


def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of PyTorch)."""
    try:
        import triton  # noqa: F401 - importing is the availability check
    except ImportError:
        return False
    return True


@functools.cache
def _hamming_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def hamming_kernel(x_ptr, counts_ptr, frames, features, BLOCK: tl.constexpr):
        # One program per (pair of neighbouring frames, block of features); partial counts are
        # integers, so the atomic accumulation is exact and order-independent.
        pair = tl.program_id(0)
        block = tl.program_id(1)
        video = pair // (frames - 1)
        frame = pair % (frames - 1)
        base = (video * frames + frame).to(tl.int64) * features
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < features
        first = tl.load(x_ptr + base + offsets, mask=mask, other=0.0)
        second = tl.load(x_ptr + base + features + offsets, mask=mask, other=0.0)
        differ = ((first > 0) != (second > 0)).to(tl.int32)
        tl.atomic_add(counts_ptr + pair, tl.sum(differ, axis=0))

    return hamming_kernel


def hamming_counts(x: Tensor) -> Tensor:
    """Number of differing sign bits between consecutive frames, by the Triton kernel.

    Args:
        x: ``(N, T, D)`` contiguous CUDA activations (float32 or float16).

    Returns:
        ``(N, T - 1)`` int32 counts.
    """
    import triton

    n, t, d = x.shape
    counts = torch.zeros(n, max(t - 1, 0), dtype=torch.int32, device=x.device)
    if t > 1 and n > 0:
        grid = (n * (t - 1), triton.cdiv(d, _BLOCK))
        _hamming_kernel()[grid](x, counts, t, d, BLOCK=_BLOCK)
    return counts


def temporal_cluster_cuda(
    x: Tensor,
    num_clusters: int,
    method: str,
    *,
    out: Tensor | None = None,
    use_triton: bool | None = None,
) -> Tensor:
    """:func:`models.clustering.temporal_cluster` for ``(N, T, C, H, W)`` CUDA activations.

    Args:
        x: ``(N, T, C, H, W)`` activations on a CUDA device, float32 or float16.
        num_clusters: ``g``.
        method: ``"cumulative"``, ``"slope"`` or ``"uniform"``.
        out: ``(N, g, C, H, W)`` buffer to write (e.g. TensorRT's output); allocated if ``None``.
        use_triton: Force the Triton kernel on or off; by default it is used when importable.

    Returns:
        ``out``, holding the cluster means in ``x``'s dtype.
    """
    if x.dim() != 5:
        raise ValueError(f"expected (N, T, C, H, W) activations, got shape {tuple(x.shape)}")
    n, t = x.shape[:2]
    flat = x.reshape(n, t, -1).contiguous()
    if use_triton is None:
        use_triton = x.is_cuda and triton_available()
    if use_triton:
        # Same arithmetic as the reference: exact int32 counts, then one float32 division.
        distances = hamming_counts(flat).to(torch.float32) / flat.shape[-1]
    else:
        distances = hamming_distances(flat, feature_dims=1)
    assignment = assign_clusters(distances, num_clusters, method)
    weights = cluster_weights(assignment, num_clusters, dtype=x.dtype)  # (N, g, T)
    means = torch.bmm(weights, flat).reshape((n, num_clusters) + tuple(x.shape[2:]))
    if out is None:
        return means
    out.copy_(means)
    return out
