"""Per-variant defaults that every consumer of a model reads from one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ModelDefaults", "KINETICS_MEAN", "KINETICS_STD"]

# Per-channel RGB statistics on the [0, 1] scale; the common choice for video networks.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class ModelDefaults:
    """What a variant expects and how its outputs become one answer per video.

    Attributes:
        family: Family name (``c3d_vll``, ``attention_lstm``, ``ms3d``, ``full_video``).
        input_size: Network input (height, width) in pixels (after any crop).
        decode_size: (height, width) frames are decoded at before cropping to
            ``input_size``; ``None`` decodes straight to ``input_size``.
        clip_len: Frames per clip; 0 means the whole video is one input.
        mean: RGB mean on the [0, 1] scale, subtracted before the network.
        std: RGB standard deviation on the [0, 1] scale.
        sampler: Name of the sampler in :mod:`video.sampling` that turns a video into inputs.
        sampler_kwargs: Keyword arguments for that sampler.
        aggregator: Name of the aggregator in :mod:`models.aggregators`.
        aggregator_kwargs: Keyword arguments for that aggregator.
        output: ``"logits"`` for classifiers, ``"embedding"`` for metric networks.
    """

    family: str
    input_size: tuple[int, int]
    clip_len: int
    decode_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    sampler: str = "consecutive"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "mean_prob"
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    output: str = "logits"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists)."""
        return asdict(self)
