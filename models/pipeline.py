"""The one path from a video to its answer, shared by training, evaluation, export and serving.

``video --decode_for--> (T, H, W, 3) uint8 --sample_video--> (N, L) indices
--inputs_from_indices--> (N, 3, L, h, w) --run_network--> outputs --aggregate_outputs-->
VideoScores``. Training datasets, ``training.evaluate``, ``export.onnx``'s check on a real
video, every service backend and the benches call these functions with a model's
:class:`~models.spec.VariantSpec`; only the network call differs (PyTorch module, ONNX Runtime
session, TensorRT engine).
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
from video.decode import DecodeLimits, VideoMeta, decode_video
from video.sampling import sample_indices
from video.transforms import clips_to_tensor

__all__ = [
    "Forward",
    "Prediction",
    "aggregate_outputs",
    "decode_for",
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
