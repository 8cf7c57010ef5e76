"""The fused temporal-clustering kernel (Triton), imported by :mod:`export._kernels` only when
it is needed: importing this module imports Triton.

One program per video: the sign-bit Hamming counts, the assignment of
:func:`models.clustering.assign_clusters` on a ``TMAX``-long register vector, and the cluster
means. :func:`means_kernel` is what the TensorRT plugin compiles ahead of time; its
parameters ``(x_ptr, frames, features, out_ptr)`` are the plugin's input, its two extra scalars
and its output, in the order TensorRT passes them. :func:`ids_kernel` writes the assignment
instead, for checks. Constexprs: ``G`` (clusters), ``GP`` (``G`` rounded up to a power of
two), ``METHOD`` (0 cumulative, 1 slope, 2 uniform), ``TMAX`` (largest frame count, a power of
two >= ``G``), ``BLOCK`` (features per step).
"""

import triton
import triton.language as tl

__all__ = ["ids_kernel", "means_kernel"]


@triton.jit
def shifted_counts(x_ptr, base, frames, features, pos, TMAX: tl.constexpr, BLOCK: tl.constexpr):
    # counts[i]: differing sign bits between frames i - 1 and i (0 at i = 0), i.e. the
    # reference's distances shifted by one, as its cumulative sum with a leading zero uses.
    counts = tl.zeros([TMAX], dtype=tl.int32)
    offsets = tl.arange(0, BLOCK)
    stride = features.to(tl.int64)
    for t in range(1, frames):
        row = base + t * stride
        acc = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(0, features, BLOCK):
            idx = start + offsets
            inside = idx < features
            before = tl.load(x_ptr + row - features + idx, mask=inside, other=0.0)
            here = tl.load(x_ptr + row + idx, mask=inside, other=0.0)
            acc += ((before > 0) != (here > 0)).to(tl.int32)
        counts = tl.where(pos == t, tl.sum(acc, axis=0), counts)
    return counts


@triton.jit
def renumber(ids, valid, GP: tl.constexpr):
    # Non-decreasing ids -> 0, 1, ...: the number of values below ids[i] that occur.
    values = tl.arange(0, GP)
    occurs = tl.max(((ids[:, None] == values[None, :]) & valid[:, None]).to(tl.int32), axis=0)
    below = (values[None, :] < ids[:, None]).to(tl.int32) * occurs[None, :]
    return tl.sum(below, axis=1)


@triton.jit
def split_longest(ids, pos, valid, G: tl.constexpr, GP: tl.constexpr):
    # models.clustering._split_longest: split the longest (earliest on ties) cluster in
    # two while fewer than G are present.
    values = tl.arange(0, GP)
    members = ((ids[:, None] == values[None, :]) & valid[:, None]).to(tl.int32)
    sizes = tl.sum(members, axis=0)
    present = tl.sum((sizes > 0).to(tl.int32), axis=0)
    length = tl.max(sizes, axis=0)
    longest = tl.min(tl.where(sizes == length, values, GP), axis=0)
    start = tl.sum(((ids < longest) & valid).to(tl.int32), axis=0)
    cut = start + (length + 1) // 2
    needed = (present < G) & (length >= 2)
    moves = (ids > longest) | ((ids == longest) & (pos >= cut))
    return ids + (moves & valid & needed).to(tl.int32)


@triton.jit
def assign(
    x_ptr,
    base,
    frames,
    features,
    pos,
    valid,
    G: tl.constexpr,
    GP: tl.constexpr,
    METHOD: tl.constexpr,
    TMAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    uniform = renumber((pos * G) // frames, valid, GP)
    if METHOD == 2 or G == 1:
        ids = uniform
    else:
        counts = shifted_counts(x_ptr, base, frames, features, pos, TMAX, BLOCK)
        distance = tl.math.div_rn(counts.to(tl.float32), features.to(tl.float32))
        if METHOD == 0:
            # Summed in float64 (exact for up to 2**20 features per frame) and rounded,
            # as the CPU reference's cumulative sum does.
            cumulative = tl.cumsum(distance.to(tl.float64), axis=0).to(tl.float32)
            total = tl.max(tl.where(valid, cumulative, 0.0), axis=0)
            moving = total > 0
            safe_total = tl.where(moving, total, 1.0)
            by_distance = tl.floor(tl.math.div_rn(cumulative * G, safe_total))
            by_distance = tl.minimum(by_distance.to(tl.int32), G - 1)
            ids = renumber(tl.where(moving, by_distance, (pos * G) // frames), valid, GP)
            for _ in tl.static_range(G - 1):
                ids = split_longest(ids, pos, valid, G, GP)
        else:
            # Slope: cut before the G - 1 largest distances, earliest first among ties; the
            # (G - 1)-th largest of the distances padded with -1 is the threshold.
            real = valid & (pos >= 1)
            padded = tl.where(real, distance, -1.0)
            ranked = tl.sort(padded, descending=True)
            threshold = tl.sum(tl.where(pos == G - 2, ranked, 0.0), axis=0)
            above = real & (distance > threshold)
            tied = real & (distance == threshold)
            room = (G - 1) - tl.sum(above.to(tl.int32), axis=0)
            ties_so_far = tl.cumsum(tied.to(tl.int32), axis=0)
            cuts = above | (tied & (ties_so_far <= room))
            moving = tl.sum(tl.where(real, counts, 0), axis=0) > 0
            ids = tl.where(moving, tl.cumsum(cuts.to(tl.int32), axis=0), uniform)
    return tl.where(valid, ids, -1)


@triton.jit
def means_kernel(
    x_ptr,
    frames,
    features,
    out_ptr,
    G: tl.constexpr,
    GP: tl.constexpr,
    METHOD: tl.constexpr,
    TMAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    video = tl.program_id(0).to(tl.int64)
    base = video * frames * features
    out_base = video * G * features
    offsets = tl.arange(0, BLOCK)
    if frames > TMAX:
        for index in range(0, G * features, BLOCK):
            idx = index + offsets
            nan = tl.full([BLOCK], float("nan"), tl.float32)
            tl.store(
                out_ptr + out_base + idx,
                nan.to(out_ptr.dtype.element_ty),
                mask=idx < G * features,
            )
    else:
        pos = tl.arange(0, TMAX)
        valid = pos < frames
        stride = features.to(tl.int64)
        ids = assign(x_ptr, base, frames, features, pos, valid, G, GP, METHOD, TMAX, BLOCK)
        present = tl.max(ids, axis=0) + 1
        # models.clustering.cluster_weights: output c averages cluster c * present // G,
        # a contiguous run of frames [first, stop).
        for c in range(0, G):
            source = (c * present) // G
            match = ids == source
            first = tl.min(tl.where(match, pos, TMAX), axis=0)
            stop = tl.max(tl.where(match, pos, -1), axis=0) + 1
            scale = 1.0 / (stop - first)
            row = out_base + c * features  # c * features < 2**31: G <= 64, features < 2**24
            for start in range(0, features, BLOCK):
                idx = start + offsets
                inside = idx < features
                acc = tl.zeros([BLOCK], dtype=tl.float32)
                for t in range(first, stop):
                    value = tl.load(x_ptr + base + t * stride + idx, mask=inside, other=0.0)
                    acc += value.to(tl.float32)
                result = (acc * scale).to(out_ptr.dtype.element_ty)
                tl.store(out_ptr + row + idx, result, mask=inside)


@triton.jit
def ids_kernel(
    x_ptr,
    frames,
    features,
    ids_ptr,
    G: tl.constexpr,
    GP: tl.constexpr,
    METHOD: tl.constexpr,
    TMAX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    video = tl.program_id(0).to(tl.int64)
    pos = tl.arange(0, TMAX)
    valid = pos < frames
    if frames > TMAX:
        for start in range(0, frames, TMAX):
            idx = start + pos
            tl.store(
                ids_ptr + video * frames + idx, tl.full([TMAX], -1, tl.int32), mask=idx < frames
            )
    else:
        base = video * frames * features
        ids = assign(x_ptr, base, frames, features, pos, valid, G, GP, METHOD, TMAX, BLOCK)
        tl.store(ids_ptr + video * frames + pos, ids, mask=valid)
