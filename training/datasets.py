"""Video datasets: split files of UCF101 / HMDB51 / plain lists, and torch Datasets over them.

The loaders turn a dataset folder (or list file) into :class:`VideoEntry` lists and class
names; the torch datasets decode, sample and normalise a video through :mod:`models.pipeline`
with the model's :class:`~models.spec.VariantSpec`, the same front end evaluation and the
service use.

Unusable videos are probed up front (:func:`validate_entries`: warned about and skipped, or
refused with ``strict=True``); one that still fails in ``__getitem__`` is logged, counted in
``failures`` and replaced by the next readable item, unless ``skip_errors=False``.

Layouts, validation, items and randomness: docs/data.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from models.pipeline import decode_for, inputs_from_indices, sample_video
from models.spec import VariantSpec
from video.augment import Augment
from video.decode import DecodeLimits, probe_video
from video.errors import VideoError

__all__ = [
    "ClipDataset",
    "ClipItem",
    "DatasetError",
    "DatasetSplits",
    "EmptySplitError",
    "ScanReport",
    "UnusableVideosError",
    "VideoBatch",
    "VideoDataset",
    "VideoEntry",
    "VideoItem",
    "VideoLoadError",
    "collate_videos",
    "detect_layout",
    "load_dataset",
    "load_hmdb51",
    "load_list",
    "load_ucf101",
    "scan_videos",
    "validate_entries",
]

logger = logging.getLogger(__name__)

_UCF_SPLIT_DIR = "ucfTrainTestlist"
_HMDB_SPLIT_DIR = "testTrainMulti_7030_splits"
_HMDB_PATTERN = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")
# How many paths a warning or error lists before summarising the rest.
_LIST_LIMIT = 50


# --------------------------------------------------------------------------- entries, errors


@dataclass(frozen=True)
class VideoEntry:
    """One labelled video file.

    Attributes:
        path: Where the video is.
        label: 0-based class index.
    """

    path: Path
    label: int


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test entries of one dataset split, with the class names in index order.

    Attributes:
        layout: ``"ucf101"``, ``"hmdb51"`` or ``"list"``.
        classes: Class names; ``classes[label]`` names a label.
        train: Training entries.
        test: Test entries (empty for a list dataset given no test list).
        sources: The split / list files that were read.
    """

    layout: str
    classes: list[str]
    train: list[VideoEntry]
    test: list[VideoEntry]
    sources: list[Path] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


class DatasetError(ValueError):
    """A dataset folder or split file that cannot be read as any supported layout."""


class EmptySplitError(DatasetError):
    """A split without a single (usable) video."""


class UnusableVideosError(DatasetError):
    """Missing or undecodable videos found with ``strict=True``.

    Attributes:
        bad: ``(path, reason)`` of each unusable video.
    """

    def __init__(self, message: str, bad: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.bad = bad


class VideoLoadError(RuntimeError):
    """A video failed to load inside a dataset (``skip_errors=False``).

    Attributes:
        path: The video that failed.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot load video {path}: {reason}")
        self.path = path


def _listing(paths: Sequence[object]) -> str:
    shown = "\n  ".join(str(p) for p in paths[:_LIST_LIMIT])
    more = len(paths) - _LIST_LIMIT
    return "  " + shown + (f"\n  ... and {more} more" if more > 0 else "")


def _check_nonempty(entries: list[VideoEntry], what: str, sources: Sequence[Path]) -> None:
    if not entries:
        raise EmptySplitError(f"{what} has no videos; files read:\n{_listing(list(sources))}")


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """Non-empty, non-comment lines with their 1-based line numbers."""
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


# --------------------------------------------------------------------------- layouts


def _find_dir(candidates: Sequence[Path], probe: Callable[[Path], bool]) -> Path | None:
    return next((d for d in candidates if d.is_dir() and probe(d)), None)


def _ucf_split_dir(root: Path) -> Path | None:
    return _find_dir([root, root / _UCF_SPLIT_DIR], lambda d: (d / "classInd.txt").is_file())


def _hmdb_split_dir(root: Path, split: int | None = None) -> Path | None:
    pattern = f"*_test_split{split}.txt" if split is not None else "*_test_split*.txt"
    return _find_dir([root / _HMDB_SPLIT_DIR, root], lambda d: any(d.glob(pattern)))


def detect_layout(path: str | Path) -> str:
    """Which layout ``path`` holds.

    Returns:
        ``"list"`` for a file, ``"ucf101"`` for a folder with ``classInd.txt`` (in it or in
        ``ucfTrainTestlist/``), ``"hmdb51"`` for one with ``*_test_split*.txt`` files (in it
        or in ``testTrainMulti_7030_splits/``).

    Raises:
        DatasetError: If ``path`` does not exist or matches no layout.
    """
    path = Path(path)
    if path.is_file():
        return "list"
    if not path.is_dir():
        raise DatasetError(f"dataset path {path} does not exist")
    if _ucf_split_dir(path) is not None:
        return "ucf101"
    if _hmdb_split_dir(path) is not None:
        return "hmdb51"
    raise DatasetError(
        f"cannot tell the layout of {path}: expected classInd.txt (UCF101, also under "
        f"{_UCF_SPLIT_DIR}/), *_test_split<N>.txt files (HMDB51, also under {_HMDB_SPLIT_DIR}/), "
        "or a 'path label' list file"
    )


def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise DatasetError(f"split must be 1, 2 or 3, got {split}")


def load_ucf101(root: str | Path, split: int = 1) -> DatasetSplits:
    """Read a UCF101-layout folder's ``classInd.txt`` and split ``split`` lists.

    Labels in ``trainlist0N.txt`` are 1-based and optional; when missing (and always in
    ``testlist0N.txt``) the label comes from the class folder, matched case-insensitively
    (UCF101 spells ``HandstandPushups`` two ways).

    Raises:
        DatasetError: Missing files, malformed lines, unknown classes, a label that
            contradicts its folder.
        EmptySplitError: A list without videos (naming the file).
    """
    root = Path(root)
    _check_split(split)
    split_dir = _ucf_split_dir(root)
    if split_dir is None:
        raise DatasetError(f"no classInd.txt in {root} or {root / _UCF_SPLIT_DIR}")
    class_file = split_dir / "classInd.txt"
    numbered: list[tuple[int, str]] = []
    for number, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(
                f"{class_file}:{number}: expected '<index> <ClassName>', got {line!r}"
            )
        numbered.append((int(parts[0]), parts[1]))
    numbered.sort()
    if [i for i, _ in numbered] != list(range(1, len(numbered) + 1)):
        raise DatasetError(f"{class_file}: class indices must run 1..K without gaps")
    classes = [name for _, name in numbered]
    if not classes:
        raise EmptySplitError(f"{class_file} lists no classes")
    by_name = {name.lower(): i for i, name in enumerate(classes)}

    def read(kind: str) -> tuple[list[VideoEntry], Path]:
        path = split_dir / f"{kind}list{split:02d}.txt"
        if not path.is_file():
            raise DatasetError(f"missing split file {path}")
        entries = []
        for number, line in _lines(path):
            parts = line.replace("\\", "/").split()
            if len(parts) not in (1, 2):
                raise DatasetError(
                    f"{path}:{number}: expected '<Class>/<video> [label]', got {line!r}"
                )
            rel = parts[0]
            folder = rel.split("/")[0].lower() if "/" in rel else None
            from_folder = by_name.get(folder) if folder is not None else None
            if len(parts) == 2:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    raise DatasetError(
                        f"{path}:{number}: label {parts[1]!r} is not in 1..{len(classes)}"
                    )
                label = int(parts[1]) - 1
                if from_folder is not None and from_folder != label:
                    raise DatasetError(
                        f"{path}:{number}: label {parts[1]} ({classes[label]}) contradicts "
                        f"the folder {rel.split('/')[0]!r}"
                    )
            elif from_folder is not None:
                label = from_folder
            else:
                raise DatasetError(
                    f"{path}:{number}: no label and no known class folder in {rel!r}"
                )
            entries.append(VideoEntry(root / rel, label))
        _check_nonempty(entries, f"UCF101 {kind} split {split}", [path])
        return entries, path

    train, train_file = read("train")
    test, test_file = read("test")
    return DatasetSplits("ucf101", classes, train, test, [class_file, train_file, test_file])


def load_hmdb51(
    root: str | Path, split: int = 1, *, splits_dir: str | Path | None = None
) -> DatasetSplits:
    """Read an HMDB51-layout folder's per-class ``<class>_test_split<N>.txt`` files.

    Classes are the class names of the split files, sorted; lines are ``"video.avi id"``
    with id 1 = train, 2 = test, 0 = unused.

    Args:
        root: Folder holding ``<class>/<video>``.
        split: Split number 1..3.
        splits_dir: Folder of the split files; default ``root/testTrainMulti_7030_splits``
            or ``root``.

    Raises:
        DatasetError: No split files, malformed lines.
        EmptySplitError: A split without videos (naming the files read).
    """
    root = Path(root)
    _check_split(split)
    folder = Path(splits_dir) if splits_dir is not None else _hmdb_split_dir(root, split)
    files = sorted(folder.glob(f"*_test_split{split}.txt")) if folder is not None else []
    if not files:
        where = folder if splits_dir is not None else f"{root} or {root / _HMDB_SPLIT_DIR}"
        raise DatasetError(f"no *_test_split{split}.txt files in {where}")
    per_class: dict[str, Path] = {}
    for path in files:
        match = _HMDB_PATTERN.match(path.name)
        if match is not None:
            per_class[match["cls"]] = path
    classes = sorted(per_class)
    train: list[VideoEntry] = []
    test: list[VideoEntry] = []
    for label, name in enumerate(classes):
        path = per_class[name]
        for number, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetError(f"{path}:{number}: expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == "1":
                train.append(VideoEntry(root / name / parts[0], label))
            elif parts[1] == "2":
                test.append(VideoEntry(root / name / parts[0], label))
    sources = [per_class[name] for name in classes]
    _check_nonempty(train, f"HMDB51 train split {split}", sources)
    _check_nonempty(test, f"HMDB51 test split {split}", sources)
    return DatasetSplits("hmdb51", classes, train, test, sources)


def _is_int(token: str) -> bool:
    return token.lstrip("-").isdigit()


def _read_list(path: Path) -> list[tuple[Path, str, int]]:
    rows = []
    csv = path.suffix.lower() == ".csv"
    for number, line in _lines(path):
        parts = line.rsplit(",", 1) if csv else line.rsplit(None, 1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{number}: expected 'path label', got {line!r}")
        rel, label = parts[0].strip(), parts[1].strip()
        if csv and number == 1 and label.lower() == "label":
            continue  # header row
        file = Path(rel)
        rows.append((file if file.is_absolute() else path.parent / file, label, number))
    return rows


def load_list(
    train_list: str | Path,
    test_list: str | Path | None = None,
    *,
    classes: Sequence[str] | None = None,
) -> DatasetSplits:
    """Read ``"path label"`` list files.

    A label is a 0-based class index or a class name. Class names come from ``classes``;
    without it they are the sorted names used in the lists, or ``"0" .. "K-1"`` when every
    label is an index.

    Args:
        train_list: Training list file.
        test_list: Optional test list file; without it the test split is empty.
        classes: Class names in index order.

    Raises:
        DatasetError: Malformed lines, an index out of range, an unknown name, or names and
            indices mixed without ``classes``.
        EmptySplitError: A given list without videos (naming the file).
    """
    files = [Path(train_list)] + ([Path(test_list)] if test_list is not None else [])
    for f in files:
        if not f.is_file():
            raise DatasetError(f"list file {f} does not exist")
    rows = {f: _read_list(f) for f in files}
    tokens = [label for f in files for _, label, _ in rows[f]]
    indices = [int(t) for t in tokens if _is_int(t)]
    names_used = sorted({t for t in tokens if not _is_int(t)})
    if classes is not None:
        class_names = list(classes)
    elif names_used and indices:
        raise DatasetError(
            f"{', '.join(map(str, files))}: labels mix class names and indices; pass classes="
        )
    elif names_used:
        class_names = names_used
    else:
        class_names = [str(i) for i in range(max(indices, default=-1) + 1)]
    by_name = {name: i for i, name in enumerate(class_names)}

    def entries(f: Path) -> list[VideoEntry]:
        out = []
        for path, token, number in rows[f]:
            if _is_int(token):
                label = int(token)
                if not 0 <= label < len(class_names):
                    raise DatasetError(
                        f"{f}:{number}: label {label} is not in 0..{len(class_names) - 1}"
                    )
            elif token in by_name:
                label = by_name[token]
            else:
                raise DatasetError(f"{f}:{number}: unknown class {token!r}")
            out.append(VideoEntry(path, label))
        _check_nonempty(out, f"list {f.name}", [f])
        return out

    train = entries(files[0])
    test = entries(files[1]) if len(files) > 1 else []
    return DatasetSplits("list", class_names, train, test, files)


def load_dataset(
    path: str | Path,
    *,
    split: int = 1,
    test_list: str | Path | None = None,
    splits_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
) -> DatasetSplits:
    """Detect the layout of ``path`` (:func:`detect_layout`) and read its train/test split.

    Args:
        path: Dataset folder (UCF101 or HMDB51 layout) or a training list file.
        split: Official split number for UCF101 / HMDB51.
        test_list: Test list file for the list layout.
        splits_dir: HMDB51 split-file folder, if not in the usual places.
        classes: Class names for the list layout.
    """
    layout = detect_layout(path)
    if layout == "ucf101":
        return load_ucf101(path, split)
    if layout == "hmdb51":
        return load_hmdb51(path, split, splits_dir=splits_dir)
    return load_list(path, test_list, classes=classes)


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class ScanReport:
    """The result of probing a list of videos.

    Attributes:
        ok: Entries that opened as videos.
        bad: ``(entry, reason)`` for each missing or undecodable one.
    """

    ok: list[VideoEntry]
    bad: list[tuple[VideoEntry, str]]


def _probe(entry: VideoEntry, limits: DecodeLimits | None) -> str | None:
    if not entry.path.is_file():
        return "missing"
    try:
        probe_video(entry.path, limits=limits)
    except VideoError as err:
        return f"{err.code}: {err}"
    except OSError as err:
        return f"unreadable: {err}"
    return None


def scan_videos(
    entries: Sequence[VideoEntry], *, workers: int = 4, limits: DecodeLimits | None = None
) -> ScanReport:
    """Probe every entry (in ``workers`` threads), sorting them into usable and unusable.

    Args:
        entries: Videos to check.
        workers: Threads probing in parallel (1: sequential).
        limits: Decode limits a video must satisfy.
    """
    if workers > 1 and len(entries) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(lambda e: _probe(e, limits), entries))
    else:
        reasons = [_probe(e, limits) for e in entries]
    ok = [e for e, r in zip(entries, reasons) if r is None]
    bad = [(e, r) for e, r in zip(entries, reasons) if r is not None]
    return ScanReport(ok, bad)


def validate_entries(
    entries: Sequence[VideoEntry],
    *,
    strict: bool = False,
    workers: int = 4,
    limits: DecodeLimits | None = None,
    what: str = "dataset",
) -> list[VideoEntry]:
    """Drop (with a warning) or refuse missing and undecodable videos.

    Args:
        entries: Videos to check.
        strict: Raise instead of skipping.
        workers: Probe threads.
        limits: Decode limits a video must satisfy.
        what: Name of the split in messages (e.g. ``"train split 1"``).

    Returns:
        The usable entries, in order.

    Raises:
        UnusableVideosError: With ``strict=True``, if any video is unusable (listing them).
        EmptySplitError: If no usable video is left.
    """
    report = scan_videos(entries, workers=workers, limits=limits)
    if report.bad:
        lines = [f"{e.path} ({reason})" for e, reason in report.bad]
        message = (
            f"{len(report.bad)} of {len(entries)} videos in {what} are unusable:\n"
            + _listing(lines)
        )
        if strict:
            raise UnusableVideosError(message, [(e.path, r) for e, r in report.bad])
        logger.warning("%s\nskipping them", message)
    if not report.ok:
        raise EmptySplitError(f"{what} has no usable videos ({len(entries)} listed, all unusable)")
    return report.ok


# --------------------------------------------------------------------------- torch datasets


class VideoItem(NamedTuple):
    """One video-level item: all inputs of a video."""

    clips: torch.Tensor  # (N, 3, L, h, w)
    label: int
    # Position of the video in the dataset; the name shadows tuple.index, as released.
    index: int  # type: ignore[assignment]


class ClipItem(NamedTuple):
    """One clip-level item: a single input of a video."""

    clip: torch.Tensor  # (3, L, h, w)
    label: int
    # Position of the video in the dataset's entries; shadows tuple.index, as released.
    index: int  # type: ignore[assignment]


class VideoBatch(NamedTuple):
    """Several videos' clips flattened into one batch by :func:`collate_videos`."""

    clips: torch.Tensor  # (sum N_i, 3, L, h, w)
    clip_video: torch.Tensor  # (sum N_i,) int64: which video of the batch (0..B-1) a clip is
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64: dataset positions of the videos


class _VideoSource(Dataset):
    """Shared decode -> sample -> tensor path and failure handling of the two datasets."""

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        *,
        spec: VariantSpec,
        train: bool = False,
        hflip: bool = False,
        augment: Augment | None = None,
        max_clips: int | None = None,
        seed: int = 0,
        limits: DecodeLimits | None = None,
        decode_threads: int = 1,
        skip_errors: bool = True,
    ) -> None:
        self.entries = list(entries)
        self.spec = spec
        self.train = train
        self.hflip = hflip
        self.augment = augment
        self.max_clips = max_clips or None
        self.seed = seed
        self.limits = limits
        self.decode_threads = decode_threads
        self.skip_errors = skip_errors
        self.epoch = 0
        self.failures: dict[Path, str] = {}

    def set_epoch(self, epoch: int) -> None:
        """Change the training randomness per epoch (like ``DistributedSampler.set_epoch``).

        Workers see it only when the DataLoader starts them after the call (the default,
        non-persistent workers).
        """
        self.epoch = epoch

    def _rng(self, *key: int) -> np.random.Generator | None:
        # Training draws depend on (seed, epoch, item) only, so they do not change with the
        # number of workers; evaluation passes None so samplers behave exactly as in serving.
        return np.random.default_rng([self.seed, self.epoch, *key]) if self.train else None

    def _decode(self, entry: VideoEntry) -> np.ndarray:
        frames, _ = decode_for(
            entry.path, self.spec, limits=self.limits, threads=self.decode_threads
        )
        return frames

    def _indices(self, frames: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        return sample_video(
            frames, self.spec, train=self.train, rng=rng, max_inputs=self.max_clips or 0
        )

    def _tensor(
        self, frames: np.ndarray, idx: np.ndarray, rng: np.random.Generator | None
    ) -> torch.Tensor:
        return inputs_from_indices(
            frames,
            idx,
            self.spec,
            train=self.train,
            rng=rng,
            hflip=self.hflip,
            augment=self.augment,
        )

    def __len__(self) -> int:
        raise NotImplementedError

    def _entry_of(self, item: int) -> VideoEntry:
        raise NotImplementedError

    def _load(self, item: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, item: int) -> Any:
        n = len(self)
        if not -n <= item < n:
            raise IndexError(f"item {item} out of range for {n} items")
        item %= n
        for attempt in range(n):
            current = (item + attempt) % n
            path = self._entry_of(current).path
            if path in self.failures:
                continue  # already reported in this process; do not decode it again
            try:
                return self._load(current)
            except (VideoError, OSError) as err:
                if not self.skip_errors:
                    raise VideoLoadError(path, str(err)) from err
                self.failures[path] = f"{type(err).__name__}: {err}"
                logger.warning(
                    "skipping unreadable video %s (%s: %s); %d failed so far in this process",
                    path,
                    type(err).__name__,
                    err,
                    len(self.failures),
                )
        raise RuntimeError(f"no readable video left in this dataset ({n} items tried)")


class VideoDataset(_VideoSource):
    """Video-level items: every input of one video, as picked by the family's sampler.

    ``dataset[i]`` is a :class:`VideoItem` ``(clips (N, 3, L, h, w), label, i)``. Long
    videos are capped to ``max_clips`` evenly spaced inputs. Batch with
    :func:`collate_videos`.

    Args:
        entries: The videos.
        spec: The model's variant spec: decode size, crop, sampler and normalisation, as
            :mod:`models.pipeline` applies them in evaluation and serving.
        train: Training randomness (sampler, crop, flip), seeded by ``(seed, epoch, item)``.
        hflip: Random horizontal flip in training; never for direction classes.
        augment: Training augmentation (:mod:`video.augment`), one draw per item.
        max_clips: Cap on inputs per video (``None``/0: no cap).
        seed: Base seed of the training randomness.
        limits: Decode limits.
        decode_threads: FFmpeg threads per decode (1 suits DataLoader workers).
        skip_errors: Replace a video that fails to load by the next one (logged and counted
            in ``failures``) instead of raising :class:`VideoLoadError`.
    """

    def __len__(self) -> int:
        return len(self.entries)

    def _entry_of(self, item: int) -> VideoEntry:
        return self.entries[item]

    def _load(self, item: int) -> VideoItem:
        entry = self.entries[item]
        frames = self._decode(entry)
        rng = self._rng(item)
        clips = self._tensor(frames, self._indices(frames, rng), rng)
        return VideoItem(clips, entry.label, item)


class ClipDataset(_VideoSource):
    """Clip-level items: one input of one video per item.

    Two modes:

    * ``"random"`` (for training): ``clips_per_video`` items per video; each draws one of the
      video's inputs uniformly at random, anew every epoch (:meth:`set_epoch`). Needs no
      frame counts up front. In evaluation (``train=False``) the draw is seeded by the item.
    * ``"all"``: one item per ``(video, input)`` pair: an epoch visits every input of every
      video once (under ``max_clips``, the inputs a :class:`VideoDataset` gives the video),
      in the order the sampler shuffles the pairs across videos. In training the sampler's
      draw (e.g. its temporal offset) is made once per video and epoch, so the items of one
      video are the inputs of one draw. Input counts come from ``frame_counts`` or from
      probing each file (the container's frame estimate); should a video decode to fewer
      inputs than counted, its surplus items repeat its last input.

    ``dataset[k]`` is a :class:`ClipItem` ``(clip (3, L, h, w), label, video index)``; the
    default torch collate stacks them. Other arguments as in :class:`VideoDataset`.
    """

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        *,
        mode: str = "random",
        clips_per_video: int = 1,
        frame_counts: Sequence[int] | None = None,
        probe_workers: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(entries, **kwargs)
        if mode not in ("random", "all"):
            raise ValueError(f"mode must be 'random' or 'all', got {mode!r}")
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.mode = mode
        self.clips_per_video = clips_per_video
        self.pairs: list[tuple[int, int]] = []
        if mode == "all":
            if frame_counts is None:
                counts = self._probe_counts(probe_workers)
            else:
                counts = list(frame_counts)
            if len(counts) != len(self.entries):
                raise ValueError(f"{len(counts)} frame counts for {len(self.entries)} videos")
            for v, count in enumerate(counts):
                n = self._num_inputs(count)
                self.pairs.extend((v, j) for j in range(n))

    def _probe_counts(self, workers: int) -> list[int]:
        def count(entry: VideoEntry) -> int:
            try:
                declared = probe_video(entry.path, limits=self.limits).frame_count
                # 0 means the container declares no count: decode to find out.
                return declared or len(self._decode(entry))
            except (VideoError, OSError):
                return 1  # one item, which fails (and is reported) when loaded

        if workers > 1 and len(self.entries) > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(count, self.entries))
        return [count(e) for e in self.entries]

    def _num_inputs(self, num_frames: int) -> int:
        # Samplers other than ``pz`` only look at the length, and ``pz`` gives a fixed
        # number of walks, so a blank video of the right length counts the inputs.
        blank = np.zeros((max(1, num_frames), 1, 1, 3), dtype=np.uint8)
        return len(self._indices(blank, None))

    def __len__(self) -> int:
        if self.mode == "all":
            return len(self.pairs)
        return len(self.entries) * self.clips_per_video

    def _video_of(self, item: int) -> tuple[int, int | None]:
        if self.mode == "all":
            return self.pairs[item]
        return item // self.clips_per_video, None

    def _entry_of(self, item: int) -> VideoEntry:
        return self.entries[self._video_of(item)[0]]

    def _load(self, item: int) -> ClipItem:
        video, which = self._video_of(item)
        entry = self.entries[video]
        frames = self._decode(entry)
        rng = self._rng(item)
        if which is None:
            idx = self._indices(frames, rng)
            pick = np.random.default_rng([self.seed, item]) if rng is None else rng
            which = int(pick.integers(len(idx)))
        else:
            idx = self._indices(frames, self._rng(video, 1))  # one draw per video and epoch
            which = min(which, len(idx) - 1)
        clip = self._tensor(frames, idx[which : which + 1], rng)[0]
        return ClipItem(clip, entry.label, video)


def collate_videos(batch: Sequence[VideoItem]) -> VideoBatch:
    """Concatenate the clips of several videos into one flat batch.

    Args:
        batch: :class:`VideoItem` s, possibly with different clip counts ``N_i``.

    Returns:
        :class:`VideoBatch` with ``clips (sum N_i, 3, L, h, w)``, ``clip_video`` (the
        batch position 0..B-1 of each clip's video), ``labels (B,)`` and ``indices (B,)``.

    Raises:
        ValueError: For an empty batch, or clips of different shapes (e.g. whole videos of
            different lengths: use batch size 1 or a fixed-length sampler).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(item[0].shape[1:]) for item in batch}
    if len(shapes) > 1:
        raise ValueError(f"videos in one batch have different clip shapes {sorted(shapes)}")
    clips = torch.cat([item[0] for item in batch])
    counts = torch.tensor([len(item[0]) for item in batch])
    clip_video = torch.repeat_interleave(torch.arange(len(batch)), counts)
    labels = torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)
    indices = torch.tensor([int(item[2]) for item in batch], dtype=torch.int64)
    return VideoBatch(clips, clip_video, labels, indices)
