"""The one path from decoded frames to a video's answer, shared by evaluation and the service.

``frames --sampler--> (N, L) indices --transforms--> (N, 3, L, h, w) --network--> outputs
--aggregator--> VideoScores``. Training evaluation (``training.evaluate``) and every service
backend call these functions, so a video gets the same answer in both; only the network call
differs (PyTorch module, ONNX Runtime session, TensorRT engine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models._defaults import ModelDefaults
from models.aggregators import VideoScores, aggregate
from video.sampling import sample_indices
from video.transforms import clips_to_tensor

__all__ = ["decode_size", "sample_video", "prepare_inputs", "run_network", "aggregate_outputs",
           "predict_frames", "Prediction"]


def decode_size(defaults: ModelDefaults) -> tuple[int, int]:
    """(height, width) to decode at: ``decode_size`` if set, else the network input size."""
    return tuple(defaults.decode_size or defaults.input_size)  # type: ignore[return-value]


def sample_video(
    frames: np.ndarray,
    defaults: ModelDefaults,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_inputs: int = 0,
) -> np.ndarray:
    """The ``(N, L)`` frame indices the family's sampler picks, capped to ``max_inputs`` rows
    (evenly spaced) when that is positive."""
    return sample_indices(defaults.sampler, frames, train=train, rng=rng, max_inputs=max_inputs,
                          **defaults.sampler_kwargs)


def prepare_inputs(
    frames: np.ndarray,
    defaults: ModelDefaults,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    max_inputs: int = 0,
    hflip: bool = False,
) -> Tensor:
    """Decoded ``(T, H, W, 3)`` uint8 frames -> normalised ``(N, 3, L, h, w)`` network input."""
    indices = sample_video(frames, defaults, train=train, rng=rng, max_inputs=max_inputs)
    crop = tuple(defaults.input_size) if defaults.decode_size else None
    return clips_to_tensor(
        frames, indices, mean=defaults.mean, std=defaults.std, crop=crop, train=train, rng=rng,
        hflip=hflip,
    )


def run_network(forward: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 16) -> Tensor:
    """Apply ``forward`` to ``inputs`` in chunks of ``batch_size`` rows and concatenate."""
    outs = [forward(inputs[i : i + batch_size]) for i in range(0, len(inputs), max(1, batch_size))]
    return torch.cat([o.detach().float().cpu() for o in outs])


def aggregate_outputs(
    outputs: Tensor,
    defaults: ModelDefaults,
    *,
    centres: Tensor | None = None,
    gamma: float | None = None,
) -> VideoScores:
    """One video's network outputs -> its :class:`VideoScores` by the family's aggregator."""
    kwargs: dict[str, Any] = dict(defaults.aggregator_kwargs)
    if defaults.aggregator == "nearest_centre":
        if centres is None:
            raise ValueError("the nearest_centre aggregator needs the repository's centres")
        kwargs["centres"] = centres
        if gamma is not None:
            kwargs["gamma"] = gamma
    return aggregate(defaults.aggregator, outputs, **kwargs)


@dataclass(frozen=True)
class Prediction:
    """A video's answer plus what produced it."""

    scores: VideoScores
    inputs: int
    outputs: Tensor


def predict_frames(
    forward: Callable[[Tensor], Tensor],
    frames: np.ndarray,
    defaults: ModelDefaults,
    *,
    batch_size: int = 16,
    max_inputs: int = 0,
    centres: Tensor | None = None,
    gamma: float | None = None,
) -> Prediction:
    """Evaluation-mode answer for decoded frames: sample, normalise, run, aggregate."""
    inputs = prepare_inputs(frames, defaults, max_inputs=max_inputs)
    outputs = run_network(forward, inputs, batch_size)
    scores = aggregate_outputs(outputs, defaults, centres=centres, gamma=gamma)
    return Prediction(scores=scores, inputs=len(inputs), outputs=outputs)
