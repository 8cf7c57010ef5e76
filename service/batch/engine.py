"""Many videos through one loaded model: decoding overlapped with inference, and inference
batched across videos.

Each video is recognised exactly as ``POST /recognize`` recognises an upload:
:meth:`service.store.LoadedModel.recognize` (the streaming core) under the service's decode
caps (:func:`service.jobs.decode_limits`, less the upload byte cap: a file here is not an
upload), answered by :func:`service.api.recognize.build_answer`
and, on failure, with the service's error code (:func:`service.errors.error_of`). What differs
is the plumbing: ``workers`` threads each recognise one video (each with the core's own
decode-ahead thread), and their network calls are joined across videos by the service's
:class:`service.batching.ForwardBatcher` (with its settings, ``max_batch_inputs`` and
``max_batch_delay_ms``), one network call at a time. A video is decoded while another one's
clips are in the network.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from models.stream import Cancelled, WholeVideoStages
from service.api.recognize import DEFAULT_WINDOW_S, build_answer
from service.batch.live import LiveSource, SourceUnavailable, StreamBroken
from service.batching import ForwardBatcher
from service.errors import error_of
from service.jobs import CallingStages, RecognitionResult, decode_limits
from service.schemas import TimelineSegment
from service.settings import Settings
from service.store import LoadedModel, Outcome
from video.decode import DecodeLimits

__all__ = ["Options", "Record", "Recognizer", "error_record"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# One output line as a JSON object.
Record = dict[str, Any]


@dataclass(frozen=True)
class Options:
    """How a run recognises its videos.

    Attributes:
        timeline: Add each video's timeline to its answer (as ``timeline=true`` does).
        window_s: Seconds per timeline window (ms3d, full_video).
        workers: Videos recognised at once (decoding threads).
    """

    timeline: bool = False
    window_s: float = DEFAULT_WINDOW_S
    workers: int = 2


def error_record(key: str, err: BaseException) -> Record:
    """The line of a video that could not be recognised: the service's code where the service
    has one (``error_of``), ``not_found``/``unreadable`` for a file that cannot be read, the
    live source's own (``source_unavailable``, ``stream_broken``), else ``internal``."""
    known = error_of(err)
    if known is not None:
        _, code, message = known
    elif isinstance(err, FileNotFoundError):
        code, message = "not_found", f"no such file: {err.filename or key}"
    elif isinstance(err, OSError):
        code, message = "unreadable", f"{err.strerror or err}: {err.filename or key}"
    elif isinstance(err, SourceUnavailable | StreamBroken):
        code, message = err.code, str(err)
    else:
        log.error("%s: unexpected error", key, exc_info=err)
        code, message = "internal", f"{type(err).__name__}: {err}"
    return {"path": key, "error": {"code": code, "message": " ".join(message.split())}}


class _Network:
    """The model's network, one call at a time: the forward through the batcher (joined with
    other videos' calls), full_video's stages on their own."""

    def __init__(self, model: LoadedModel, settings: Settings) -> None:
        self._forward = model.backend.forward
        self._lock = threading.Lock()
        self.batcher: ForwardBatcher | None = None
        if settings.max_batch_delay_ms > 0:
            self.batcher = ForwardBatcher(
                self._locked,
                max_rows=model.forward_cap(settings.max_batch_inputs),
                max_delay_s=settings.max_batch_delay_ms / 1e3,
            )

    def _locked(self, inputs: Tensor) -> Tensor:
        with self._lock:
            return self._forward(inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.batcher(inputs) if self.batcher is not None else self._locked(inputs)

    def alone(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    def session(self) -> AbstractContextManager[None]:
        """One recognition in progress (a joined forward waits only for those)."""
        return self.batcher.session() if self.batcher is not None else nullcontext()


class _Account:
    """One video's network calls, timed as the service times a request: ``infer_s`` in
    network calls, waits for a joined forward included (the rest of the wall time is
    decoding, sampling and aggregation)."""

    def __init__(self, network: _Network) -> None:
        self.network = network
        self.infer_s = 0.0

    def forward(self, inputs: Tensor) -> Tensor:
        return self._timed(self.network.forward, inputs)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` as a network call of its own (full_video's stages)."""
        return self._timed(self.network.alone, fn, *args)

    def _timed(self, run: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return run(*args)
        finally:
            self.infer_s += time.perf_counter() - started

    def stages(self, stages: WholeVideoStages | None) -> WholeVideoStages | None:
        return None if stages is None else CallingStages(stages, self)


class Recognizer:
    """Recognises videos with one loaded model, as the service would, many at a time.

    Args:
        model: The loaded model (:meth:`service.store.ModelStore.load_one`).
        settings: The service settings it was loaded with (decode caps, decoder threads).
        options: What to answer and how many videos at once.
    """

    def __init__(self, model: LoadedModel, settings: Settings, options: Options) -> None:
        self.model = model
        self.settings = settings
        self.options = options
        if settings.compute_threads:  # as the service sets it (process-wide)
            torch.set_num_threads(settings.compute_threads)
        self._network = _Network(model, settings)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop: recognitions in progress end with :class:`models.stream.Cancelled`."""
        self._stop.set()

    def recognise(self, key: str, path: str | os.PathLike[str]) -> Record:
        """The line of one video file: its answer, or its error.

        Raises:
            models.stream.Cancelled: :meth:`stop` was called meanwhile.
        """
        started = time.perf_counter()
        account = _Account(self._network)
        try:
            outcome = self._recognize(path, account, timeline=self.options.timeline)
        except Cancelled:
            raise
        except Exception as err:
            return error_record(key, err)
        return self._answer(key, outcome, account, started, timeline=self.options.timeline)

    def recognise_all(self, videos: Iterable[tuple[str, str]]) -> Generator[Record, None, None]:
        """The lines of ``(key, path)`` videos, in the order they finish; ``workers`` run at
        once and at most twice as many are queued (``videos`` is read lazily). Closing the
        iterator early stops the recognitions in progress."""
        todo = iter(videos)
        workers = max(1, self.options.workers)
        with ThreadPoolExecutor(workers, thread_name_prefix="actrec-batch") as pool:
            running: set[Future[Record]] = set()

            def refill() -> None:
                while len(running) < 2 * workers and not self._stop.is_set():
                    item = next(todo, None)
                    if item is None:
                        return
                    running.add(pool.submit(self.recognise, *item))

            try:
                refill()
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        running.discard(future)
                        try:
                            record = future.result()
                        except Cancelled:
                            continue
                        yield record
                    refill()
            except BaseException:
                self.stop()
                raise

    def recognise_live(self, source: LiveSource, on_segment: Callable[[Record], None]) -> Record:
        """The final line of a live source, after ``on_segment`` got each timeline segment's
        line as soon as it was known: the whole stream's answer at a clean end, or the error
        that ended it.

        Raises:
            models.stream.Cancelled: :meth:`stop` was called meanwhile.
        """
        started = time.perf_counter()
        account = _Account(self._network)

        def segment(answer: TimelineSegment) -> None:
            on_segment({"path": source.name, "segment": json.loads(answer.model_dump_json())})

        # The caps of a file, less the duration cap: a stream has no end known in advance.
        limits = dataclasses.replace(self._limits(), max_duration_s=None)
        try:
            # models.stream is typed for paths; it hands the source to video.decode, which
            # reads a file object (see service.batch.live.LiveSource).
            outcome = self._recognize(
                cast("os.PathLike[str]", source), account, limits=limits, on_segment=segment
            )
        except Cancelled:
            raise
        except Exception as err:
            return error_record(source.name, source.failure or err)
        if source.failure is not None:
            return error_record(source.name, source.failure)
        return self._answer(source.name, outcome, account, started, timeline=False)

    def _recognize(
        self,
        path: str | os.PathLike[str],
        account: _Account,
        *,
        timeline: bool = False,
        limits: DecodeLimits | None = None,
        on_segment: Callable[[TimelineSegment], None] | None = None,
    ) -> Outcome:
        with self._network.session():
            return self.model.recognize(
                path,
                forward=account.forward,
                stages=account.stages(self.model.backend.stages),
                limits=limits or self._limits(),
                threads=self.settings.decode_threads,
                sparse=self.settings.sparse_decode,
                timeline=timeline,
                window_s=self.options.window_s,
                on_segment=on_segment,
                cancelled=self._stop.is_set,
            )

    def _limits(self) -> DecodeLimits:
        """The service's caps on duration, frames and resolution; no cap on bytes, which
        bounds what a client may upload, not what a video may cost (that is the others')."""
        return dataclasses.replace(decode_limits(self.settings, self.model), max_bytes=None)

    def _answer(
        self, key: str, outcome: Outcome, account: _Account, started: float, *, timeline: bool
    ) -> Record:
        assert outcome.meta is not None  # made from a source
        wall_s = time.perf_counter() - started
        result = RecognitionResult(
            outcome, outcome.meta, (wall_s - account.infer_s) * 1e3, account.infer_s * 1e3
        )
        answer = build_answer(self.model, result, started, timeline=timeline)
        # The JSON the service sends (pydantic's serialisation), with the path first.
        return {"path": key, **json.loads(answer.model_dump_json(exclude_unset=True))}
