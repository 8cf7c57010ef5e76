"""Service settings: every field from the environment (``ACTREC_<FIELD>``) or the command line.

They say where the bundles are, pick the backend, and bound what one request may cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BackendName", "Settings"]

BackendName = Literal["auto", "torch", "onnxruntime", "tensorrt"]


class Settings(BaseSettings):
    """All service settings with their defaults.

    Environment variables are ``ACTREC_`` plus the field name in capitals
    (``ACTREC_MAX_UPLOAD_BYTES=50000000``); dict fields take JSON
    (``ACTREC_MODEL_BACKENDS='{"ms3d-move4digits": "torch"}'``). Keyword arguments (the command
    line) win over the environment.
    """

    model_config = SettingsConfigDict(env_prefix="ACTREC_", extra="forbid")

    # --- what to serve, where
    store: Path = Field(
        default=Path("store"), description="directory of model bundles (one per subdirectory)"
    )
    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port")
    default_model: str | None = Field(
        default=None, description="bundle used when a request names none (default: first by name)"
    )

    # --- backends
    backend: BackendName = Field(
        default="auto",
        description="auto: TensorRT plan, else ONNX Runtime, else PyTorch, per bundle",
    )
    model_backends: dict[str, BackendName] = Field(
        default_factory=dict, description="per-bundle override of `backend`, e.g. {name: torch}"
    )
    precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="int8: serve each bundle's model.int8.onnx on ONNX Runtime (backend auto or "
        "onnxruntime; python -m export.onnx --quantize int8); a bundle without one is not "
        "loaded. Answers name the backend onnxruntime-int8",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where torch and ONNX Runtime run (auto: CUDA when present)"
    )
    compute_threads: int = Field(
        default=0,
        ge=0,
        description="intra-op threads of one inference (torch, ONNX Runtime); 0: library default",
    )
    batch_size: int = Field(default=16, ge=1, description="network inputs (clips) per forward call")
    max_clips: int = Field(
        default=0,
        ge=0,
        description="cap on clips per video; 0 uses the bundle's evaluation cap "
        "(a different cap makes answers differ from training.run's evaluation)",
    )
    warmup: bool = Field(
        default=True, description="run one dummy inference per model before /readyz is 200"
    )
    load_in_background: bool = Field(
        default=True,
        description="load models after the server starts listening (/readyz 503 meanwhile)",
    )

    # --- limits per request
    max_upload_bytes: int = Field(
        default=100_000_000, gt=0, description="largest uploaded file (413 above)"
    )
    max_duration_s: float = Field(
        default=4 * 3600.0, gt=0, description="longest video in seconds (413 above)"
    )
    max_frames: int | None = Field(
        default=None,
        ge=0,
        description="most frames in a video (413 above); 0 or unset: no cap (videos are "
        "streamed, so memory does not grow with their length)",
    )
    max_frames_in_memory: int = Field(
        default=9000,
        ge=1,
        description="most frames of a video for a model that holds a video whole in memory "
        "(full_video without stage graphs for its backend, or without clustering; 413 above)",
    )
    max_pixels: int = Field(
        default=3840 * 2160, gt=0, description="largest source frame as width*height (413 above)"
    )
    max_enrol_videos: int = Field(
        default=16, ge=1, description="most example videos in one enrolment"
    )
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="upload + decode + inference budget of one request (503 after); a "
        "streamed answer is bounded by it only until its response starts",
    )
    segment_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="streamed answers: longest wait for the next line while the job is held "
        "in one network call (waiting for an inference thread, or in the call); a last error "
        "line `timeout` after. Decoding is never cut",
    )

    # --- access control
    admin_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the routes that change state (MS3D enrolment, class "
        "removal); unset: those routes answer 403 admin_disabled",
    )
    api_keys: SecretStr | None = Field(
        default=None,
        description="bearer keys of /recognize and /models: comma-separated, or the path of a "
        "file with one key per line; unset: those routes are open",
    )
    metrics_require_key: bool = Field(
        default=False, description="/metrics also needs an API key (when api_keys is set)"
    )

    # --- slow clients
    max_concurrent_uploads: int = Field(
        default=32,
        ge=1,
        description="uploads received at once (their own pool: an upload takes a compute "
        "ticket only once fully received)",
    )
    upload_slot_wait_s: float = Field(
        default=15.0,
        ge=0,
        description="how long a new upload waits for a free upload slot (503 overloaded after)",
    )
    upload_idle_timeout_s: float = Field(
        default=10.0, gt=0, description="no body bytes for this long: 408 upload_timeout"
    )
    upload_min_rate_bps: int = Field(
        default=8192,
        ge=0,
        description="slowest average upload rate in bytes/s once upload_rate_grace_s have "
        "passed (408 upload_too_slow below); 0: no minimum",
    )
    upload_rate_grace_s: float = Field(
        default=10.0, ge=0, description="seconds before upload_min_rate_bps applies"
    )

    # --- shutdown
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM: /readyz 503, new requests 503 shutting_down, in-flight ones "
        "get this long to finish before the process exits 0",
    )

    # --- load
    queue_size: int = Field(
        default=8,
        ge=1,
        description="requests admitted to the work queue at once (waiting, decoding or "
        "inferring; an upload is admitted once fully received); one more gets 503 with "
        "Retry-After",
    )
    inference_workers: int = Field(default=1, ge=1, description="inferences run at the same time")
    decode_workers: int = Field(default=2, ge=1, description="videos decoded at the same time")
    decode_threads: int = Field(default=2, ge=1, le=16, description="FFmpeg threads per decode")
    sparse_decode: bool = Field(
        default=True,
        description="decode only the frames a sampler needs where it can (exactly the frames "
        "a full decode gives); false: always decode every frame",
    )
    max_batch_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="batching across requests: the longest a network call waits for the calls "
        "of other requests to the same model to join its forward (it waits only while some "
        "are in progress); 0 (the default: on 2 CPU cores it did not pay, docs/service.md) turns "
        "batching off",
    )
    max_batch_inputs: int = Field(
        default=32, ge=1, description="batching across requests: most network inputs per forward"
    )
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After header value on 503")
    upload_dir: Path | None = Field(
        default=None, description="where uploads are spooled (default: system temp)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level"
    )
