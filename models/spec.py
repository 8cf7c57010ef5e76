"""The variant spec: what a registered model expects and how its outputs become one answer.

Each variant states its clip shape, sizes, normalisation, sampler and aggregator here once.
Its builder reads the shape from the spec; training, export, evaluation and the service read
the rest; values other code needs (decode size, crop, the sampler's arguments, the number of
frames per input) are methods, never re-derived elsewhere. See ``docs/models.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "KINETICS_MEAN", "KINETICS_STD", "VariantSpec"]

# Per-channel RGB statistics on the [0, 1] scale.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TUPLE_FIELDS = ("input_size", "decode_size", "mean", "std", "pathways")


@dataclass(frozen=True)
class VariantSpec:
    """A variant's input contract and answer rule, stated once.

    The clip shape is one of three forms, by sampler: ``clip_len`` frames per consecutive
    clip; ``pathways`` frames per ms3d pathway (an input holds their sum); or the whole video
    (``clip_len == 0``), reduced by the network to ``segments`` temporal segments (full_video's
    ``g`` clusters, padded up to ``g`` frames) or sampled as ``segments`` uniform segments
    (TSM-k).

    Attributes:
        family: Family name (``c3d_vll``, ``attention_lstm``, ``ms3d``, ``full_video``).
        input_size: Network input (height, width) in pixels, after any crop.
        decode_size: (height, width) frames are decoded at before cropping to ``input_size``;
            ``None`` decodes straight to ``input_size``.
        clip_len: Frames per consecutive clip; 0 for the other forms.
        pathways: Frames per pathway (ms3d's slow, mid, fast); empty for the other forms.
        segments: Temporal segments of a whole-video input; 0 for the other forms.
        mean: RGB mean on the [0, 1] scale, subtracted before the network.
        std: RGB standard deviation on the [0, 1] scale.
        sampler: Name of the sampler in :mod:`video.sampling`.
        sampler_kwargs: The sampler's settings beyond the clip shape (``stride``,
            ``frame_step``, ``walks``).
        aggregator: Name of the aggregator in :mod:`models.aggregators`.
        aggregator_kwargs: Keyword arguments for that aggregator.
        output: ``"logits"`` for classifiers, ``"embedding"`` for metric networks.
        tailor: Frame preprocessing by ms3d's tailor strategy (the MS3D paper, Eq. 7-8) on
            every decoded frame before sampling, in training, evaluation, export checks and
            serving alike; empty: off. Keys (see :data:`models.tailor.TAILOR_DEFAULTS`):
            ``boxes`` (``"motion"`` or a YOLO ONNX file; in a bundle, a file of the bundle),
            ``eta``, ``xi``, ``band``.
    """

    family: str
    input_size: tuple[int, int]
    decode_size: tuple[int, int] | None = None
    clip_len: int = 0
    pathways: tuple[int, ...] = ()
    segments: int = 0
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    sampler: str = "consecutive"
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "mean_prob"
    aggregator_kwargs: dict[str, Any] = field(default_factory=dict)
    output: str = "logits"
    tailor: dict[str, Any] = field(default_factory=dict)

    @property
    def input_frames(self) -> int:
        """Frames per network input: the clip, the pathways' sum, or 0 for a whole video."""
        return self.clip_len or sum(self.pathways)

    def decode_hw(self) -> tuple[int, int]:
        """(height, width) to decode at: ``decode_size`` if set, else ``input_size``."""
        size = self.decode_size or self.input_size
        return int(size[0]), int(size[1])

    def crop(self) -> tuple[int, int] | None:
        """The crop to ``input_size`` after decoding, or ``None`` when decoded to size."""
        return (int(self.input_size[0]), int(self.input_size[1])) if self.decode_size else None

    def sampler_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`video.sampling.sample_indices` for this variant."""
        shape: dict[str, Any] = {}
        if self.sampler == "consecutive":
            shape = {"clip_len": self.clip_len}
        elif self.sampler == "pz":
            shape = {"sizes": self.pathways}
        elif self.sampler == "uniform":
            shape = {"num_segments": self.segments}
        elif self.sampler == "all":
            shape = {"min_frames": max(1, self.segments)}
        return {**shape, **self.sampler_kwargs}

    def replace(self, **changes: Any) -> VariantSpec:
        """A copy with ``changes`` (e.g. a run's clip-length override)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (tuples become lists when serialised)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSpec:
        """Inverse of :meth:`to_dict`; unknown keys are refused.

        Raises:
            ValueError: For a key that is not a field.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown variant spec keys {unknown}")
        values = dict(data)
        for key in _TUPLE_FIELDS:
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)
