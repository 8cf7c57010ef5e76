"""What differs between the four families during training, and nothing else.

The loop in :mod:`training.run` is family-agnostic; a :class:`Task` supplies the model's
constructor kwargs, the effective variant spec (the bundle records it), the split of the
dataset into what is trained and evaluated on, the training batches, the loss, the evaluation
figures and the family's additions to the bundle. Evaluation always goes through
:mod:`training.evaluate`, i.e. the service's own decode -> sampler -> network -> aggregator
path.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from models.attention_lstm import AttentionLSTM
from models.bundle import REPOSITORY_FILE, TAILOR_BOXES_FILE
from models.fileio import atomic_write
from models.full_video import FullVideoNet
from models.pipeline import Forward
from models.registry import get_spec
from models.repository import Repository, calibrate_gamma, in_class_distances
from models.spec import VariantSpec
from models.stream import WholeVideoStages, stream_outputs
from models.tailor import DEFAULT_BAND, tailor_settings
from models.weights import LoadReport
from training.config import TrainConfig
from training.datasets import (
    ClipDataset,
    DatasetSplits,
    VideoDataset,
    VideoEntry,
    collate_videos,
    validate_entries,
)
from training.evaluate import VideoOutcome, evaluate_videos
from training.losses.attention import attention_lstm_loss
from training.losses.npair import npair_batches, npair_loss
from training.losses.vll import clip_ce_loss, vll_loss
from video.augment import Augment
from video.errors import VideoError

__all__ = ["Batch", "BundleParts", "DataSplit", "Task", "calibration_split", "make_task"]

log = logging.getLogger("training")

# Per video its (P, D) walk embeddings, and the videos' labels.
_Embedded = tuple[list[np.ndarray], list[int]]


@dataclass
class Batch:
    """One training batch on the device.

    Attributes:
        inputs: ``(B, 3, L, h, w)`` network inputs.
        labels: Label per input (clip-level) or per video (video-level).
        input_video: ``(B,)`` which video of the batch each input belongs to (video-level).
    """

    inputs: Tensor
    labels: Tensor
    input_video: Tensor | None = None


@dataclass(frozen=True)
class DataSplit:
    """The videos one run trains and evaluates on, as :meth:`Task.split` divides a dataset.

    Attributes:
        train: Training entries.
        test: Test entries.
        held_out: Names of the classes kept out of training (ms3d's open-set protocol).
        held_out_train: The held-out classes' training entries, kept from the one split of the
            dataset for what the task does with them after training (:meth:`Task.finish`).
        calibration: Training-list entries set aside before training and never trained on
            (ms3d calibrates gamma on them); disjoint from ``train``.
    """

    train: list[VideoEntry]
    test: list[VideoEntry]
    held_out: list[str] = field(default_factory=list)
    held_out_train: list[VideoEntry] = field(default_factory=list)
    calibration: list[VideoEntry] = field(default_factory=list)


@dataclass(frozen=True)
class BundleParts:
    """What a task adds to the bundle after training (:meth:`Task.finish`).

    Attributes:
        labels: The bundle's class names in index order.
        files: Files the task wrote into the bundle directory (checksummed in the manifest).
        metrics: Figures to add to the manifest's final metrics.
        spec: The spec the bundle records when it differs from the run's (files it names
            given relative to the bundle); ``None``: the run's.
    """

    labels: list[str]
    files: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    spec: VariantSpec | None = None


def _collate_clips(items: list[Any]) -> Batch:
    return Batch(torch.stack([it.clip for it in items]), torch.tensor([it.label for it in items]))


def _collate_videos(items: list[Any]) -> Batch:
    vb = collate_videos(items)
    return Batch(vb.clips, vb.labels, vb.clip_video)


def _collate_padded_videos(items: list[Any]) -> Batch:
    """Whole videos of different lengths: pad each to the longest by repeating its last
    frame (Liu et al., "No frame left behind", CVPR 2021, Section 4), then stack as
    ``(B, 3, T, h, w)``."""
    longest = max(it.clips.shape[2] for it in items)
    padded = []
    for it in items:
        clip = it.clips[0]
        if clip.shape[1] < longest:
            tail = clip[:, -1:].expand(-1, longest - clip.shape[1], -1, -1)
            clip = torch.cat([clip, tail], dim=1)
        padded.append(clip)
    return Batch(torch.stack(padded), torch.tensor([it.label for it in items]))


class _EpochBatches(Sampler[list[int]]):
    """Pre-drawn index batches per epoch (N-pair batches), split across ranks."""

    def __init__(
        self, labels: Sequence[int], n_classes: int, seed: int, rank: int, world: int
    ) -> None:
        self.labels, self.n_classes = np.asarray(labels), n_classes
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self._count = max(1, len(self.labels) // (2 * n_classes))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        batches = npair_batches(
            self.labels, self.n_classes, rng, num_batches=self._count * self.world
        )
        for b in batches[self.rank :: self.world]:
            yield b.reshape(-1).tolist()

    def __len__(self) -> int:
        return self._count


class Task:
    """Family-specific pieces of a training run (base: classifier families).

    ``classes`` are the dataset's class names in label order; :meth:`split` says which of
    them are trained on.
    """

    family: ClassVar[str] = ""
    #: Whether, on CUDA, the loop stores the model and inputs channels-last 3D (cuDNN's NDHWC
    #: kernels are faster for the pure-3D-convolution families).
    channels_last_3d: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, classes: Sequence[str]) -> None:
        self.cfg = cfg
        self.classes = list(classes)
        self.model_name = cfg.resolved_model()
        self.base = get_spec(self.model_name)
        if self.base.family != cfg.family:
            raise ValueError(
                f"model {self.model_name!r} is a {self.base.family} model, not {cfg.family}"
            )

    # ---- model
    def model_kwargs(self) -> dict[str, Any]:
        """Network kwargs recorded in the bundle (the clip shape comes from :meth:`spec`)."""
        return {"num_classes": len(self.classes), **self.cfg.model_kwargs}

    #: What ``--pretrained`` takes for this family; empty: nothing (no standard backbone).
    pretrained_backbone: ClassVar[str] = ""

    def load_pretrained(self, model: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
        """Load ImageNet backbone weights (``--pretrained``) into the freshly built ``model``;
        the report names keys as ``model.state_dict()`` does.

        Raises:
            ValueError: The family has no standard backbone.
            models.weights.WeightsMismatch: The weights do not fit, with the keys listed.
        """
        raise ValueError(
            f"{self.family} has no standard ImageNet backbone to start from; --pretrained "
            "takes a ResNet-18/50 (full_video) or a VGG16 (attention_lstm); start from an "
            "earlier bundle with --init-from instead"
        )

    def spec(self) -> VariantSpec:
        """The effective variant spec: the registered one with the run's overrides."""
        return self.base

    # ---- data
    def split(self, splits: DatasetSplits) -> DataSplit:
        """What the run trains and evaluates on (base: the dataset's train and test split)."""
        return DataSplit(list(splits.train), list(splits.test))

    def video_level(self) -> bool:
        return True

    def augment(self) -> Augment | None:
        """The training augmentation (``--augment``), or ``None``."""
        return Augment(crop_scale=self.cfg.augment_crop) if self.cfg.augment else None

    def train_dataset(self, entries: Sequence[VideoEntry]) -> Dataset:
        spec = self.spec()
        if self.video_level():
            return VideoDataset(
                entries,
                spec=spec,
                train=True,
                max_clips=self.cfg.max_clips,
                seed=self.cfg.seed,
                augment=self.augment(),
            )
        # Every input of every video once per epoch, shuffled across videos: the inputs a
        # video-level run of the same config sees, so the two differ in the loss only.
        return ClipDataset(
            entries,
            spec=spec,
            train=True,
            mode="all",
            max_clips=self.cfg.max_clips,
            seed=self.cfg.seed,
            augment=self.augment(),
        )

    def collate(self, items: list[Any]) -> Batch:
        return _collate_videos(items) if self.video_level() else _collate_clips(items)

    def loader(
        self, dataset: Dataset, entries: Sequence[VideoEntry], rank: int, world: int, workers: int
    ) -> tuple[DataLoader, Any]:
        """A loader whose order depends on (seed, epoch) only; returns it and the object
        whose ``set_epoch`` must be called each epoch."""
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=False,
        )
        loader = DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
            persistent_workers=False,
        )
        return loader, sampler

    # ---- loss
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch.inputs)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.cfg.label_smoothing)
        return loss, {"ce": float(loss.detach())}

    # ---- evaluation and bundle (rank 0, ``forward`` runs the model in eval mode)
    def evaluate(
        self,
        forward: Forward,
        data: DataSplit,
        *,
        stages: WholeVideoStages | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """The evaluation figures of the model behind ``forward`` (base: the test split
        through :func:`training.evaluate.evaluate_videos`; ``stages``: the model's
        early/late split where it has one, for the streamed whole-video path)."""
        summary, _ = evaluate_videos(
            forward,
            [(e.path, e.label) for e in data.test],
            self.spec(),
            len(self.classes),
            batch_size=self.cfg.batch_size,
            max_inputs=self.cfg.eval_max_clips,
            stages=stages,
            progress=progress,
        )
        return summary

    def finish(
        self, bundle_dir: Path, forward: Forward, data: DataSplit, *, progress: bool = False
    ) -> BundleParts:
        """Write the task's own files into ``bundle_dir`` before the manifest is written, and
        say what else the bundle records (base: no files; the labels are the classes)."""
        return BundleParts(labels=list(self.classes))


def _consecutive_spec(d: VariantSpec, cfg: TrainConfig) -> VariantSpec:
    """The model's consecutive-clip settings with the run's ``clip_len`` / ``clip_stride`` /
    ``frame_step`` overrides; a changed clip shape without an explicit stride keeps clips
    non-overlapping."""
    if not (cfg.clip_len or cfg.clip_stride or cfg.frame_step):
        return d
    kw = dict(d.sampler_kwargs)
    if cfg.frame_step:
        kw["frame_step"] = cfg.frame_step
    if cfg.clip_stride:
        kw["stride"] = cfg.clip_stride
    else:
        kw.pop("stride", None)  # the sampler's default: non-overlapping clips of the new shape
    return d.replace(clip_len=cfg.clip_len or d.clip_len, sampler_kwargs=kw)


class C3DTask(Task):
    """c3d_vll: clip-level CE, or video-level CE with CCL-euclidean / -error / full (Shi et
    al., video-level learning with a consistent constraint loss, EURASIP Journal on Image and
    Video Processing 2020:35)."""

    family = "c3d_vll"
    channels_last_3d = True

    def spec(self) -> VariantSpec:
        return _consecutive_spec(self.base, self.cfg)

    def video_level(self) -> bool:
        return self.cfg.level == "video"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch.inputs)
        if not self.video_level():
            loss = clip_ce_loss(logits, batch.labels)
            return loss, {"ce": float(loss.detach())}
        if batch.input_video is None:
            raise ValueError("a video-level batch needs input_video")
        loss = vll_loss(
            logits,
            batch.input_video,
            batch.labels,
            ccl=self.cfg.ccl,
            alpha=self.cfg.alpha,
            detach_reference=self.cfg.ccl_detach_reference,
        )
        return loss, {"vll": float(loss.detach())}


class AttentionTask(Task):
    """attention_lstm: CE on the LSTM steps + deep supervision + lambda * attention reg."""

    family = "attention_lstm"

    def spec(self) -> VariantSpec:
        d = _consecutive_spec(self.base, self.cfg)
        last = self.cfg.vote_steps or d.aggregator_kwargs.get("last", d.clip_len)
        return d.replace(aggregator_kwargs={**d.aggregator_kwargs, "last": min(last, d.clip_len)})

    def model_kwargs(self) -> dict[str, Any]:
        return {**super().model_kwargs(), "fusion": self.cfg.fusion, "frozen": self.cfg.frozen_vgg}

    pretrained_backbone = "an ImageNet VGG16 (torchvision's vgg16, or vgg16_bn for BatchNorm)"

    def load_pretrained(self, model: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
        # VGG16 fills the pre-conv net; the report names the keys as the whole network does.
        report = cast(AttentionLSTM, model).preconv.load_torchvision_state_dict(state)
        return LoadReport(
            loaded=[f"preconv.{k}" for k in report.loaded],
            skipped=[f"preconv.{k}" for k in report.skipped],
            ignored=report.ignored,
        )

    def video_level(self) -> bool:
        return self.cfg.level == "video"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        out = model(batch.inputs, return_aux=True)
        labels = batch.labels if batch.input_video is None else batch.labels[batch.input_video]
        total, parts = attention_lstm_loss(
            out, labels, lam=self.cfg.lam, ds_weight=self.cfg.ds_weight
        )
        return total, {k: float(v) for k, v in parts.items()}


class MS3DTask(Task):
    """ms3d (the MS3D paper, see :mod:`models.ms3d`): N-pair batches of one p(z) walk per
    video; evaluation is the open-set protocol over a class-centre repository.

    Before training, ``calibration_fraction`` of each known class's training videos is set
    aside (stratified, drawn by the seed): the network never sees them, so the in-class
    distances gamma is calibrated on are those of unseen videos, as at serving time. With
    ``holdout_classes`` > 0 the last classes never reach training or the first repository:
    the repository is built from the known classes' training videos, gamma is calibrated on
    the calibration videos, and the test split gives closed-set accuracy (known classes) and
    open-set rejection (held-out classes). The bundle's repository then gains the held-out
    classes from their training videos, without retraining.
    """

    family = "ms3d"
    channels_last_3d = True

    def __init__(self, cfg: TrainConfig, classes: Sequence[str]) -> None:
        super().__init__(cfg, classes)
        self.rank, self.world = 0, 1

    def model_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(self.cfg.model_kwargs)
        if self.cfg.drop_rate >= 0:
            kw["drop_rate"] = self.cfg.drop_rate
        kw.setdefault("connectivity_seed", self.cfg.seed)
        return kw

    def spec(self) -> VariantSpec:
        d = self.base
        kw = dict(d.sampler_kwargs)
        if self.cfg.walks:
            kw["walks"] = self.cfg.walks
        pathways = tuple(self.cfg.pathway_sizes) if self.cfg.pathway_sizes else d.pathways
        d = d.replace(pathways=pathways, sampler_kwargs=kw)
        if self.cfg.tailor:
            tailor: dict[str, Any] = {
                "boxes": self.cfg.tailor_boxes,
                "eta": self.cfg.tailor_eta,
                "xi": self.cfg.tailor_xi,
                "band": DEFAULT_BAND,
            }
            try:
                tailor_settings(tailor)
            except ValueError as err:
                raise SystemExit(f"--tailor: {err}") from None
            if tailor["boxes"] != "motion" and not Path(tailor["boxes"]).is_file():
                raise SystemExit(f"--tailor-boxes {tailor['boxes']}: no such YOLO ONNX file")
            d = d.replace(tailor=tailor)
        return d

    def split(self, splits: DatasetSplits) -> DataSplit:
        """Hold the last ``holdout_classes`` classes out of training, once (their training
        entries are kept aside for :meth:`finish`), and set the calibration videos aside."""
        held = max(0, self.cfg.holdout_classes)
        if held and held >= len(self.classes) - 1:
            raise SystemExit(
                f"--holdout-classes {held} leaves fewer than two "
                f"known classes out of {len(self.classes)}"
            )
        known = len(self.classes) - held
        train, calibration = calibration_split(
            [e for e in splits.train if e.label < known],
            self.cfg.calibration_fraction,
            self.cfg.seed,
        )
        if not calibration and self.cfg.gamma <= 0:
            raise SystemExit(
                "ms3d needs videos to calibrate gamma on: give --calibration-fraction above 0 "
                "(with at least two training videos per class) or a fixed --gamma"
            )
        return DataSplit(
            train=train,
            test=list(splits.test),
            held_out=self.classes[known:],
            held_out_train=[e for e in splits.train if e.label >= known],
            calibration=calibration,
        )

    def train_dataset(self, entries: Sequence[VideoEntry]) -> Dataset:
        spec = self.spec()
        one_walk = spec.replace(sampler_kwargs={**spec.sampler_kwargs, "walks": 1})
        return VideoDataset(
            entries, spec=one_walk, train=True, seed=self.cfg.seed, augment=self.augment()
        )

    def loader(
        self, dataset: Dataset, entries: Sequence[VideoEntry], rank: int, world: int, workers: int
    ) -> tuple[DataLoader, Any]:
        labels = [e.label for e in entries]
        n_classes = max(2, min(self.cfg.batch_size // 2, len(set(labels))))
        batches = _EpochBatches(labels, n_classes, self.cfg.seed, rank, world)
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=_collate_videos,
            pin_memory=torch.cuda.is_available(),
        )
        return loader, batches

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        emb = model(batch.inputs)
        loss = npair_loss(emb[0::2], emb[1::2], scale=self.cfg.npair_scale)
        return loss, {"npair": float(loss.detach())}

    # ---- the open-set protocol
    def evaluate(
        self,
        forward: Forward,
        data: DataSplit,
        *,
        stages: WholeVideoStages | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Repository from the training videos, gamma, closed-set and open-set figures."""
        return self._open_set(forward, data, progress)[1]

    def finish(
        self, bundle_dir: Path, forward: Forward, data: DataSplit, *, progress: bool = False
    ) -> BundleParts:
        """The final repository, held-out classes included, saved as the bundle's
        :data:`models.bundle.REPOSITORY_FILE`; its class names are the bundle's labels."""
        repo, _ = self._open_set(forward, data, progress)
        metrics: dict[str, Any] = {}
        if data.held_out:
            metrics["all_classes_after_adding_top1"] = self._add_held_out(repo, forward, data)
        repo.save(bundle_dir / REPOSITORY_FILE)
        files, spec = [REPOSITORY_FILE], self.spec()
        boxes = spec.tailor.get("boxes", "motion")
        if boxes != "motion":  # the YOLO file travels in the bundle, named relative to it

            def copy(tmp: Path) -> None:
                shutil.copyfile(boxes, tmp)

            atomic_write(bundle_dir / TAILOR_BOXES_FILE, copy)
            files.append(TAILOR_BOXES_FILE)
            spec = spec.replace(tailor={**spec.tailor, "boxes": TAILOR_BOXES_FILE})
        return BundleParts(labels=list(repo.names), files=files, metrics=metrics, spec=spec)

    def _embed(self, forward: Forward, entries: Sequence[VideoEntry]) -> _Embedded:
        return _embed_entries(forward, entries, self.spec(), self.cfg.batch_size)

    def _open_set(
        self, forward: Forward, data: DataSplit, progress: bool
    ) -> tuple[Repository, dict[str, Any]]:
        """Build the repository of the known classes, set gamma, and measure it."""
        known = len(self.classes) - len(data.held_out)
        centre_entries = _first_per_class(data.train, self.cfg.repo_videos)
        calib_entries = data.calibration
        embeddings, labels = self._embed(forward, centre_entries)
        repo = Repository(dim=embeddings[0].shape[1])
        _add_classes(repo, embeddings, labels, self.classes, range(known))
        calib, calib_labels = self._embed(forward, calib_entries)
        calib_dist = np.empty(0)
        if calib:
            names = [self.classes[lab] for lab in calib_labels]
            calib_dist = in_class_distances(repo, calib, names)
        if self.cfg.gamma > 0:
            repo.gamma = self.cfg.gamma
        elif calib:
            repo.gamma = calibrate_gamma(calib_dist, self.cfg.gamma_percentile)
        figures: dict[str, Any] = {"gamma": repo.gamma}
        figures.update(self._measure(forward, repo, data.test, known, calib_dist, progress))
        return repo, figures

    def _measure(
        self,
        forward: Forward,
        repo: Repository,
        test: Sequence[VideoEntry],
        known: int,
        calib_dist: np.ndarray,
        progress: bool,
    ) -> dict[str, Any]:
        """Closed-set figures and in-class acceptance on the known classes' test videos;
        rejection of the held-out classes' test videos and the gamma sweep."""
        known_test = [(e.path, e.label) for e in test if e.label < known]
        unknown_test = [(e.path, e.label) for e in test if e.label >= known]
        centres = repo.centres_tensor()
        kwargs: dict[str, Any] = {
            "batch_size": self.cfg.batch_size,
            "centres": centres,
            "gamma": repo.gamma,
        }
        spec = self.spec()
        closed, outcomes = evaluate_videos(
            forward, known_test, spec, known, progress=progress, **kwargs
        )
        figures: dict[str, Any] = dict(closed)
        figures["in_class_acceptance"] = (
            float(np.mean([not o.unknown for o in outcomes])) if outcomes else float("nan")
        )
        if not unknown_test:
            return figures
        _, open_outcomes = evaluate_videos(forward, unknown_test, spec, len(self.classes), **kwargs)
        figures["unknown_rejection"] = float(np.mean([o.unknown for o in open_outcomes]))
        figures["unknown_videos"] = len(unknown_test)
        if len(calib_dist):
            figures["open_set_sweep"] = _gamma_sweep(calib_dist, outcomes, open_outcomes)
        return figures

    def _add_held_out(self, repo: Repository, forward: Forward, data: DataSplit) -> float:
        """Add the held-out classes to ``repo`` from their training videos (no retraining);
        returns the top-1 over the whole test split by nearest centre, nothing rejected."""
        known = len(self.classes) - len(data.held_out)
        entries = data.held_out_train
        if entries:
            entries = validate_entries(entries, strict=False, what="held-out classes")
        embeddings, labels = self._embed(forward, entries)
        _add_classes(repo, embeddings, labels, self.classes, range(known, len(self.classes)))
        full, _ = evaluate_videos(
            forward,
            [(e.path, e.label) for e in data.test],
            self.spec(),
            len(repo.names),
            batch_size=self.cfg.batch_size,
            centres=repo.centres_tensor(),
            gamma=math.inf,
        )
        return cast(float, full["top1"])


def _embed_entries(
    forward: Forward, entries: Sequence[VideoEntry], spec: VariantSpec, batch_size: int
) -> _Embedded:
    """Per decodable video its ``(P, D)`` walk embeddings, and the labels; a video that does
    not decode is logged and left out."""
    out: list[np.ndarray] = []
    labels: list[int] = []
    for e in entries:
        try:
            embeddings, _, _ = stream_outputs(e.path, spec, forward, batch_size=batch_size)
        except VideoError as err:
            log.warning("repository skips %s: %s", e.path, err)
            continue
        out.append(embeddings.numpy())
        labels.append(e.label)
    return out, labels


def calibration_split(
    entries: Sequence[VideoEntry], fraction: float, seed: int
) -> tuple[list[VideoEntry], list[VideoEntry]]:
    """``(train, calibration)``: per class, ``round(fraction * n)`` of its ``n`` videos drawn
    at random by ``seed`` (at least one when ``fraction`` > 0, and never all of them: a class
    with one video keeps it for training), the rest for training; both in list order.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the calibration fraction must lie in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        by_class.setdefault(e.label, []).append(i)
    chosen: set[int] = set()
    for label, items in sorted(by_class.items()):
        if fraction <= 0 or len(items) < 2:
            continue
        count = min(len(items) - 1, max(1, round(fraction * len(items))))
        rng = np.random.default_rng([seed, label, 11])
        chosen.update(int(i) for i in rng.choice(items, size=count, replace=False))
    train = [e for i, e in enumerate(entries) if i not in chosen]
    calibration = [e for i, e in enumerate(entries) if i in chosen]
    return train, calibration


def _first_per_class(entries: Sequence[VideoEntry], count: int) -> list[VideoEntry]:
    """The first ``count`` entries of each class (0: all of them), in list order."""
    if count <= 0:
        return list(entries)
    seen: dict[int, int] = {}
    out = []
    for e in entries:
        if seen.get(e.label, 0) < count:
            seen[e.label] = seen.get(e.label, 0) + 1
            out.append(e)
    return out


def _add_classes(
    repo: Repository,
    embeddings: Sequence[np.ndarray],
    labels: Sequence[int],
    classes: Sequence[str],
    which: range,
) -> None:
    """Add each class of ``which`` that has embeddings to ``repo``, in label order."""
    for label in which:
        rows = [emb for emb, lab in zip(embeddings, labels) if lab == label]
        if rows:
            repo.add_class(classes[label], np.concatenate(rows))


def _gamma_sweep(
    calib_dist: np.ndarray, known: Sequence[VideoOutcome], unknown: Sequence[VideoOutcome]
) -> list[dict[str, float]]:
    """The acceptance/rejection trade-off over the gamma percentile, from the nearest-centre
    distances already measured (no extra forward pass)."""
    known_d = np.array([o.nearest for o in known])
    unknown_d = np.array([o.nearest for o in unknown])
    rows = []
    for q in (50.0, 75.0, 90.0, 95.0, 99.0):
        g = calibrate_gamma(calib_dist, q)
        rows.append(
            {
                "percentile": q,
                "gamma": g,
                "in_class_acceptance": float(np.mean(known_d < g)),
                "unknown_rejection": float(np.mean(unknown_d >= g)),
            }
        )
    return rows


class FullVideoTask(Task):
    """full_video: every frame (or TSM-k sub-sampling), clustering inside the network."""

    family = "full_video"

    pretrained_backbone = "an ImageNet ResNet-18 or ResNet-50 (torchvision's or timm's layout)"

    def load_pretrained(self, model: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
        return cast(FullVideoNet, model).load_imagenet_resnet(state)

    def _baseline_variant(self) -> bool:
        # The registered TSM baselines (``*_tsm``, ``*_tsm_all``) fix clustering themselves.
        return "tsm" in self.model_name

    def model_kwargs(self) -> dict[str, Any]:
        kw = super().model_kwargs()
        if self._baseline_variant():
            return kw
        kw["clustering"] = "none" if self.cfg.tsm_frames else self.cfg.clustering
        return kw

    def spec(self) -> VariantSpec:
        d = self.base
        if self._baseline_variant() and not self.cfg.tsm_frames:
            return d
        if self.cfg.tsm_frames:
            return d.replace(sampler="uniform", segments=self.cfg.tsm_frames)
        if self.cfg.clustering == "none":
            return d.replace(sampler="all", segments=1)
        return d.replace(sampler="all", segments=self.cfg.num_clusters or d.segments)

    def train_dataset(self, entries: Sequence[VideoEntry]) -> Dataset:
        return VideoDataset(
            entries, spec=self.spec(), train=True, seed=self.cfg.seed, augment=self.augment()
        )

    def collate(self, items: list[Any]) -> Batch:
        return _collate_padded_videos(items)


_TASKS: dict[str, type[Task]] = {
    "c3d_vll": C3DTask,
    "attention_lstm": AttentionTask,
    "ms3d": MS3DTask,
    "full_video": FullVideoTask,
}


def make_task(cfg: TrainConfig, classes: Sequence[str]) -> Task:
    """The :class:`Task` of ``cfg.family``."""
    return _TASKS[cfg.family](cfg, classes)
