"""The served models: bundles loaded from the store, their backends, and MS3D class enrolment.

A recognition is :func:`models.stream.recognize_video` on the uploaded file with the bundle's
stored spec (and, for ms3d, the repository's centres and gamma), as in ``training.evaluate``;
enrolment embeds through :func:`models.stream.stream_outputs`, as training built the
repository. Enrolment edits a copy of the repository and swaps it in (see
``docs/service.md``, "MS3D class enrolment").
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.aggregators import VideoScores, topk
from models.bundle import (
    ONNX_FILE,
    REPOSITORY_FILE,
    Bundle,
    BundleError,
    add_bundle_file,
    is_bundle,
    load_bundle,
)
from models.pipeline import Forward, Prediction, embed_video
from models.repository import Repository, RepositoryError
from models.spec import VariantSpec
from models.stream import Segment, WholeVideoStages, recognize_video, stream_outputs
from service.backends import Backend, BackendUnavailable, load_backend
from service.domain import ServiceError
from service.schemas import Detail, Distance, ModelInfo, Scored, TimelineSegment
from service.settings import Settings
from video.decode import DecodeLimits, VideoMeta

__all__ = [
    "EmptyRepository",
    "LastClass",
    "LoadedModel",
    "ModelStore",
    "NoRepository",
    "Outcome",
    "UnknownClass",
    "UnknownModel",
    "detail_of",
    "segment_of",
]

log = logging.getLogger(__name__)

TOP_K = 5


class UnknownModel(ServiceError):
    """No loaded model has the requested name."""

    code = "unknown_model"


class UnknownClass(ServiceError):
    """The model's repository has no class of that label."""

    code = "unknown_class"


class NoRepository(ServiceError):
    """The model has no class repository (only ms3d models enrol classes)."""

    code = "no_repository"


class LastClass(ServiceError):
    """The class is the repository's last one, which cannot be removed."""

    code = "last_class"


class EmptyRepository(ServiceError):
    """The repository holds no class to judge a video against."""

    code = "empty_repository"


class StoreReadOnly(ServiceError):
    """The bundle cannot be written (a read-only store): its classes cannot change."""

    code = "store_read_only"


def writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (False on a read-only mount)."""
    return os.access(directory, os.W_OK)


@dataclass(frozen=True)
class Outcome:
    """One video's answer with the labels and threshold it was judged against.

    Attributes:
        prediction: The answer.
        labels: Class names in index order, as judged (the repository's at the time).
        gamma: ms3d's threshold.
        meta: What the decoder saw (``None`` for an answer not made from a file).
        timeline: The segments, when asked for.
    """

    prediction: Prediction
    labels: list[str]
    gamma: float | None
    meta: VideoMeta | None = None
    timeline: list[TimelineSegment] | None = None

    def top(self, k: int = TOP_K) -> list[tuple[str, float]]:
        return topk(self.prediction.scores, k, self.labels)


def segment_of(segment: Segment, labels: list[str]) -> TimelineSegment:
    """A timeline segment as the API answers it: top-5 by the segment's own scores and, for
    ms3d, whether the segment alone is rejected."""
    return TimelineSegment(
        start_s=segment.start_s,
        end_s=segment.end_s,
        top5=[Scored(label=k, score=v) for k, v in topk(segment.scores, TOP_K, labels)],
        unknown=segment.scores.unknown,
    )


@dataclass
class LoadedModel:
    """A bundle ready to answer.

    Attributes:
        name: The bundle (directory) name, as requests name it.
        bundle: The verified bundle.
        backend: Its loaded network.
        batch_size: Network inputs per forward call.
        max_inputs: Cap on inputs per video (0: all), as in the bundle's evaluation.
        repository: ms3d's class centres and gamma; ``None`` for classifiers.
    """

    name: str
    bundle: Bundle
    backend: Backend
    batch_size: int
    max_inputs: int
    repository: Repository | None = None
    _enrol_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def family(self) -> str:
        return self.bundle.family

    @property
    def spec(self) -> VariantSpec:
        return self.bundle.spec

    @property
    def holds_whole_video(self) -> bool:
        """Whether a video is decoded whole into memory rather than streamed: full_video
        without its backend's stages, or without clustering (see :mod:`models.stream`)."""
        if self.spec.sampler != "all":
            return False
        stages = self.backend.stages
        return stages is None or stages.clustering == "none"

    def forward_cap(self, wanted: int) -> int:
        """``wanted`` network inputs per forward, within what the backend takes: a TensorRT
        engine's optimisation profile bounds the batch (the ``clips`` range the manifest
        records for ``model.onnx``). For joining calls across requests or videos."""
        if self.backend.name != "tensorrt":
            return wanted
        try:
            clips = self.bundle.file_info(ONNX_FILE)["dims"]["clips"]["max"]
        except (KeyError, TypeError):
            return min(wanted, self.batch_size)
        return min(wanted, int(clips))

    @property
    def enrollable(self) -> bool:
        return self.repository is not None

    @property
    def labels(self) -> list[str]:
        """Class names in index order (the repository's, for ms3d)."""
        repo = self.repository
        return repo.names if repo is not None else self.bundle.labels

    def recognize(
        self,
        path: str | os.PathLike[str],
        *,
        forward: Forward,
        stages: WholeVideoStages | None,
        limits: DecodeLimits | None = None,
        threads: int = 2,
        timeline: bool = False,
        window_s: float = 10.0,
        on_segment: Callable[[TimelineSegment], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        sparse: bool = True,
    ) -> Outcome:
        """The answer for the video file at ``path``, streamed through the shared path.

        Args:
            path: The video file (read once or twice, by family).
            forward: The network call (the backend's, or a wrapper of it).
            stages: The backend's whole-video stages (or a wrapper of them), ``None`` if none.
            limits: Decode caps.
            threads: Decoder threads.
            timeline: Keep the timeline in the outcome.
            window_s: Seconds per timeline window (ms3d, full_video).
            on_segment: Called with each timeline segment as soon as it is known (implies
                computing the timeline).
            cancelled: Polled between decoded chunks; ``True`` stops the work with
                :class:`models.stream.Cancelled`.
            sparse: Decode only the frames the sampler needs where it can (exactly the frames
                a full decode gives; see :func:`video.decode.decode_sampled`).

        Raises:
            EmptyRepository: An ms3d model without a class.
            video.errors.VideoError: The file is not a decodable video within ``limits``.
        """
        repo = self.repository  # one snapshot: enrolment swaps the reference, never edits it
        centres = gamma = None
        labels = self.bundle.labels
        if repo is not None:
            if not len(repo):
                raise EmptyRepository(f"model {self.name!r} has no enrolled class to judge against")
            centres, gamma, labels = repo.centres_tensor(), repo.gamma, repo.names
        segments: list[TimelineSegment] = []

        def emit(segment: Segment) -> None:
            answer = segment_of(segment, labels)
            segments.append(answer)
            if on_segment is not None:
                on_segment(answer)

        streamed = timeline or on_segment is not None
        answer = recognize_video(
            path,
            self.spec,
            forward,
            stages=stages,
            batch_size=self.batch_size,
            max_inputs=self.max_inputs,
            centres=centres,
            gamma=gamma,
            limits=limits,
            threads=threads,
            timeline=streamed,
            window_s=window_s,
            on_segment=emit if streamed else None,
            cancelled=cancelled,
            sparse=sparse,
        )
        return Outcome(
            answer.prediction, labels, gamma, answer.meta, segments if timeline else None
        )

    def embed(
        self,
        path: str | os.PathLike[str],
        *,
        forward: Forward,
        limits: DecodeLimits | None = None,
        threads: int = 2,
        cancelled: Callable[[], bool] | None = None,
        sparse: bool = True,
    ) -> np.ndarray:
        """``(P, D)`` walk embeddings of the video file at ``path``, as the repository was
        built in training (every walk, no cap)."""
        outputs, _, _ = stream_outputs(
            path,
            self.spec,
            forward,
            batch_size=self.batch_size,
            limits=limits,
            threads=threads,
            cancelled=cancelled,
            sparse=sparse,
        )
        return outputs.numpy()

    def enrol(self, label: str, embeddings: list[np.ndarray]) -> tuple[bool, int]:
        """Add class ``label`` from per-video embeddings, or fold them into its centre.

        Returns:
            ``(created, count)``: whether the class is new, and the embeddings now behind it.
        """
        with self._enrol_lock:
            repo = self.require_repository()
            edited = copy.deepcopy(repo)
            rows = np.concatenate(embeddings)
            created = label not in edited
            if created:
                edited.add_class(label, rows)
            else:
                edited.update(label, rows)
            self._persist(edited)
            return created, int(edited.counts[edited.index(label)])

    def remove_class(self, label: str) -> None:
        """Delete class ``label`` from the repository (persisted)."""
        with self._enrol_lock:
            repo = self.require_repository()
            if label not in repo:
                raise UnknownClass(f"model {self.name!r} has no class {label!r}")
            if len(repo) == 1:
                raise LastClass(
                    f"{label!r} is the last class of {self.name!r}; it cannot be removed"
                )
            edited = copy.deepcopy(repo)
            edited.remove_class(label)
            self._persist(edited)

    def require_writable(self) -> None:
        """Raise :class:`StoreReadOnly` unless the bundle can be written (checked before an
        enrolment spends its upload and embedding)."""
        if not writable(self.bundle.path):
            raise StoreReadOnly(self._read_only_message())

    def _read_only_message(self) -> str:
        return (
            f"the bundle of {self.name!r} is on a read-only store, so its classes cannot "
            "change here; enrol on a replica with a writable store (docker/k8s/enrol)"
        )

    def require_repository(self) -> Repository:
        """The model's repository.

        Raises:
            NoRepository: The model has none (not an ms3d model).
        """
        if self.repository is None:
            raise NoRepository(
                f"model {self.name!r} ({self.family}) has no class repository; "
                "only ms3d models enrol classes"
            )
        return self.repository

    def _persist(self, edited: Repository) -> None:
        # The file first, then its checksum in the manifest; a crash in between leaves a bundle
        # that fails verification (refused whole) rather than one that loads stale centres.
        try:
            edited.save(self.bundle.path / REPOSITORY_FILE)
            self.bundle = add_bundle_file(self.bundle, REPOSITORY_FILE)
        except PermissionError as err:
            raise StoreReadOnly(f"{self._read_only_message()} ({err})") from None
        except OSError as err:
            if err.errno != errno.EROFS:
                raise
            raise StoreReadOnly(f"{self._read_only_message()} ({err})") from None
        self.repository = edited

    @property
    def gamma(self) -> float | None:
        """The repository's unknown threshold; ``None`` without one or when infinite."""
        repo = self.repository
        return None if repo is None else _finite_or_none(repo.gamma)

    def describe(self, default: bool) -> ModelInfo:
        """The model as ``GET /models`` lists it."""
        d = self.spec
        return ModelInfo(
            name=self.name,
            family=self.family,
            architecture=self.bundle.model_name,
            backend=self.backend.name,
            backend_info=self.backend.info,
            default=default,
            labels=self.labels,
            sampler={"name": d.sampler, **d.sampler_args()},
            aggregator={"name": d.aggregator, **dict(d.aggregator_kwargs)},
            input_size=list(d.input_size),
            decode_size=list(d.decode_hw()),
            clip_len=d.input_frames,
            enrollable=self.enrollable,
            gamma=self.gamma,
        )


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def detail_of(outcome: Outcome, spec: VariantSpec) -> Detail:
    """The family detail of a recognition answer (votes per clip, or distances).

    Only the fields the aggregator produced are set; the others stay unset, so an answer
    serialised with ``exclude_unset`` leaves them out.
    """
    s: VideoScores = outcome.prediction.scores
    labels = outcome.labels
    detail = Detail(aggregator=spec.aggregator)
    # Assigning a field marks it set (pydantic's ``model_fields_set``).
    if s.input_pred is not None:
        detail.clip_predictions = [labels[i] for i in s.input_pred.tolist()]
    if s.votes is not None:
        votes = s.votes.tolist()
        detail.votes = {labels[i]: int(votes[i]) for i in s.order.tolist() if votes[i] > 0}
    if s.distances is not None:
        dist = s.distances.tolist()
        detail.distances = [
            Distance(label=labels[i], distance=float(dist[i])) for i in s.order.tolist()
        ]
        detail.gamma = _finite_or_none(outcome.gamma)
    return detail


def _warm_up(model: LoadedModel) -> None:
    """One dummy inference so the first request does not pay for lazy initialisation."""
    d = model.spec
    height, width = d.decode_hw()
    frames = np.random.default_rng(0).integers(
        0, 256, size=(max(2 * d.input_frames, 32), height, width, 3), dtype=np.uint8
    )
    embed_video(model.backend.forward, frames, d, batch_size=model.batch_size)
    stages = model.backend.stages
    if stages is not None and stages.clustering != "none":
        # Streamed full_video requests run the two stages, not the whole network: warm them.
        x = torch.zeros(1, 3, 2 * stages.context + 1, *d.input_size)
        early = stages.early(x)
        stages.late(early[:, :1].expand(1, stages.num_clusters, *early.shape[2:]).contiguous())


class ModelStore:
    """All bundles of the store directory, loaded once.

    Args:
        settings: The service settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LoadedModel] = {}
        self.failed: dict[str, str] = {}
        self.loaded = False

    @property
    def default_name(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        return min(self.models) if self.models else None

    def readiness(self) -> tuple[bool, str]:
        """``(ready, why not)``."""
        if not self.loaded:
            return False, "models are still loading"
        if not self.models:
            problems = "; ".join(f"{k}: {v}" for k, v in self.failed.items())
            return False, f"no model could be loaded from {self.settings.store}" + (
                f" ({problems})" if problems else ""
            )
        default = self.default_name
        if default not in self.models:
            why = self.failed.get(default or "", "no such bundle in the store")
            return False, f"default model {default!r} is not loaded: {why}"
        return True, "ready"

    def get(self, name: str | None) -> LoadedModel:
        """The model ``name`` (the default when ``None`` or empty).

        Raises:
            UnknownModel: No model of that name is loaded.
        """
        key = name or self.default_name
        model = self.models.get(key or "")
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"no model named {key!r} (loaded: {known})")
        return model

    def bundle_dirs(self) -> list[Path]:
        store = Path(self.settings.store)
        if not store.is_dir():
            return []
        return sorted(p for p in store.iterdir() if is_bundle(p))

    def load_all(self) -> None:
        """Load and warm every bundle; failures are logged and listed, never half-loaded."""
        s = self.settings
        if s.compute_threads:
            torch.set_num_threads(s.compute_threads)
        models: dict[str, LoadedModel] = {}
        for path in self.bundle_dirs():
            started = time.perf_counter()
            try:
                model = self.load_one(path)
                if s.warmup:
                    _warm_up(model)
            except (
                BundleError,
                RepositoryError,
                BackendUnavailable,
                OSError,
                ValueError,
                KeyError,
            ) as err:
                log.error("model %s not loaded: %s", path.name, err)
                self.failed[path.name] = str(err)
                continue
            models[model.name] = model
            log.info(
                "model %s loaded (%s, %s backend) in %.1f s",
                model.name,
                model.family,
                model.backend.name,
                time.perf_counter() - started,
            )
        self.models = models
        self.loaded = True
        ready, why = self.readiness()
        if not ready:
            log.error("service not ready: %s", why)

    def load_one(self, path: Path) -> LoadedModel:
        """The bundle at ``path`` loaded as :meth:`load_all` loads each (not warmed up, not
        added to :attr:`models`); ``service.batch`` loads its one model so.

        Raises:
            models.bundle.BundleError, models.repository.RepositoryError,
            service.backends.BackendUnavailable: The bundle cannot be served here.
        """
        s = self.settings
        bundle = load_bundle(path)
        preference = s.model_backends.get(bundle.name, s.backend)
        backend = load_backend(
            bundle, preference, device=s.device, threads=s.compute_threads, precision=s.precision
        )
        repository = None
        if bundle.spec.aggregator == "nearest_centre":
            repository = Repository.load(bundle.file(REPOSITORY_FILE))
        return LoadedModel(
            name=bundle.name,
            bundle=bundle,
            backend=backend,
            batch_size=s.batch_size,
            max_inputs=s.max_clips or bundle.eval_max_clips,
            repository=repository,
        )
