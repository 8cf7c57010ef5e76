"""Frame samplers: which frame indices of a decoded video become network inputs.

Every sampler is a pure function returning ``int64`` frame indices. The dispatcher
:func:`sample_indices` always answers an index matrix of shape ``(N, L)``: ``N`` inputs
(clips, segments or walks) of ``L`` frame indices each, in time order within a row.

* ``consecutive`` -- c3d_vll and attention_lstm: clips of ``clip_len`` frames starting every
  ``stride`` frames.
* ``uniform`` -- TSN-style segments, the TSM-k baseline of the full_video family.
* ``pz`` -- ms3d (its paper's Eq. 1): frames drawn from the frame-difference distribution
  ``p(z)`` into slow / mid / fast pathways.
* ``all`` -- the full_video family: every frame.

All but ``pz`` pick from the frame count alone (:data:`COUNT_SAMPLERS`), so their indices
can be chosen before any frame is decoded, and only the picked frames decoded.

Padding of short videos and the rounding of evenly spaced positions: docs/data.md#samplers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "COUNT_SAMPLERS",
    "SAMPLERS",
    "all_frames",
    "consecutive_clips",
    "distribution_from_differences",
    "evenly_spaced",
    "frame_difference_distribution",
    "frame_differences",
    "pathway_walk",
    "pz_walks",
    "sample_by_distribution",
    "sample_indices",
    "uniform_segments",
]


def _check_positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def consecutive_clips(
    num_frames: int, clip_len: int, stride: int | None = None, frame_step: int = 1
) -> np.ndarray:
    """Clips of ``clip_len`` frames taken every ``frame_step`` frames, starting at frame 0
    every ``stride`` frames.

    A clip covers ``span = (clip_len - 1) * frame_step + 1`` source frames; ``frame_step > 1``
    is the temporal dilation other tools call the frame interval (it lets a short clip see a
    slow motion over more time). A tail too short for a whole clip is dropped. A video shorter
    than ``span`` gives one clip whose indices past the end repeat the last frame (the c3d_vll
    paper trains on such videos too).

    Args:
        num_frames: Frames in the video (``T >= 1``).
        clip_len: Frames per clip.
        stride: Frames between clip starts; ``None`` means ``span`` (non-overlapping).
        frame_step: Frames between consecutive frames of a clip (1: adjacent frames).

    Returns:
        ``(N, clip_len)`` int64 indices with ``N = (T - span) // stride + 1`` (or 1).

    Raises:
        ValueError: On a non-positive argument.
    """
    _check_positive("num_frames", num_frames)
    _check_positive("clip_len", clip_len)
    _check_positive("frame_step", frame_step)
    offsets = np.arange(clip_len, dtype=np.int64) * frame_step
    span = int(offsets[-1]) + 1
    stride = span if stride is None else stride
    _check_positive("stride", stride)
    if num_frames < span:
        return np.minimum(offsets, num_frames - 1)[None, :]
    starts = np.arange(0, num_frames - span + 1, stride, dtype=np.int64)
    return starts[:, None] + offsets[None, :]


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced positions out of ``range(n)``; all ``n`` of them when ``n <= k``.

    Position ``i`` is the centre of the ``i``-th of ``k`` equal bins,
    ``floor((2 i + 1) * n / (2 k))``, so the picks are symmetric about the middle and never
    repeat. Used to cap the clips of a long video (``max_clips``).

    Args:
        n: Number of items to choose from (``>= 0``).
        k: Number of positions wanted (``>= 1``).

    Returns:
        ``(min(n, k),)`` int64 positions, strictly increasing.
    """
    _check_positive("k", k)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n <= k:
        return np.arange(n, dtype=np.int64)
    i = np.arange(k, dtype=np.int64)
    return ((2 * i + 1) * n) // (2 * k)


def uniform_segments(
    num_frames: int, k: int, *, train: bool = False, rng: np.random.Generator | None = None
) -> np.ndarray:
    """TSN sampling: one frame from each of ``k`` equal segments.

    Segment ``i`` covers frames ``[floor(i T / k), floor((i + 1) T / k))``. In evaluation the
    frame is the segment centre ``floor((2 i + 1) T / (2 k))``; in training it is uniform over
    the segment. When ``T < k`` some segments are empty and frames repeat (evaluation:
    the same centre formula; training: the segment's start frame), still in time order.

    Args:
        num_frames: Frames in the video (``T >= 1``).
        k: Number of segments.
        train: Draw a random offset per segment instead of taking the centre.
        rng: Random generator for training; a fresh unseeded one when ``None``.

    Returns:
        ``(k,)`` int64 indices, non-decreasing.
    """
    _check_positive("num_frames", num_frames)
    _check_positive("k", k)
    i = np.arange(k, dtype=np.int64)
    if not train:
        return ((2 * i + 1) * num_frames) // (2 * k)
    rng = np.random.default_rng() if rng is None else rng
    start = (i * num_frames) // k
    end = ((i + 1) * num_frames) // k
    width = np.maximum(end - start, 1)
    return start + rng.integers(0, width, dtype=np.int64)


def frame_difference_distribution(frames: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """MS3D's frame-difference distribution ``p(z)`` over frame indices (MS3D, Eq. 1).

    ``d_z = sum_xy |F_{z+1} - F_z|`` for ``z = 0 .. T-2`` is credited to frame ``z + 1`` (the
    frame that *shows* the change); frame 0 gets 0. The floor mixes in a uniform share so
    static stretches and static videos can still be sampled::

        p = (1 - floor) * d / sum(d) + floor / T      (uniform when sum(d) == 0)

    Differences are taken in int16 so uint8 frames do not wrap around.

    Args:
        frames: ``(T, H, W[, C])`` frames (uint8 or any integer/float type).
        floor: Uniform share in ``[0, 1]``.

    Returns:
        ``(T,)`` float64 probabilities summing to 1.
    """
    frames = np.asarray(frames)
    if frames.ndim < 1 or frames.shape[0] < 1:
        raise ValueError("frames must hold at least one frame")
    return distribution_from_differences(frame_differences(frames), floor)


def frame_differences(frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """``d_z = sum_xy |F_{z+1} - F_z|`` between consecutive frames, as float64.

    With ``previous`` (the frame before ``frames[0]``), the first difference is taken against
    it, so a video read chunk by chunk gives, concatenated, exactly the differences of the
    whole video.

    Args:
        frames: ``(t, H, W[, C])`` frames.
        previous: The frame before them, or ``None`` at the start of the video.

    Returns:
        ``(t - 1,)`` differences, or ``(t,)`` with ``previous``.
    """
    frames = np.asarray(frames)
    if previous is not None:
        frames = np.concatenate([np.asarray(previous)[None], frames])
    t = frames.shape[0]
    if t < 2:
        return np.zeros(0, dtype=np.float64)
    work = frames.astype(np.int16) if frames.dtype == np.uint8 else frames.astype(np.float64)
    return np.abs(np.diff(work, axis=0)).reshape(t - 1, -1).sum(axis=1, dtype=np.float64)


def distribution_from_differences(diffs: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """:func:`frame_difference_distribution` from the ``(T - 1,)`` frame differences."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    diffs = np.asarray(diffs, dtype=np.float64)
    t = len(diffs) + 1
    uniform = np.full(t, 1.0 / t)
    if t == 1:
        return uniform
    total = diffs.sum()
    if total <= 0:
        return uniform
    d = np.concatenate([[0.0], diffs])
    p = (1.0 - floor) * d / total + floor / t
    return p / p.sum()


def sample_by_distribution(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` frame indices from ``p`` without replacement, returned in time order.

    When the video has fewer than ``n`` frames every frame is taken and the repeats are
    spread evenly: index ``floor(i * T / n)`` for ``i < n``. When fewer than ``n`` frames
    have non-zero probability (``floor = 0``), all of those are taken and the rest are drawn
    uniformly from the zero-probability frames.

    Args:
        p: ``(T,)`` probabilities (non-negative, summing to 1).
        n: Number of indices.
        rng: Random generator (seed it for reproducible walks).

    Returns:
        ``(n,)`` int64 indices, sorted; distinct when ``T >= n``.
    """
    _check_positive("n", n)
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or len(p) < 1:
        raise ValueError("p must be a non-empty 1-D array")
    if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError("p must be non-negative and sum to 1")
    t = len(p)
    if t <= n:
        return (np.arange(n, dtype=np.int64) * t) // n
    positive = np.flatnonzero(p > 0)
    if len(positive) >= n:
        picked = rng.choice(t, size=n, replace=False, p=p / p.sum())
    else:
        zeros = np.flatnonzero(p <= 0)
        extra = rng.choice(zeros, size=n - len(positive), replace=False)
        picked = np.concatenate([positive, extra])
    return np.sort(picked).astype(np.int64)


def pathway_walk(p: np.ndarray, sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """One MS3D walk: independent draws for the slow, mid and fast pathways, concatenated.

    Args:
        p: ``(T,)`` frame distribution from :func:`frame_difference_distribution`.
        sizes: Frames per pathway, e.g. ``(7, 17, 25)`` (the MS3D paper's).
        rng: Random generator.

    Returns:
        ``(sum(sizes),)`` int64 indices ``[slow | mid | fast]``, each part sorted.
    """
    if len(sizes) == 0:
        raise ValueError("sizes must name at least one pathway")
    return np.concatenate([sample_by_distribution(p, int(s), rng) for s in sizes])


def all_frames(num_frames: int, min_frames: int = 1) -> np.ndarray:
    """Every frame, padded to ``min_frames`` by repeating the last one.

    Returns:
        ``(max(T, min_frames),)`` int64 indices.
    """
    _check_positive("num_frames", num_frames)
    _check_positive("min_frames", min_frames)
    length = max(num_frames, min_frames)
    return np.minimum(np.arange(length, dtype=np.int64), num_frames - 1)


# Adapters with one signature, so the dispatcher and SAMPLERS stay a plain mapping.


def _sample_consecutive(
    frames: np.ndarray,
    *,
    train: bool,
    rng: np.random.Generator | None,
    clip_len: int,
    stride: int | None = None,
    frame_step: int = 1,
    max_clips: int | None = None,
) -> np.ndarray:
    clips = consecutive_clips(len(frames), clip_len, stride, frame_step)
    if train and rng is not None and len(clips) and clips[-1, -1] < len(frames) - 1:
        # Temporal jitter: shift the whole grid of clips by up to the slack after the last
        # clip (less than one stride), so the number of clips never changes.
        step = int(clips[1, 0] - clips[0, 0]) if len(clips) > 1 else len(frames)
        slack = min(len(frames) - 1 - int(clips[-1, -1]), step - 1)
        clips = clips + int(rng.integers(0, slack + 1))
    if max_clips is not None:
        clips = clips[evenly_spaced(len(clips), max_clips)]
    return clips


def _sample_uniform(
    frames: np.ndarray, *, train: bool, rng: np.random.Generator | None, num_segments: int
) -> np.ndarray:
    return uniform_segments(len(frames), num_segments, train=train, rng=rng)[None, :]


def _sample_pz(
    frames: np.ndarray,
    *,
    train: bool,
    rng: np.random.Generator | None,
    sizes: Sequence[int] = (7, 17, 25),
    walks: int = 1,
    floor: float = 1e-3,
) -> np.ndarray:
    return pz_walks(frame_difference_distribution(frames, floor), sizes, walks, rng)


def pz_walks(
    p: np.ndarray, sizes: Sequence[int], walks: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``walks`` MS3D walks drawn from ``p``, ``(walks, sum(sizes))``; the ``pz`` sampler's
    rows. Without ``rng`` the draws use seed 0, so evaluation and serving are reproducible."""
    _check_positive("walks", walks)
    rng = np.random.default_rng(0) if rng is None else rng
    return np.stack([pathway_walk(p, sizes, rng) for _ in range(walks)])


def _sample_all(
    frames: np.ndarray, *, train: bool, rng: np.random.Generator | None, min_frames: int = 1
) -> np.ndarray:
    return all_frames(len(frames), min_frames)[None, :]


SAMPLERS: dict[str, Callable[..., np.ndarray]] = {
    "consecutive": _sample_consecutive,
    "uniform": _sample_uniform,
    "pz": _sample_pz,
    "all": _sample_all,
}


# Samplers that read only the number of frames, never their pixels.
COUNT_SAMPLERS = frozenset({"consecutive", "uniform", "all"})


def sample_indices(
    name: str,
    frames: np.ndarray | int,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_inputs: int = 0,
    **kwargs: Any,
) -> np.ndarray:
    """Turn a decoded video into an ``(N, L)`` index matrix with the sampler ``name``.

    Args:
        name: ``"consecutive"`` (``clip_len``, ``stride``, ``frame_step``), ``"uniform"``
            (``num_segments``), ``"pz"`` (``sizes=(7, 17, 25)``, ``walks=1``,
            ``floor=1e-3``; seed 0 when ``rng`` is ``None``) or ``"all"`` (``min_frames``).
        frames: ``(T, H, W, C)`` decoded frames, or just ``T`` for a sampler in
            :data:`COUNT_SAMPLERS` (every one but ``pz``, which looks at the pixels).
        train: Training-time randomness where the sampler has any (``uniform``).
        rng: Random generator for ``uniform`` (training) and ``pz``.
        max_inputs: Keep at most this many rows, evenly spaced (0: all), e.g. the cap on
            clips per video in training and evaluation.
        **kwargs: The sampler's own arguments, as listed above.

    Returns:
        ``(N, L)`` int64 frame indices.

    Raises:
        KeyError: For an unknown sampler name.
        TypeError: For an argument the sampler does not take.
        ValueError: For a video without frames, or a count given to ``pz``.
    """
    try:
        sampler = SAMPLERS[name]
    except KeyError:
        raise KeyError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}") from None
    if isinstance(frames, (int, np.integer)):
        if name not in COUNT_SAMPLERS:
            raise ValueError(f"the {name!r} sampler reads the pixels: pass the frames, not a count")
        frames = np.empty((int(frames), 0), dtype=np.uint8)  # the count is all it reads
    if len(frames) < 1:
        raise ValueError("cannot sample from a video with no frames")
    indices = np.asarray(sampler(frames, train=train, rng=rng, **kwargs), dtype=np.int64)
    if max_inputs and len(indices) > max_inputs:
        indices = indices[evenly_spaced(len(indices), max_inputs)]
    return indices
