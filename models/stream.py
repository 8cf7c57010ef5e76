"""Streaming recognition: a video file read chunk by chunk, in memory bounded by the chunk,
the batch and the family's state, never by the video's length.

:func:`recognize_video` is the one path from a video file to its answer (and, on request, its
timeline) for training evaluation, the service and the batch tool. For videos that fit in
memory it gives the answer of :func:`models.pipeline.predict_frames` on the decoded frames
(same inputs, same order; tested). How each family streams and the timeline rule per family:
``docs/streaming.md``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from models.aggregators import VideoScores
from models.clustering import assign_clusters
from models.pipeline import (
    Forward,
    Prediction,
    aggregate_outputs,
    decode_sample,
    inputs_from_indices,
    predict_frames,
    preprocess_frames,
    run_network,
)
from models.spec import VariantSpec
from video.decode import (
    DecodeLimits,
    VideoMeta,
    decode_frames_at,
    decode_sampled,
    iter_video_chunks,
    probe_video,
)
from video.errors import VideoError
from video.sampling import (
    distribution_from_differences,
    evenly_spaced,
    frame_differences,
    pz_walks,
    uniform_segments,
)

__all__ = [
    "Cancelled",
    "Segment",
    "StreamAnswer",
    "TorchStages",
    "WholeVideoStages",
    "recognize_video",
    "stages_for",
    "stream_outputs",
]

# Frames decoded per chunk: the unit of memory and of cancellation checks.
CHUNK_FRAMES = 64
# Decoded frames a first pass keeps so that a second pass is not needed when the whole video
# fits (ms3d, TSM-k): a fixed budget, so memory stays bounded; 1 minute at 64x64 is 18 MB.
KEEP_BYTES = 64 * 2**20
# Chunks decoded ahead of the network by a reader's thread.
AHEAD = 2


class Cancelled(Exception):
    """The caller asked to stop (e.g. the client went away)."""


class WholeVideoStages(Protocol):
    """A whole-video network split where full_video clusters: what the streamed two-pass
    clustering runs (backends provide it; :class:`TorchStages` for PyTorch).

    Attributes:
        context: Frames on each side that reach one frame's early activation.
        num_clusters: ``g``.
        clustering: ``cumulative``, ``slope``, ``uniform`` or ``none``.
    """

    context: int
    num_clusters: int
    clustering: str

    def early(self, x: Tensor) -> Tensor:
        """``(1, 3, t, H, W)`` frames -> ``(1, t, C, h, w)`` early (layer1) activations."""
        ...

    def late(self, segments: Tensor) -> Tensor:
        """``(1, g, C, h, w)`` cluster means -> ``(1, num_classes)`` logits."""
        ...


class TorchStages:
    """:class:`WholeVideoStages` of a PyTorch full_video network (eval mode, no grad)."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.device = device
        self.context = int(model.early_context)  # type: ignore[arg-type]
        self.num_clusters = int(model.num_clusters)  # type: ignore[arg-type]
        self.clustering = str(model.clustering)

    @torch.inference_mode()
    def early(self, x: Tensor) -> Tensor:
        out: Tensor = self.model.early_features(x.to(self.device))  # type: ignore[operator]
        return out.float().cpu()

    @torch.inference_mode()
    def late(self, segments: Tensor) -> Tensor:
        m = self.model
        out: Tensor = m.forward_head(m.late_features(segments.to(self.device)))  # type: ignore[operator]
        return out.float().cpu()


def stages_for(model: nn.Module, device: str | torch.device = "cpu") -> TorchStages | None:
    """The two stages of a network that has them (full_video), else ``None``."""
    return TorchStages(model, device) if hasattr(model, "early_features") else None


@dataclass(frozen=True)
class Segment:
    """One timeline window and its answer by the family's own rule."""

    start_s: float
    end_s: float
    scores: VideoScores


@dataclass
class StreamAnswer:
    """A video's answer, what the decoder saw, and (on request) its timeline."""

    prediction: Prediction
    meta: VideoMeta
    timeline: list[Segment] = field(default_factory=list)


@dataclass
class _Context:
    """What one recognition needs beyond the frames."""

    spec: VariantSpec
    forward: Forward
    batch_size: int
    max_inputs: int
    centres: Tensor | None
    gamma: float | None
    fps: float
    timeline: bool
    window: int  # frames per timeline window (ms3d, full_video)
    emit: Callable[[Segment], None]
    stages: WholeVideoStages | None
    reader: _Reader | None = None

    def end_s(self) -> float:
        """The video's end, once a pass has read it to the end."""
        meta = self.reader.meta if self.reader is not None else None
        return meta.duration_s if meta is not None else 0.0

    def scores(self, outputs: Tensor) -> VideoScores:
        return aggregate_outputs(outputs, self.spec, centres=self.centres, gamma=self.gamma)

    def seconds(self, frame: int) -> float:
        return frame / self.fps


class _Reader:
    """Passes over one video file, chunk by chunk at the model's decode size, or (``sparse``)
    decoding only the frames a sampler picks where that is exact (docs/decode.md)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        spec: VariantSpec,
        limits: DecodeLimits | None,
        threads: int,
        chunk: int,
        cancelled: Callable[[], bool] | None,
        sparse: bool = True,
    ) -> None:
        self.path, self.spec, self.limits = path, spec, limits
        self.threads, self.chunk, self.cancelled = threads, chunk, cancelled
        self.sparse = sparse
        self.meta: VideoMeta | None = None

    def check(self, _frames: int = 0) -> None:
        """Raise :class:`Cancelled` once the caller asked to stop."""
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("recognition cancelled")

    def frames(self) -> Iterator[np.ndarray]:
        """One pass: ``(t, H, W, 3)`` uint8 chunks; records the decoded meta at the end.

        A thread decodes up to :data:`AHEAD` chunks ahead, so decoding overlaps the network
        instead of alternating with it.
        """
        ahead: queue.Queue[np.ndarray | BaseException | None] = queue.Queue(AHEAD)
        stop = threading.Event()

        def put(item: np.ndarray | BaseException | None) -> bool:
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def keep(meta: VideoMeta) -> None:
            self.meta = meta

        def decode() -> None:
            chunks = iter_video_chunks(
                self.path,
                chunk_size=self.chunk,
                size=self.spec.decode_hw(),
                limits=self.limits,
                threads=self.threads,
                on_meta=keep,
            )
            previous: np.ndarray | None = None  # the raw frame before the chunk
            try:
                for chunk in chunks:
                    ready = preprocess_frames(chunk, self.spec, previous)
                    if len(chunk):
                        previous = chunk[-1]
                    if not put(ready):
                        return
                put(None)
            except BaseException as err:  # handed to the reader, raised there
                put(err)
            finally:
                chunks.close()

        worker = threading.Thread(target=decode, name="actrec-decode-ahead", daemon=True)
        worker.start()
        try:
            while True:
                self.check()
                item = ahead.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()


def recognize_video(
    path: str | os.PathLike[str],
    spec: VariantSpec,
    forward: Forward,
    *,
    stages: WholeVideoStages | None = None,
    batch_size: int = 16,
    max_inputs: int = 0,
    centres: Tensor | None = None,
    gamma: float | None = None,
    limits: DecodeLimits | None = None,
    threads: int = 2,
    chunk_frames: int = CHUNK_FRAMES,
    timeline: bool = False,
    window_s: float = 10.0,
    on_segment: Callable[[Segment], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    sparse: bool = True,
) -> StreamAnswer:
    """Recognise the video file at ``path`` in bounded memory.

    Args:
        path: A video file (read once or twice, by family).
        spec: The model's variant spec.
        forward: The network call on a batch of inputs.
        stages: The early/late split of a whole-video network (full_video); without it a
            full_video model decodes the whole video into memory.
        batch_size: Inputs per network call.
        max_inputs: Cap on inputs that vote (0: all), chosen evenly spaced as in memory.
        centres: ms3d's repository centres.
        gamma: ms3d's rejection threshold.
        limits: Decode caps.
        threads: Decoder threads.
        chunk_frames: Frames decoded per chunk.
        timeline: Also answer per window (see ``docs/streaming.md``).
        window_s: Seconds per timeline window for ms3d and full_video.
        on_segment: Called with each timeline segment as soon as it is known.
        cancelled: Polled between chunks; ``True`` stops the work with :class:`Cancelled`.
        sparse: Decode only the frames the sampler picks where the answer needs no other
            (TSM-k segments, capped clips, ms3d's second pass; no timeline) and the packets
            locate them exactly; the answer is the same either way (docs/decode.md).

    Raises:
        video.errors.VideoError: The file is not a decodable video within ``limits``.
        Cancelled: ``cancelled()`` turned true.
    """
    outputs, meta, segments = stream_outputs(
        path,
        spec,
        forward,
        stages=stages,
        batch_size=batch_size,
        max_inputs=max_inputs,
        centres=centres,
        gamma=gamma,
        limits=limits,
        threads=threads,
        chunk_frames=chunk_frames,
        timeline=timeline,
        window_s=window_s,
        on_segment=on_segment,
        cancelled=cancelled,
        sparse=sparse,
    )
    scores = aggregate_outputs(outputs, spec, centres=centres, gamma=gamma)
    return StreamAnswer(Prediction(scores, len(outputs), outputs), meta, segments)


def stream_outputs(
    path: str | os.PathLike[str],
    spec: VariantSpec,
    forward: Forward,
    *,
    stages: WholeVideoStages | None = None,
    batch_size: int = 16,
    max_inputs: int = 0,
    centres: Tensor | None = None,
    gamma: float | None = None,
    limits: DecodeLimits | None = None,
    threads: int = 2,
    chunk_frames: int = CHUNK_FRAMES,
    timeline: bool = False,
    window_s: float = 10.0,
    on_segment: Callable[[Segment], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    sparse: bool = True,
) -> tuple[Tensor, VideoMeta, list[Segment]]:
    """The network outputs that vote (ms3d: the walk embeddings, as a repository is built
    from), the decoded video's meta and the timeline; arguments as :func:`recognize_video`."""
    probe = probe_video(path, limits=limits)
    fps = probe.fps if probe.fps > 0 else 25.0
    segments: list[Segment] = []

    def emit(segment: Segment) -> None:
        segments.append(segment)
        if on_segment is not None:
            on_segment(segment)

    ctx = _Context(
        spec=spec,
        forward=forward,
        batch_size=batch_size,
        max_inputs=max_inputs,
        centres=centres,
        gamma=gamma,
        fps=fps,
        timeline=timeline,
        window=max(1, round(window_s * fps)),
        emit=emit,
        stages=stages,
    )
    # Preprocessing that looks at the next frame (tailor) needs two frames in the first chunk.
    chunk = max(chunk_frames, 2) if spec.tailor else chunk_frames
    reader = _Reader(path, spec, limits, threads, chunk, cancelled, sparse)
    ctx.reader = reader
    try:
        family = _FAMILY_PATHS[spec.sampler]
    except KeyError:
        raise ValueError(f"no streamed path for sampler {spec.sampler!r}") from None
    outputs = family(reader, ctx)
    assert reader.meta is not None  # every path reads the video to its end
    return outputs, reader.meta, segments


def _capped(ctx: _Context, outputs: Tensor) -> Tensor:
    if ctx.max_inputs and len(outputs) > ctx.max_inputs:
        return outputs[torch.from_numpy(evenly_spaced(len(outputs), ctx.max_inputs))]
    return outputs


# --------------------------------------------------------------------------- consecutive clips


def _consecutive(reader: _Reader, ctx: _Context) -> Tensor:
    """c3d_vll, attention_lstm: each clip becomes an input as soon as its last frame arrives;
    only the frames of clips not yet complete are kept. Under a cap on the clips that vote,
    only the capped clips' frames are decoded, where that is exact."""
    if ctx.max_inputs:
        sampled = _sampled(reader, ctx)
        if sampled is not None:
            return sampled
    args = ctx.spec.sampler_args()
    offsets = np.arange(int(args["clip_len"]), dtype=np.int64) * int(args.get("frame_step", 1))
    span = int(offsets[-1]) + 1
    stride = int(args.get("stride") or span)
    buf = np.empty((0, *ctx.spec.decode_hw(), 3), dtype=np.uint8)
    base = 0  # index of buf[0] in the video
    total = 0
    start = 0  # next clip's first frame
    pending: list[Tensor] = []
    # Each clip's outputs as Python floats (exact float32 values): small tensors kept per
    # batch between the batches' large activations fragment the heap, which then grows with
    # the video (measured: c3d_vll's peak 1.6x from 1 to 60 minutes).
    outputs: list[list[float]] = []
    starts: list[int] = []
    held: list[tuple[int, Tensor]] = []  # clips run but not yet on the timeline
    out_shape: list[tuple[int, ...]] = []  # one clip's output shape

    def run() -> None:
        if not pending:
            return
        out = run_network(ctx.forward, torch.cat(pending), ctx.batch_size)
        if not out_shape:
            out_shape.append(tuple(out.shape[1:]))
        pending.clear()
        outputs.extend(out.flatten(1).tolist())
        if ctx.timeline:
            first = len(starts) - len(out)
            held.extend((starts[first + k], out[k : k + 1]) for k in range(len(out)))
            # A clip's segment is known once the next clip exists (the last one's end is
            # stretched to the video's end, so it waits for the end).
            while len(held) > 1:
                s, o = held.pop(0)
                ctx.emit(Segment(ctx.seconds(s), ctx.seconds(held[0][0]), ctx.scores(o)))

    for chunk in reader.frames():
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        total += len(chunk)
        while start + span <= total:
            pending.append(inputs_from_indices(buf, (start + offsets - base)[None], ctx.spec))
            starts.append(start)
            start += stride
            if len(pending) == ctx.batch_size:
                run()
        drop = min(start, total) - base
        if drop > 0:
            buf, base = buf[drop:], base + drop
    if not starts:  # shorter than one clip: one clip padded with the last frame
        pending.append(inputs_from_indices(buf, np.minimum(offsets, total - 1)[None], ctx.spec))
        starts.append(0)
    run()
    if ctx.timeline and held:
        s, o = held.pop()
        ctx.emit(Segment(ctx.seconds(s), max(ctx.end_s(), ctx.seconds(s)), ctx.scores(o)))
    shape = out_shape[0] if out_shape else ()
    return _capped(ctx, torch.tensor(outputs, dtype=torch.float32).reshape(-1, *shape))


# --------------------------------------------------------------------------- ms3d


def _pz(reader: _Reader, ctx: _Context) -> Tensor:
    """ms3d: pass 1 streams the frame differences (O(T) scalars), pass 2 keeps only the
    frames the p(z) walks picked."""
    args = ctx.spec.sampler_args()
    floor = float(args.get("floor", 1e-3))
    diffs: list[np.ndarray] = []
    previous: np.ndarray | None = None
    window = _Windows(ctx, lambda frames: _pz_frames(ctx, frames))
    kept = _Kept()
    total = 0
    for chunk in reader.frames():
        diffs.append(frame_differences(chunk, previous))
        previous = chunk[-1]
        total += len(chunk)
        window.add(chunk)
        kept.add(chunk)
    window.finish()
    p = distribution_from_differences(np.concatenate(diffs), floor)
    rows = pz_walks(p, args["sizes"], int(args.get("walks", 1)))
    if ctx.max_inputs and len(rows) > ctx.max_inputs:
        rows = rows[evenly_spaced(len(rows), ctx.max_inputs)]
    frames, local = kept.pick(rows) if kept.whole else _keep_frames(reader, rows, total)
    return run_network(ctx.forward, inputs_from_indices(frames, local, ctx.spec), ctx.batch_size)


def _pz_frames(ctx: _Context, frames: np.ndarray) -> Tensor:
    return predict_frames(
        ctx.forward,
        frames,
        ctx.spec,
        batch_size=ctx.batch_size,
        centres=ctx.centres,
        gamma=ctx.gamma,
    ).outputs


class _Kept:
    """The first pass's frames while they fit :data:`KEEP_BYTES`; past it, none are kept and
    the second pass decodes the frames it needs."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.nbytes = 0
        self.whole = True

    def add(self, chunk: np.ndarray) -> None:
        if not self.whole:
            return
        self.nbytes += chunk.nbytes
        if self.nbytes > KEEP_BYTES:
            self.chunks, self.whole = [], False
        else:
            self.chunks.append(chunk)

    def pick(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frames ``rows`` index, as :func:`_keep_frames` gives them."""
        needed = np.unique(rows)
        picked, base = [], 0
        for chunk in self.chunks:
            here = needed[(needed >= base) & (needed < base + len(chunk))]
            picked.append(chunk[here - base])
            base += len(chunk)
        return np.concatenate(picked), np.searchsorted(needed, rows)


def _keep_frames(
    reader: _Reader, rows: np.ndarray, total: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A second pass decoding only the GOPs that hold the frames ``rows`` index (or, where
    the packets do not locate frames exactly, decoding every frame and converting those):
    ``(frames, rows into them)``. ``total`` is the first pass's frame count. With
    preprocessing that looks at neighbouring frames (the tailor strategy), the pass reads
    every frame instead and keeps those."""
    if reader.spec.tailor:
        return _keep_preprocessed(reader, rows)
    local = np.searchsorted(np.unique(rows), rows)
    if reader.sparse and total is not None:
        got = decode_sampled(
            reader.path,
            lambda _count: rows,
            size=reader.spec.decode_hw(),
            limits=reader.limits,
            threads=reader.threads,
            on_progress=reader.check,
            every=reader.chunk,
            frame_count=total,
        )
        if got is not None:
            return got[0], local
    kept, _ = decode_frames_at(
        reader.path,
        rows,
        size=reader.spec.decode_hw(),
        limits=reader.limits,
        threads=reader.threads,
        on_progress=reader.check,
        every=reader.chunk,
    )
    return kept, local


def _keep_preprocessed(reader: _Reader, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_keep_frames` through a whole pass of the reader (frames preprocessed as in
    the first pass), keeping only the frames ``rows`` index."""
    needed = np.unique(rows)
    picked, base = [], 0
    for chunk in reader.frames():
        here = needed[(needed >= base) & (needed < base + len(chunk))]
        if len(here):
            picked.append(chunk[here - base].copy())
        base += len(chunk)
    if not picked or sum(len(p) for p in picked) != len(needed):
        raise VideoError(
            f"the second pass over {reader.path} gave {base} frames, fewer than the first"
        )
    return np.concatenate(picked), np.searchsorted(needed, rows)


# --------------------------------------------------------------------------- full_video


def _uniform(reader: _Reader, ctx: _Context) -> Tensor:
    """TSM-k: only the k segment centres are decoded, where that is exact; else pass 1
    counts the frames, pass 2 keeps the k segment centres."""
    sampled = _sampled(reader, ctx)
    if sampled is not None:
        return sampled
    total = 0
    window = _Windows(ctx, lambda frames: _in_memory(ctx, frames))
    kept = _Kept()
    for chunk in reader.frames():
        total += len(chunk)
        window.add(chunk)
        kept.add(chunk)
    window.finish()
    rows = uniform_segments(total, int(ctx.spec.sampler_args()["num_segments"]))[None, :]
    frames, local = kept.pick(rows) if kept.whole else _keep_frames(reader, rows, total)
    return run_network(ctx.forward, inputs_from_indices(frames, local, ctx.spec), ctx.batch_size)


def _sampled(reader: _Reader, ctx: _Context) -> Tensor | None:
    """The outputs of the inputs the sampler picks, from only the frames they need
    (:func:`models.pipeline.decode_sample`); ``None`` where that does not apply: sparse
    decoding off, a timeline (its windows see every frame), or packets that do not locate
    the frames exactly."""
    if not reader.sparse or ctx.timeline:
        return None
    got = decode_sample(
        reader.path,
        ctx.spec,
        max_inputs=ctx.max_inputs,
        limits=reader.limits,
        threads=reader.threads,
        on_progress=reader.check,
        every=reader.chunk,
    )
    if got is None:
        return None
    frames, indices, reader.meta = got
    inputs = inputs_from_indices(frames, indices, ctx.spec)
    return run_network(ctx.forward, inputs, ctx.batch_size)


def _in_memory(ctx: _Context, frames: np.ndarray) -> Tensor:
    return predict_frames(ctx.forward, frames, ctx.spec, batch_size=ctx.batch_size).outputs


def _whole(reader: _Reader, ctx: _Context) -> Tensor:
    """full_video on every frame: the streamed two-pass clustering (pass 1: early activations
    chunk by chunk, only the previous frame's sign bits and the distances kept; the clusters
    assigned; pass 2: early activations again, summed per cluster), then the late stages on
    the g means. Without stages, or without clustering (TSM on all frames needs them all at
    once), the video is decoded into memory."""
    stages = ctx.stages
    if stages is None or stages.clustering == "none":
        frames = np.concatenate(list(reader.frames()))
        window = _Windows(ctx, lambda f: _in_memory(ctx, f))
        window.add(frames)
        window.finish()
        return _in_memory(ctx, frames)
    window = _Windows(ctx, lambda f: _two_pass(ctx, stages, lambda: iter(_split(f))))
    return _two_pass(ctx, stages, reader.frames, window)


def _split(frames: np.ndarray, size: int = CHUNK_FRAMES) -> list[np.ndarray]:
    return [frames[i : i + size] for i in range(0, len(frames), size)]


def _two_pass(
    ctx: _Context,
    stages: WholeVideoStages,
    frames: Callable[[], Iterator[np.ndarray]],
    window: _Windows | None = None,
) -> Tensor:
    g = stages.num_clusters
    head: list[np.ndarray] = []  # the first g frames, in case the video is shorter than g

    def first_pass() -> Iterator[np.ndarray]:
        kept = 0
        for chunk in frames():
            if window is not None:
                window.add(chunk)
            if kept < g:
                head.append(chunk[: g - kept])
                kept += len(head[-1])
            yield chunk

    # Python floats (exact float32 values): a small tensor kept per chunk between the chunk's
    # large temporaries fragments the heap, which then grows with the video.
    distances: list[float] = []
    previous: Tensor | None = None
    total = 0
    for acts in _early(ctx, stages, first_pass()):
        bits = (acts > 0).flatten(1)
        both = bits if previous is None else torch.cat([previous, bits])
        differ = torch.logical_xor(both[1:], both[:-1])
        distances.extend((differ.sum(dim=-1, dtype=torch.int32).float() / bits.shape[-1]).tolist())
        previous = bits[-1:]
        total += len(acts)
    if window is not None:
        window.finish()
    if total < g:  # padded to g frames by repeating the last one, as in memory
        return _in_memory(ctx, np.concatenate(head))
    hamming = torch.tensor(distances, dtype=torch.float32)
    assignment = assign_clusters(hamming[None], g, stages.clustering)[0]
    counts = torch.bincount(assignment, minlength=g).to(torch.float32)
    sums: Tensor | None = None
    seen = 0
    for acts in _early(ctx, stages, frames()):
        if sums is None:
            sums = torch.zeros((g, *acts.shape[1:]), dtype=acts.dtype)
        sums.index_add_(0, assignment[seen : seen + len(acts)], acts)
        seen += len(acts)
    assert sums is not None
    means = sums / counts.view(-1, *([1] * (sums.dim() - 1)))
    return stages.late(means[None])


def _early(
    ctx: _Context, stages: WholeVideoStages, chunks: Iterator[np.ndarray]
) -> Iterator[Tensor]:
    """Early activations of every frame, in order, ``(t, C, h, w)`` per step: each computed
    with ``context`` frames on both sides (the temporal shift's reach), so they equal the
    activations of the whole video at once."""
    h = stages.context
    inputs: Tensor | None = None  # normalised frames [lo, lo + inputs.shape[2])
    lo = done = 0
    for chunk in chunks:
        x = inputs_from_indices(chunk, np.arange(len(chunk))[None], ctx.spec)  # (1,3,t,h,w)
        inputs = x if inputs is None else torch.cat([inputs, x], dim=2)
        hi = lo + inputs.shape[2]
        if hi - h > done:
            acts = stages.early(inputs)[0]
            yield acts[done - lo : hi - h - lo]
            done = hi - h
            keep_from = max(0, done - h)
            inputs, lo = inputs[:, :, keep_from - lo :], keep_from
    if inputs is not None and done < lo + inputs.shape[2]:
        yield stages.early(inputs)[0][done - lo :]


# --------------------------------------------------------------------------- timeline windows


class _Windows:
    """ms3d and full_video timeline: frames grouped into windows of ``ctx.window`` frames, each
    recognised by the family's own rule as if it were a short video (only one window's
    frames are held)."""

    def __init__(self, ctx: _Context, outputs_of: Callable[[np.ndarray], Tensor]) -> None:
        self.ctx = ctx
        self.outputs_of = outputs_of
        self.parts: list[np.ndarray] = []
        self.held = 0
        self.start = 0

    def add(self, chunk: np.ndarray) -> None:
        if not self.ctx.timeline:
            return
        while len(chunk):
            take = min(len(chunk), self.ctx.window - self.held)
            self.parts.append(chunk[:take])
            self.held += take
            chunk = chunk[take:]
            if self.held == self.ctx.window:
                self._close()

    def finish(self) -> None:
        if self.ctx.timeline and self.held:
            self._close(last=True)

    def _close(self, last: bool = False) -> None:
        frames = np.concatenate(self.parts)
        outputs = self.outputs_of(frames)
        end = self.start + len(frames)
        ctx = self.ctx
        end_s = ctx.end_s() if last else ctx.seconds(end)
        ctx.emit(Segment(ctx.seconds(self.start), end_s, ctx.scores(outputs)))
        self.parts, self.held, self.start = [], 0, end


_FAMILY_PATHS: dict[str, Callable[[_Reader, _Context], Tensor]] = {
    "consecutive": _consecutive,
    "pz": _pz,
    "uniform": _uniform,
    "all": _whole,
}
