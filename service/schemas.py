"""Response bodies of the HTTP API, as pydantic models (they make the OpenAPI schema too)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "ClassInfo",
    "ClassesResponse",
    "Detail",
    "Distance",
    "EnrolResponse",
    "Health",
    "ModelInfo",
    "ModelsResponse",
    "Ready",
    "RecognizeResponse",
    "Scored",
    "TimelineSegment",
    "Timing",
]


class Scored(BaseModel):
    label: str
    score: float = Field(
        description="vote fraction (c3d_vll, attention_lstm), mean softmax "
        "probability (full_video) or exp(-distance) (ms3d)"
    )


class Timing(BaseModel):
    decode: float = Field(
        description="milliseconds decoding the upload, sampling and preparing the network "
        "inputs, aggregating (the recognition's time outside network calls)"
    )
    infer: float = Field(description="milliseconds in network calls")
    total: float = Field(description="milliseconds from the request's arrival to the answer")


class Distance(BaseModel):
    label: str
    distance: float


class Detail(BaseModel):
    """How the answer was reached; fields present depend on the family's aggregator."""

    aggregator: str = Field(
        description="majority_vote, last_steps_vote, mean_prob or nearest_centre"
    )
    clip_predictions: list[str] | None = Field(
        default=None, description="voting families: each clip's own class, in clip order"
    )
    votes: dict[str, int] | None = Field(
        default=None, description="voting families: clip votes per class that got any, best first"
    )
    distances: list[Distance] | None = Field(
        default=None, description="ms3d: distance to every class centre, nearest first"
    )
    gamma: float | None = Field(
        default=None, description="ms3d: the unknown threshold (null: never unknown)"
    )


class TimelineSegment(BaseModel):
    """One stretch of the video and its answer by the family's own rule."""

    start_s: float = Field(description="where the segment starts, in seconds")
    end_s: float = Field(description="where it ends (the last one: the video's end)")
    top5: list[Scored] = Field(description="best first, scored as the whole answer's top5")
    unknown: bool = Field(description="ms3d: the segment's nearest distance >= gamma")


class RecognizeResponse(BaseModel):
    model: str = Field(description="the bundle that answered")
    family: str
    backend: str = Field(
        description="torch, onnxruntime, onnxruntime-int8 (the int8 graph) or tensorrt"
    )
    top5: list[Scored] = Field(description="best first (fewer when the model has fewer classes)")
    unknown: bool = Field(description="ms3d: nearest distance >= gamma; always false otherwise")
    frames: int = Field(description="frames decoded")
    clips: int = Field(description="network inputs the video became")
    duration_s: float
    timing_ms: Timing
    detail: Detail
    timeline: list[TimelineSegment] | None = Field(
        default=None,
        description="only when asked (form field timeline=true, or a streamed answer): "
        "segments in time order covering [0, duration_s]; one per clip for c3d_vll and "
        "attention_lstm, one per window_s window for ms3d and full_video",
    )


class ModelInfo(BaseModel):
    name: str
    family: str
    architecture: str = Field(description="registry variant, e.g. c3d_vll_tiny")
    backend: str
    backend_info: dict[str, Any]
    default: bool
    labels: list[str]
    sampler: dict[str, Any]
    aggregator: dict[str, Any]
    input_size: list[int]
    decode_size: list[int]
    clip_len: int
    enrollable: bool = Field(description="true for ms3d: classes can be added over HTTP")
    gamma: float | None = None


class ModelsResponse(BaseModel):
    default: str | None
    models: list[ModelInfo]
    failed: dict[str, str] = Field(description="bundles that could not be loaded, with why")


class ClassInfo(BaseModel):
    label: str
    count: int = Field(description="embeddings (videos x walks) behind the centre")


class ClassesResponse(BaseModel):
    model: str
    gamma: float | None
    classes: list[ClassInfo]


class EnrolResponse(ClassesResponse):
    label: str
    created: bool
    videos: int = Field(description="example videos embedded by this request")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    models: list[str]
