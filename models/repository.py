"""The MS3D class-centre repository: centres, the rejection threshold gamma, persistence.

The MS3D paper (cited in :mod:`models.ms3d`), Sections III.C-D and Eq. 6: each class is the
running mean of its videos' walk embeddings, a video is judged by the nearest centre, and a
distance of at least ``gamma`` answers ``unknown``. Judgement and calibration both go through
:func:`models.aggregators.nearest_centre`. Stored as ``repository.safetensors`` in an ms3d
bundle, written atomically and checked whole on load.

Design and file format: docs/models.md#ms3d.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
from safetensors import safe_open

from models.aggregators import VideoScores, nearest_centre
from models.fileio import atomic_write_bytes

__all__ = [
    "Judgement",
    "Repository",
    "RepositoryError",
    "calibrate_gamma",
    "in_class_distances",
]

_FORMAT = "actrec.ms3d.repository"
_VERSION = "1"
_ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | Sequence[Sequence[float]]


class RepositoryError(ValueError):
    """A repository file or operation is inconsistent (bad file, unknown or duplicate class)."""


@dataclass(frozen=True)
class Judgement:
    """One video judged against the repository.

    Attributes:
        nearest: Name of the nearest class.
        distance: Distance to that class's centre.
        unknown: ``distance >= gamma``.
        ranking: ``(name, distance)`` for every class, nearest first.
        scores: The aggregator's full answer (distances, ``exp(-distance)`` scores, order).
    """

    nearest: str
    distance: float
    unknown: bool
    ranking: list[tuple[str, float]]
    scores: VideoScores

    @property
    def label(self) -> str | None:
        """The judged class, or ``None`` when the video is unknown."""
        return None if self.unknown else self.nearest


def _as_matrix(embeddings: _ArrayLike, dim: int | None) -> np.ndarray:
    """Any array-like of embeddings -> ``(M, D)`` float64; ``(w, p, D)`` stacks are flattened."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    arr = np.asarray(embeddings, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim > 2:
        arr = arr.reshape(-1, arr.shape[-1])
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected at least one embedding, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"embeddings have dimension {arr.shape[1]}, the repository {dim}")
    if not np.isfinite(arr).all():
        raise ValueError("embeddings contain NaN or infinity")
    return arr


def calibrate_gamma(in_class_distances: _ArrayLike, percentile: float = 95.0) -> float:
    """The unknown threshold as a percentile of held-out in-class distances.

    A video is unknown when its nearest distance is ``>= gamma``, so about
    ``100 - percentile`` percent of in-class videos like the held-out ones are rejected.

    Args:
        in_class_distances: Distances of held-out videos to their own class centre.
        percentile: In ``[0, 100]``; linear interpolation between order statistics.

    Returns:
        ``gamma``.
    """
    d = np.asarray(
        in_class_distances.detach().cpu().numpy()
        if isinstance(in_class_distances, torch.Tensor)
        else in_class_distances,
        dtype=np.float64,
    ).ravel()
    if d.size == 0:
        raise ValueError("cannot calibrate gamma from no distances")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("distances must be finite and non-negative")
    return float(np.percentile(d, percentile))


class Repository:
    """Class centres with counts, and the unknown threshold ``gamma``.

    Args:
        dim: Embedding dimension ``D``.
        gamma: Unknown threshold; ``inf`` never rejects.
    """

    def __init__(self, dim: int, *, gamma: float = math.inf) -> None:
        if dim < 1:
            raise ValueError(f"embedding dimension must be >= 1, got {dim}")
        self.dim = int(dim)
        self.gamma = gamma
        self._names: list[str] = []
        self._centres = np.zeros((0, self.dim), dtype=np.float32)
        self._counts = np.zeros((0,), dtype=np.int64)

    # --- contents

    @property
    def gamma(self) -> float:
        """The unknown threshold."""
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError(f"gamma must be a non-negative number or inf, got {value}")
        self._gamma = value

    @property
    def names(self) -> list[str]:
        """Class names in index order."""
        return list(self._names)

    @property
    def centres(self) -> np.ndarray:
        """``(K, D)`` float32 centres (a copy)."""
        return self._centres.copy()

    @property
    def counts(self) -> np.ndarray:
        """``(K,)`` int64 number of embeddings behind each centre (a copy)."""
        return self._counts.copy()

    def centres_tensor(self) -> torch.Tensor:
        """The centres as a float32 tensor, for :func:`models.aggregators.nearest_centre`."""
        return torch.from_numpy(self.centres)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def index(self, name: str) -> int:
        """Index of class ``name``."""
        try:
            return self._names.index(name)
        except ValueError:
            raise RepositoryError(f"unknown class {name!r}") from None

    # --- editing

    def add_class(self, name: str, embeddings: _ArrayLike) -> None:
        """Add a class whose centre is the mean of ``embeddings`` (Eq. 6).

        Args:
            name: New class name.
            embeddings: ``(M, D)`` or ``(w, p, D)`` embeddings (``w`` videos x ``p`` walks).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
        if name in self._names:
            raise RepositoryError(f"class {name!r} is already in the repository; use update()")
        emb = _as_matrix(embeddings, self.dim)
        self._names.append(name)
        self._centres = np.vstack([self._centres, emb.mean(axis=0).astype(np.float32)])
        self._counts = np.append(self._counts, np.int64(len(emb)))

    def update(self, name: str, embeddings: _ArrayLike) -> None:
        """Fold more embeddings of class ``name`` into its centre (running mean by counts).

        After the update the centre equals the mean of all embeddings ever added to the class.
        """
        k = self.index(name)
        emb = _as_matrix(embeddings, self.dim)
        n, m = int(self._counts[k]), len(emb)
        total = self._centres[k].astype(np.float64) * n + emb.sum(axis=0)
        self._centres[k] = (total / (n + m)).astype(np.float32)
        self._counts[k] = n + m

    def remove_class(self, name: str) -> None:
        """Drop class ``name``; later classes move down one index."""
        k = self.index(name)
        del self._names[k]
        self._centres = np.delete(self._centres, k, axis=0)
        self._counts = np.delete(self._counts, k)

    # --- judgement

    def judge(self, embeddings: _ArrayLike, *, gamma: float | None = None) -> Judgement:
        """Judge one video from the embeddings of its walks (Section III.D).

        Args:
            embeddings: ``(P, D)`` walk embeddings of the video, or one ``(D,)``.
            gamma: Override of the stored threshold.
        """
        if not self._names:
            raise RepositoryError("the repository holds no class to judge against")
        emb = torch.from_numpy(_as_matrix(embeddings, self.dim)).float()
        scores = nearest_centre(emb, self.centres_tensor(), self.gamma if gamma is None else gamma)
        assert scores.distances is not None  # nearest_centre always reports them
        dist = scores.distances.tolist()
        ranking = [(self._names[i], dist[i]) for i in scores.order.tolist()]
        return Judgement(
            nearest=ranking[0][0],
            distance=ranking[0][1],
            unknown=scores.unknown,
            ranking=ranking,
            scores=scores,
        )

    def calibrate(
        self, videos: Sequence[_ArrayLike], labels: Sequence[str], percentile: float = 95.0
    ) -> float:
        """Set ``gamma`` from held-out videos of known classes and return it.

        Args:
            videos: Per video, its ``(P, D)`` walk embeddings (or one ``(D,)``).
            labels: Class name of each video; every one must be in the repository.
            percentile: See :func:`calibrate_gamma`.
        """
        self.gamma = calibrate_gamma(in_class_distances(self, videos, labels), percentile)
        return self.gamma

    # --- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the repository as safetensors, atomically (temp file, fsync, rename)."""
        tensors: dict[str, np.ndarray] = {
            "centres": np.ascontiguousarray(self._centres, dtype=np.float32),
            "counts": np.ascontiguousarray(self._counts, dtype=np.int64),
            "gamma": np.array(self.gamma, dtype=np.float64),
        }
        metadata = {
            "format": _FORMAT,
            "version": _VERSION,
            "class_names": json.dumps(self._names),
        }
        return atomic_write_bytes(path, safetensors.numpy.save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Repository:
        """Read a repository written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            RepositoryError: If the file is not a consistent repository.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no repository file at {path}")
        try:
            with safe_open(str(path), framework="np") as fh:
                metadata = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        except Exception as err:  # the Rust reader raises its own non-OSError types
            raise RepositoryError(f"{path} is not a readable safetensors file: {err}") from err
        return cls._from_parts(tensors, metadata, str(path))

    @classmethod
    def _from_parts(
        cls, tensors: dict[str, np.ndarray], metadata: dict[str, str], where: str
    ) -> Repository:
        def bad(why: str) -> RepositoryError:
            return RepositoryError(f"{where} is not a valid ms3d repository: {why}")

        if metadata.get("format") != _FORMAT:
            raise bad(f"format is {metadata.get('format')!r}, expected {_FORMAT!r}")
        if metadata.get("version") != _VERSION:
            raise bad(f"unsupported version {metadata.get('version')!r}")
        missing = {"centres", "counts", "gamma"} - tensors.keys()
        if missing:
            raise bad(f"missing tensors {sorted(missing)}")
        try:
            names = json.loads(metadata.get("class_names", ""))
        except json.JSONDecodeError:
            raise bad("class_names metadata is not JSON") from None
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise bad("class_names must be a list of non-empty strings")
        if len(set(names)) != len(names):
            raise bad("duplicate class names")
        centres, counts, gamma = tensors["centres"], tensors["counts"], tensors["gamma"]
        if centres.ndim != 2 or centres.shape[1] < 1 or centres.dtype != np.float32:
            raise bad(f"centres must be (K, D) float32, got {centres.shape} {centres.dtype}")
        if centres.shape[0] != len(names) or counts.shape != (len(names),):
            raise bad(
                f"{len(names)} class names, {centres.shape[0]} centres, counts of shape "
                f"{counts.shape}"
            )
        if not np.issubdtype(counts.dtype, np.integer) or (counts < 1).any():
            raise bad("counts must be positive integers")
        if not np.isfinite(centres).all():
            raise bad("centres contain NaN or infinity")
        if gamma.size != 1 or math.isnan(float(gamma.reshape(-1)[0])) or float(gamma) < 0:
            raise bad(f"gamma must be one non-negative number, got {gamma!r}")
        repo = cls(centres.shape[1], gamma=float(gamma.reshape(-1)[0]))
        repo._names = list(names)
        repo._centres = centres.astype(np.float32, copy=True)
        repo._counts = counts.astype(np.int64, copy=True)
        return repo


def in_class_distances(
    repository: Repository, videos: Sequence[_ArrayLike], labels: Sequence[str]
) -> np.ndarray:
    """Distance of each held-out video to its own class centre, as judgement measures it.

    Args:
        repository: Centres to measure against.
        videos: Per video, its ``(P, D)`` walk embeddings (or one ``(D,)``).
        labels: Class name of each video.

    Returns:
        ``(len(videos),)`` float64 distances.
    """
    if len(videos) != len(labels):
        raise ValueError(f"{len(videos)} videos but {len(labels)} labels")
    if not len(repository):
        raise RepositoryError("the repository holds no class")
    centres = repository.centres_tensor()
    out = np.empty(len(videos), dtype=np.float64)
    for i, (video, label) in enumerate(zip(videos, labels)):
        emb = torch.from_numpy(_as_matrix(video, repository.dim)).float()
        distances = nearest_centre(emb, centres).distances
        assert distances is not None  # nearest_centre always reports them
        out[i] = float(distances[repository.index(label)])
    return out
