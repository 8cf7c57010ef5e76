"""The work of one request, run on a :class:`service.queue.WorkQueue` thread.

A recognition streams the uploaded file through :func:`models.stream.recognize_video` (one
chunk of frames at a time, at the bundle's decode size, under the service's caps) while
holding a decode slot; each network call runs on an inference thread, the decode slot given
back while it waits (see :class:`_Network`), joined with other recognitions' calls of the same
model into one forward when batching across requests is on (:mod:`service.batching`). The
uploaded temp file is removed in ``finally`` whatever happens (the route removes it again on
its way out).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from torch import Tensor

from models.pipeline import Forward
from models.stream import WholeVideoStages
from service.batching import BatchObserver, ForwardBatcher
from service.metrics import Metrics
from service.queue import WorkQueue
from service.schemas import TimelineSegment
from service.settings import Settings
from service.store import LoadedModel, Outcome
from video.decode import DecodeLimits, VideoMeta

__all__ = [
    "CallingStages",
    "EmbedTask",
    "RecognitionResult",
    "RecognitionTask",
    "decode_limits",
    "embed_job",
    "recognize_job",
]

T = TypeVar("T")


@dataclass(frozen=True)
class RecognitionTask:
    """What one recognition is asked for.

    Attributes:
        path: The uploaded video file.
        timeline: Answer the timeline too.
        window_s: Seconds per timeline window (ms3d, full_video).
        on_segment: Called on the job thread with each timeline segment as soon as it is
            known (a streamed answer); implies computing the timeline.
        cancelled: Polled between decoded chunks; ``True`` stops the job
            (:class:`models.stream.Cancelled`).
        waiting: Called with ``True`` when the job starts waiting for a network call (for an
            inference thread, then the call itself) and ``False`` when the call returns: how
            a streamed answer tells a stuck job from one that is decoding.
    """

    path: Path
    timeline: bool = False
    window_s: float = 10.0
    on_segment: Callable[[TimelineSegment], None] | None = None
    cancelled: Callable[[], bool] | None = None
    waiting: Callable[[bool], None] | None = None


@dataclass(frozen=True)
class EmbedTask:
    """Example videos to embed for enrolment, and the job's stop flag."""

    paths: list[Path]
    cancelled: Callable[[], bool] | None = None


@dataclass(frozen=True)
class RecognitionResult:
    """What the route turns into the JSON answer."""

    outcome: Outcome
    meta: VideoMeta
    decode_ms: float
    infer_ms: float


def decode_limits(settings: Settings, model: LoadedModel | None = None) -> DecodeLimits:
    """The caps every uploaded video is decoded under (``max_frames`` 0 or unset: none), and
    ``max_frames_in_memory`` for a model that holds a video whole in memory."""
    max_frames = settings.max_frames or None
    if model is not None and model.holds_whole_video:
        max_frames = min(max_frames or settings.max_frames_in_memory, settings.max_frames_in_memory)
    return DecodeLimits(
        max_frames=max_frames,
        max_duration_s=settings.max_duration_s,
        max_pixels=settings.max_pixels,
        max_bytes=settings.max_upload_bytes,
    )


class _Network:
    """One job's network calls, each run on an inference thread and timed there.

    Made inside :meth:`WorkQueue.decoding`: the decode slot is given back while a call waits
    for (and runs on) its inference thread, so :attr:`decode_s` (the time holding the slot:
    decoding, sampling, input preparation, aggregation) and :attr:`infer_s` (the time in
    network calls) add up to the job's work, without its waits for a slot or a thread.
    """

    def __init__(self, queue: WorkQueue, waiting: Callable[[bool], None] | None = None) -> None:
        self.queue = queue
        self.waiting = waiting
        self.decode_s = 0.0
        self.infer_s = 0.0
        self._mark = time.perf_counter()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._waited(self.queue.infer, _timed, fn, *args)

    def _waited(self, run: Callable[..., tuple[T, float]], *args: Any) -> T:
        """``run(*args)`` (giving ``(result, seconds of inference)``) with the decode slot
        given back meanwhile, and the accounts kept."""
        self.decode_s += time.perf_counter() - self._mark
        if self.waiting is not None:
            self.waiting(True)
        try:
            with self.queue.decode_paused():
                result, seconds = run(*args)
            self.infer_s += seconds
            return result
        finally:
            if self.waiting is not None:
                self.waiting(False)
            self._mark = time.perf_counter()

    def batched(self, batcher: ForwardBatcher) -> Forward:
        """A forward through ``batcher`` (joined with other jobs' calls); its whole wait counts
        as inference, as a call waiting for an inference thread's does."""

        def call(inputs: Tensor) -> Tensor:
            return self._waited(_timed, batcher, inputs)

        return call

    def finish(self) -> None:
        """Close the decode-time account (at the end of the work)."""
        self.decode_s += time.perf_counter() - self._mark
        self._mark = time.perf_counter()

    def forward(self, fn: Forward) -> Forward:
        def call(inputs: Tensor) -> Tensor:
            return self.call(fn, inputs)

        return call

    def stages(self, stages: WholeVideoStages | None) -> WholeVideoStages | None:
        return None if stages is None else CallingStages(stages, self)


class _Calls(Protocol):
    def call(self, fn: Callable[..., T], *args: Any) -> T: ...


class CallingStages:
    """:class:`WholeVideoStages` whose two calls go through ``network.call`` (a
    :class:`_Network` here; ``service.batch``'s own network account)."""

    def __init__(self, stages: WholeVideoStages, network: _Calls) -> None:
        self._stages = stages
        self._network = network
        self.context = stages.context
        self.num_clusters = stages.num_clusters
        self.clustering = stages.clustering

    def early(self, x: Tensor) -> Tensor:
        return self._network.call(self._stages.early, x)

    def late(self, segments: Tensor) -> Tensor:
        return self._network.call(self._stages.late, segments)


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    # Timed on the inference thread: waiting for a free one is queueing, not inference.
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


@contextmanager
def _decoding(
    model: LoadedModel,
    queue: WorkQueue,
    metrics: Metrics,
    paths: list[Path],
    waiting: Callable[[bool], None] | None = None,
) -> Iterator[_Network]:
    """A decode slot and the network account for the block; the temp files are removed on the
    way out, and the stage times go to the metrics."""
    try:
        with queue.decoding():
            network = _Network(queue, waiting)
            yield network
            network.finish()
        metrics.decode_seconds.labels(model.name).observe(network.decode_s)
        metrics.inference_seconds.labels(model.name, model.backend.name).observe(network.infer_s)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def _batch_observer(metrics: Metrics, name: str) -> BatchObserver:
    def observe(requests: int, inputs: int, waits: list[float]) -> None:
        metrics.batch_requests.labels(name).observe(requests)
        metrics.batch_inputs.labels(name).observe(inputs)
        for wait in waits:
            metrics.batch_wait_seconds.labels(name).observe(wait)

    return observe


def recognize_job(
    model: LoadedModel,
    task: RecognitionTask | Path,
    settings: Settings,
    queue: WorkQueue,
    metrics: Metrics,
) -> RecognitionResult:
    """Recognise the uploaded video (a task, or just its path) with ``model``."""
    if not isinstance(task, RecognitionTask):
        task = RecognitionTask(Path(task))
    batcher = queue.batcher(
        model.name,
        model.backend,
        model.backend.forward,
        _batch_observer(metrics, model.name),
        max_rows=model.forward_cap(settings.max_batch_inputs),
    )
    with (
        _decoding(model, queue, metrics, [task.path], task.waiting) as network,
        batcher.session() if batcher is not None else nullcontext(),
    ):
        outcome = model.recognize(
            task.path,
            forward=network.batched(batcher)
            if batcher is not None
            else network.forward(model.backend.forward),
            stages=network.stages(model.backend.stages),
            limits=decode_limits(settings, model),
            threads=settings.decode_threads,
            sparse=settings.sparse_decode,
            timeline=task.timeline or task.on_segment is not None,
            window_s=task.window_s,
            on_segment=task.on_segment,
            cancelled=task.cancelled,
        )
    assert outcome.meta is not None  # made from a file
    return RecognitionResult(outcome, outcome.meta, network.decode_s * 1e3, network.infer_s * 1e3)


def embed_job(
    model: LoadedModel,
    task: EmbedTask | list[Path],
    settings: Settings,
    queue: WorkQueue,
    metrics: Metrics,
) -> list[np.ndarray]:
    """Walk embeddings of each example video, for enrolment."""
    if not isinstance(task, EmbedTask):
        task = EmbedTask(list(task))
    out: list[np.ndarray] = []
    try:
        for path in task.paths:
            with _decoding(model, queue, metrics, [path]) as network:
                out.append(
                    model.embed(
                        path,
                        forward=network.forward(model.backend.forward),
                        limits=decode_limits(settings, model),
                        threads=settings.decode_threads,
                        sparse=settings.sparse_decode,
                        cancelled=task.cancelled,
                    )
                )
    finally:
        for path in task.paths:
            path.unlink(missing_ok=True)
    return out
