"""The one path from a video to its answer, shared by training, evaluation, export and serving.

``video --decode_for--> (T, H, W, 3) uint8 --sample_video--> (N, L) indices
--inputs_from_indices--> (N, 3, L, h, w) --run_network--> outputs --aggregate_outputs-->
VideoScores``. Training datasets, ``training.evaluate``, ``export.onnx``'s check on a real
video, every service backend and the benches call these functions with a model's
:class:`~models.spec.VariantSpec`; only the network call differs (PyTorch module, ONNX Runtime
session, TensorRT engine). :func:`decode_sample` is ``decode_for`` + ``sample_video`` for
samplers that pick from the frame count, decoding only the frames picked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from models.aggregators import VideoScores, aggregate
from models.spec import VariantSpec
from models.tailor import tailor_chunk
from video.augment import Augment
from video.decode import DecodeLimits, VideoMeta, decode_sampled, decode_video
from video.sampling import COUNT_SAMPLERS, sample_indices
from video.transforms import clips_to_tensor

__all__ = [
    "Forward",
    "Prediction",
    "aggregate_outputs",
    "decode_for",
    "decode_sample",
    "embed_video",
    "inputs_from_indices",
    "predict_frames",
    "prepare_inputs",
    "preprocess_frames",
    "run_network",
    "sample_video",
]

# A network call: a float32 CPU batch (N, 3, L, h, w) in, the eval-mode outputs out.
Forward = Callable[[Tensor], Tensor]


def decode_for(
    source: str | os.PathLike[str] | BinaryIO,
    spec: VariantSpec,
    *,
    limits: DecodeLimits | None = None,
    threads: int = 2,
) -> tuple[np.ndarray, VideoMeta]:
    """Decode a video at the size the model's spec asks for (see :meth:`VariantSpec.decode_hw`).

    Args:
        source: A path or a binary file object.
        spec: The model's spec.
        limits: Caps on frames, duration, pixels and bytes (``None``: the decoder's defaults).
        threads: FFmpeg decoder threads (capped at 16).

    Raises:
        video.errors.VideoError: For anything that is not a decodable video within ``limits``.
    """
    frames, meta = decode_video(source, size=spec.decode_hw(), limits=limits, threads=threads)
    return preprocess_frames(frames, spec), meta


def decode_sample(
    source: str | os.PathLike[str] | BinaryIO,
    spec: VariantSpec,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_inputs: int = 0,
    limits: DecodeLimits | None = None,
    threads: int = 2,
    on_progress: Callable[[int], None] | None = None,
    every: int = 64,
) -> tuple[np.ndarray, np.ndarray, VideoMeta] | None:
    """:func:`decode_for` then :func:`sample_video`, decoding only the frames the sampler picks
    (:func:`video.decode.decode_sampled`: the groups of pictures holding them).

    Arguments as for :func:`decode_for` and :func:`sample_video`; ``on_progress`` and
    ``every`` as for :func:`video.decode.decode_frames_at`.

    Returns:
        ``(frames, indices, meta)``: ``frames[indices]`` is ``decoded[sample_video(decoded)]``
        for the frames ``decoded`` that :func:`decode_for` gives, bit for bit, and ``meta``
        its meta; ``rng`` ends as that sampling leaves it. ``None`` (``rng`` untouched) when
        the sampler reads the pixels (``pz``), the preprocessing looks at neighbouring frames
        (the tailor strategy), or the packets do not locate the frames: use
        :func:`decode_for` then.

    Raises:
        video.errors.VideoError: For anything that is not a decodable video within ``limits``.
    """
    if spec.sampler not in COUNT_SAMPLERS or spec.tailor:
        return None
    state = rng.bit_generator.state if rng is not None else None

    def pick(num_frames: int) -> np.ndarray:
        return sample_indices(
            spec.sampler,
            num_frames,
            train=train,
            rng=rng,
            max_inputs=max_inputs,
            **spec.sampler_args(),
        )

    got = decode_sampled(
        source,
        pick,
        size=spec.decode_hw(),
        limits=limits,
        threads=threads,
        on_progress=on_progress,
        every=every,
    )
    if got is None:
        if rng is not None and state is not None:
            rng.bit_generator.state = state  # as if never drawn from
        return None
    frames, indices, meta = got
    return frames, np.searchsorted(np.unique(indices), indices), meta


def preprocess_frames(
    frames: np.ndarray, spec: VariantSpec, previous: np.ndarray | None = None
) -> np.ndarray:
    """The spec's preprocessing of decoded frames (ms3d's tailor strategy, when the spec turns
    it on; else the frames as they are). A video read in chunks gives each chunk with
    ``previous``, the frame before it, and gets exactly what the whole video would."""
    if not spec.tailor:
        return frames
    return tailor_chunk(frames, spec.tailor, previous)


def sample_video(
    frames: np.ndarray,
    spec: VariantSpec,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_inputs: int = 0,
) -> np.ndarray:
    """The ``(N, L)`` frame indices the family's sampler picks, capped to ``max_inputs`` rows
    (evenly spaced) when that is positive."""
    return sample_indices(
        spec.sampler, frames, train=train, rng=rng, max_inputs=max_inputs, **spec.sampler_args()
    )


def inputs_from_indices(
    frames: np.ndarray,
    indices: np.ndarray,
    spec: VariantSpec,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    hflip: bool = False,
    augment: Augment | None = None,
) -> Tensor:
    """Frames at ``indices`` -> normalised ``(N, 3, L, h, w)`` input, cropped as the spec says
    (centre crop in evaluation; in training random crop, optional flip and augmentation)."""
    return clips_to_tensor(
        frames,
        indices,
        mean=spec.mean,
        std=spec.std,
        crop=spec.crop(),
        train=train,
        rng=rng,
        hflip=hflip,
        augment=augment,
    )


def prepare_inputs(
    frames: np.ndarray,
    spec: VariantSpec,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_inputs: int = 0,
    hflip: bool = False,
) -> Tensor:
    """Decoded ``(T, H, W, 3)`` uint8 frames -> normalised ``(N, 3, L, h, w)`` network input."""
    indices = sample_video(frames, spec, train=train, rng=rng, max_inputs=max_inputs)
    return inputs_from_indices(frames, indices, spec, train=train, rng=rng, hflip=hflip)


def run_network(forward: Forward, inputs: Tensor, batch_size: int = 16) -> Tensor:
    """Apply ``forward`` to ``inputs`` in chunks of ``batch_size`` rows and concatenate."""
    step = max(1, batch_size)
    outs = [forward(inputs[i : i + step]) for i in range(0, len(inputs), step)]
    return torch.cat([o.detach().float().cpu() for o in outs])


def embed_video(
    forward: Forward, frames: np.ndarray, spec: VariantSpec, *, batch_size: int = 16
) -> np.ndarray:
    """``(P, D)`` embeddings of one video's inputs (ms3d: one per p(z) walk), as a
    repository is built from and enrolment adds to."""
    return run_network(forward, prepare_inputs(frames, spec), batch_size).numpy()


def aggregate_outputs(
    outputs: Tensor,
    spec: VariantSpec,
    *,
    centres: Tensor | None = None,
    gamma: float | None = None,
) -> VideoScores:
    """One video's network outputs -> its :class:`VideoScores` by the family's aggregator."""
    kwargs: dict[str, Any] = dict(spec.aggregator_kwargs)
    if spec.aggregator == "nearest_centre":
        if centres is None:
            raise ValueError("the nearest_centre aggregator needs the repository's centres")
        kwargs["centres"] = centres
        if gamma is not None:
            kwargs["gamma"] = gamma
    return aggregate(spec.aggregator, outputs, **kwargs)


@dataclass(frozen=True)
class Prediction:
    """A video's answer plus what produced it."""

    scores: VideoScores
    inputs: int
    outputs: Tensor


def predict_frames(
    forward: Forward,
    frames: np.ndarray,
    spec: VariantSpec,
    *,
    batch_size: int = 16,
    max_inputs: int = 0,
    centres: Tensor | None = None,
    gamma: float | None = None,
) -> Prediction:
    """Evaluation-mode answer for decoded frames: sample, normalise, run, aggregate."""
    inputs = prepare_inputs(frames, spec, max_inputs=max_inputs)
    outputs = run_network(forward, inputs, batch_size)
    scores = aggregate_outputs(outputs, spec, centres=centres, gamma=gamma)
    return Prediction(scores=scores, inputs=len(inputs), outputs=outputs)
