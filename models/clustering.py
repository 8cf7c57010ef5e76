"""Temporal clustering of frame activations for full video recognition.

The full-video paper (cited in :mod:`models.full_video`), Section 3.3 and Figure 3: frames are
compared by the Hamming distance of their sign-binarised activations, the video is cut into
``g`` contiguous clusters (cumulative or slope clustering, uniform segments as the baseline)
and each cluster is replaced by the mean of its activations.

Pure functions built from tensor operations only, so they trace into ONNX with a dynamic
number of frames and run on the ``meta`` device. Conventions (ids, empty clusters, fewer
frames than clusters, still videos): docs/models.md#full_video.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "CLUSTERING_MODES",
    "hamming_distances",
    "uniform_clusters",
    "cumulative_clusters",
    "slope_clusters",
    "assign_clusters",
    "cluster_means",
    "cluster_weights",
    "temporal_cluster",
]

CLUSTERING_MODES = ("cumulative", "slope", "uniform")


def hamming_distances(x: Tensor, *, feature_dims: int = 3) -> Tensor:
    """Hamming distance between the sign patterns of consecutive frames.

    Each frame's activation is flattened and binarised by ``> 0`` (the ReLU's linear region);
    the distance is the fraction of positions whose bits differ, in ``[0, 1]``.

    Args:
        x: Activations ``(..., T, C, H, W)``: ``(T, C, H, W)`` for one video,
            ``(N, T, C, H, W)`` for ``N`` videos.
        feature_dims: How many trailing axes make up one frame's activation (3 for
            ``C, H, W``; 1 for plain feature vectors).

    Returns:
        ``(..., T - 1)`` distances, float32 (float64 for float64 activations).
    """
    bits = (x > 0).flatten(-feature_dims)
    if torch.onnx.is_in_onnx_export():
        # ONNX Runtime reduces an empty tensor (a one-frame video) to the wrong shape, so the
        # exported graph compares all T frames with their successor (the last with itself)
        # and drops the last distance after the reduction. Same values, one more copy.
        following = torch.cat([bits[..., 1:, :], bits[..., -1:, :]], dim=-2)
        count = torch.logical_xor(bits, following).sum(dim=-1, dtype=torch.int32)[..., :-1]
    else:
        # Counting in int32 is exact and spares a float copy of the whole activation.
        differ = torch.logical_xor(bits[..., 1:, :], bits[..., :-1, :])
        count = differ.sum(dim=-1, dtype=torch.int32)
    # float32 even for half-precision activations: cumulative sums of many small fractions.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return count.to(dtype) / bits.shape[-1]


def _positions(distances: Tensor) -> tuple[Tensor, Tensor]:
    """Frame positions ``0..T-1`` (int64, shape ``(..., T)``) and ``T`` (shape ``(..., 1)``).

    Built from the distances by a cumulative sum rather than ``torch.arange(T)`` so that ``T``
    stays a graph value in exported models, also for ``T = 1`` (no distances at all).
    """
    first = distances.new_zeros(distances.shape[:-1] + (1,), dtype=torch.int64)
    pos = torch.cat([first, torch.ones_like(distances, dtype=torch.int64).cumsum(dim=-1)], dim=-1)
    return pos, pos[..., -1:] + 1


def _with_leading_zero(distances: Tensor) -> Tensor:
    """``(..., T)``: a zero before the distances (so reductions never see an empty axis)."""
    return torch.cat([distances.new_zeros(distances.shape[:-1] + (1,)), distances], dim=-1)


def _uniform_ids(pos: Tensor, num_frames: Tensor, num_clusters: int) -> Tensor:
    # floor(i * g / T) in exact integer arithmetic.
    return torch.div(pos * num_clusters, num_frames, rounding_mode="floor")


def _renumber(ids: Tensor) -> Tensor:
    """Non-decreasing ids -> dense ids 0, 1, ... (one step per change of id)."""
    steps = (ids[..., 1:] != ids[..., :-1]).to(torch.int64)
    return torch.cat([ids[..., :1] * 0, steps.cumsum(dim=-1)], dim=-1)


def _split_longest(ids: Tensor, pos: Tensor, num_clusters: int) -> Tensor:
    """Split the longest cluster in two where fewer than ``num_clusters`` are present.

    One vectorised step; a no-op for videos that already have ``num_clusters`` clusters or whose
    clusters are all single frames (``T < num_clusters``).
    """
    cluster_range = torch.arange(num_clusters, device=ids.device)
    members = ids.unsqueeze(-1) == cluster_range  # (..., T, g)
    counts = members.to(torch.int64).sum(dim=-2)  # (..., g)
    present = (counts > 0).to(torch.int64).sum(dim=-1, keepdim=True)
    longest = counts.argmax(dim=-1, keepdim=True)  # first maximum: the earliest cluster wins ties
    length = counts.gather(-1, longest)
    start = (ids < longest).to(torch.int64).sum(dim=-1, keepdim=True)
    cut = start + torch.div(length + 1, 2, rounding_mode="floor")
    needed = (present < num_clusters) & (length >= 2)
    moves = (ids > longest) | ((ids == longest) & (pos >= cut))
    return ids + (needed & moves).to(torch.int64)


def _fill_clusters(ids: Tensor, pos: Tensor, num_clusters: int) -> Tensor:
    """Dense ids with exactly ``min(T, num_clusters)`` non-empty clusters."""
    ids = _renumber(ids)
    # Each step adds one cluster while any is missing, and at least one is present.
    for _ in range(num_clusters - 1):
        ids = _split_longest(ids, pos, num_clusters)
    return ids


def uniform_clusters(distances: Tensor, num_clusters: int) -> Tensor:
    """Equal segments, the paper's "Ours-uniform" baseline: frame ``i`` -> ``floor(i * g / T)``.

    Only the number of frames matters; the distances are taken so that all modes share one
    signature and ``T`` stays dynamic in exported graphs. For ``T < g`` the ids are renumbered
    to ``0..T-1``.

    Args:
        distances: ``(..., T - 1)`` consecutive-frame distances (values unused).
        num_clusters: ``g``, at least 1.

    Returns:
        ``(..., T)`` int64 cluster ids.
    """
    _check_clusters(num_clusters)
    pos, num_frames = _positions(distances)
    return _renumber(_uniform_ids(pos, num_frames, num_clusters))


def cumulative_clusters(distances: Tensor, num_clusters: int) -> Tensor:
    """Cumulative clustering (paper Eq. 8, Figure 3).

    With ``C_i`` the distance accumulated from the first frame to frame ``i`` (``C_0 = 0``) and
    ``C_N`` the total, frame ``i`` goes to ``min(floor(g * C_i / C_N), g - 1)``: the total
    cumulative distance is cut into ``g`` equal parts. Empty parts are refilled by splitting the
    longest cluster (docs/models.md#full_video); a zero total gives uniform segments.

    Args:
        distances: ``(..., T - 1)`` non-negative distances between consecutive frames.
        num_clusters: ``g``, at least 1.

    Returns:
        ``(..., T)`` int64 cluster ids, exactly ``min(T, g)`` clusters.
    """
    _check_clusters(num_clusters)
    pos, num_frames = _positions(distances)
    dtype = distances.dtype if distances.is_floating_point() else torch.float32
    cumulative = _with_leading_zero(distances.to(dtype)).cumsum(dim=-1)
    total = cumulative[..., -1:]
    moving = total > 0
    safe_total = torch.where(moving, total, torch.ones_like(total))
    by_distance = torch.floor(cumulative * num_clusters / safe_total).to(torch.int64)
    by_distance = by_distance.clamp(max=num_clusters - 1)
    ids = torch.where(moving, by_distance, _uniform_ids(pos, num_frames, num_clusters))
    return _fill_clusters(ids, pos, num_clusters)


def slope_clusters(distances: Tensor, num_clusters: int) -> Tensor:
    """Slope clustering (paper Figure 3): cut after the ``g - 1`` largest distances.

    A cut at distance ``d_i`` (between frames ``i`` and ``i + 1``) starts a new cluster at frame
    ``i + 1``. Among equal distances the earliest are cut first. A zero total distance gives
    uniform segments instead of cuts after the first ``g - 1`` frames.

    Args:
        distances: ``(..., T - 1)`` non-negative distances between consecutive frames.
        num_clusters: ``g``, at least 1.

    Returns:
        ``(..., T)`` int64 cluster ids, exactly ``min(T, g)`` clusters.
    """
    _check_clusters(num_clusters)
    pos, num_frames = _positions(distances)
    if num_clusters == 1:
        return pos * 0
    wanted = num_clusters - 1
    # The wanted-th largest value is well defined whatever the ties; padding with -1 (below any
    # distance) keeps k static and makes every real distance a cut when T - 1 < g - 1.
    floor = distances.new_full(distances.shape[:-1] + (wanted,), -1.0)
    padded = torch.cat([distances, floor], dim=-1)
    threshold = padded.topk(wanted, dim=-1).values[..., -1:]
    above = distances > threshold
    tied = distances == threshold
    room = wanted - above.to(torch.int64).sum(dim=-1, keepdim=True)
    cuts = above | (tied & (tied.to(torch.int64).cumsum(dim=-1) <= room))
    ids = torch.cat([pos[..., :1], cuts.to(torch.int64).cumsum(dim=-1)], dim=-1)
    moving = _with_leading_zero(distances).sum(dim=-1, keepdim=True) > 0
    return torch.where(moving, ids, _renumber(_uniform_ids(pos, num_frames, num_clusters)))


def assign_clusters(distances: Tensor, num_clusters: int, mode: str = "cumulative") -> Tensor:
    """Dispatch to :func:`cumulative_clusters`, :func:`slope_clusters` or :func:`uniform_clusters`.

    Raises:
        ValueError: For a mode outside :data:`CLUSTERING_MODES`.
    """
    if mode == "cumulative":
        return cumulative_clusters(distances, num_clusters)
    if mode == "slope":
        return slope_clusters(distances, num_clusters)
    if mode == "uniform":
        return uniform_clusters(distances, num_clusters)
    raise ValueError(f"unknown clustering mode {mode!r}; expected one of {CLUSTERING_MODES}")


def cluster_weights(
    assignment: Tensor, num_clusters: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The averaging matrix that turns ``T`` frames into ``g`` cluster means.

    Output ``j`` averages the frames of cluster ``floor(j * k / g)``, ``k`` being the number of
    clusters in the assignment; with ``k = g`` that is cluster ``j``, with ``k < g`` (fewer
    frames than clusters) clusters are repeated in time order.

    Args:
        assignment: ``(..., T)`` contiguous int64 ids as returned by the clustering functions.
        num_clusters: ``g``.
        dtype: Floating dtype of the result.

    Returns:
        ``(..., g, T)`` weights; each row sums to 1.
    """
    _check_clusters(num_clusters)
    present = assignment.amax(dim=-1, keepdim=True) + 1  # (..., 1)
    slots = torch.arange(num_clusters, device=assignment.device)
    source = torch.div(slots * present, num_clusters, rounding_mode="floor")  # (..., g)
    members = (assignment.unsqueeze(-2) == source.unsqueeze(-1)).to(dtype)  # (..., g, T)
    return members / members.sum(dim=-1, keepdim=True).clamp(min=1)


def cluster_means(x: Tensor, assignment: Tensor, num_clusters: int) -> Tensor:
    """Mean activation of each cluster; gradients flow to ``x``, not to the assignment.

    Args:
        x: ``(..., T, *feature)`` activations, e.g. ``(T, C, H, W)`` or ``(N, T, C, H, W)``.
        assignment: ``(..., T)`` cluster ids (its shape is the leading part of ``x``'s).
        num_clusters: ``g``.

    Returns:
        ``(..., g, *feature)`` cluster means.
    """
    lead = assignment.dim()
    weights = cluster_weights(assignment.detach(), num_clusters, dtype=x.dtype)
    flat = x.flatten(lead)  # (..., T, D)
    means = torch.matmul(weights, flat)  # (..., g, D)
    return means.reshape(means.shape[:lead] + x.shape[lead:])


def temporal_cluster(x: Tensor, num_clusters: int, mode: str = "cumulative") -> Tensor:
    """The whole clustering step: distances, assignment and cluster means of ``(..., T, C, H, W)``.

    This is the operation the exported graph carries as one ``TemporalCluster`` node
    (:mod:`export.onnx`) and the TensorRT plugin computes (:mod:`export.plugin`); it is the
    reference both are checked against.

    Args:
        x: ``(..., T, C, H, W)`` activations.
        num_clusters: ``g``.
        mode: ``"cumulative"``, ``"slope"`` or ``"uniform"``.

    Returns:
        ``(..., g, C, H, W)`` cluster means; gradients flow to ``x`` through the means only.
    """
    assignment = assign_clusters(hamming_distances(x.detach()), num_clusters, mode)
    return cluster_means(x, assignment, num_clusters)


def _check_clusters(num_clusters: int) -> None:
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be at least 1, got {num_clusters}")
