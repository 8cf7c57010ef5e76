"""The work of one request, run on a :class:`service.queue.WorkQueue` thread.

Decode (the shared PyAV decoder at the bundle's decode size, with the service's caps) under a
decode slot, then sampling, network and aggregation on an inference thread. The uploaded temp
file is removed as soon as it is decoded, and again in ``finally`` whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.pipeline import decode_for
from service.metrics import Metrics
from service.queue import WorkQueue
from service.settings import Settings
from service.store import LoadedModel, Outcome
from video.decode import DecodeLimits, VideoMeta

__all__ = ["RecognitionResult", "decode_limits", "embed_job", "recognize_job"]

T = TypeVar("T")


@dataclass(frozen=True)
class RecognitionResult:
    """What the route turns into the JSON answer."""

    outcome: Outcome
    meta: VideoMeta
    decode_ms: float
    infer_ms: float


def decode_limits(settings: Settings) -> DecodeLimits:
    """The caps every uploaded video is decoded under."""
    return DecodeLimits(
        max_frames=settings.max_frames,
        max_duration_s=settings.max_duration_s,
        max_pixels=settings.max_pixels,
        max_bytes=settings.max_upload_bytes,
    )


def _decode(
    model: LoadedModel, path: Path, settings: Settings, queue: WorkQueue, metrics: Metrics
) -> tuple[np.ndarray, VideoMeta, float]:
    with queue.decoding():
        started = time.perf_counter()
        try:
            frames, meta = decode_for(
                path, model.spec, limits=decode_limits(settings), threads=settings.decode_threads
            )
        finally:
            path.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
    metrics.decode_seconds.labels(model.name).observe(seconds)
    return frames, meta, seconds * 1000.0


def recognize_job(
    model: LoadedModel, path: Path, settings: Settings, queue: WorkQueue, metrics: Metrics
) -> RecognitionResult:
    """Decode the uploaded video at ``path`` and recognise it with ``model``."""
    frames, meta, decode_ms = _decode(model, path, settings, queue, metrics)
    outcome, seconds = queue.infer(_timed, model.predict, frames)
    metrics.inference_seconds.labels(model.name, model.backend.name).observe(seconds)
    return RecognitionResult(outcome, meta, decode_ms, seconds * 1000.0)


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    # Timed on the inference thread: waiting for a free one is queueing, not inference.
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def embed_job(
    model: LoadedModel, paths: list[Path], settings: Settings, queue: WorkQueue, metrics: Metrics
) -> list[np.ndarray]:
    """Walk embeddings of each example video, for enrolment."""
    out: list[np.ndarray] = []
    try:
        for path in paths:
            frames, _, _ = _decode(model, path, settings, queue, metrics)
            out.append(queue.infer(model.embed, frames))
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
    return out
