"""What differs between the four families during training, and nothing else.

The loop in :mod:`training.run` is family-agnostic; a :class:`Task` supplies the model's
constructor kwargs, the effective sampler/aggregator settings (the bundle records them), the
training batches, and the loss. Evaluation always goes through :mod:`training.evaluate`, i.e.
the service's own decode -> sampler -> network -> aggregator path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from models.registry import get_spec
from models.spec import VariantSpec
from training.config import TrainConfig
from training.datasets import ClipDataset, VideoDataset, VideoEntry, collate_videos
from training.losses.attention import attention_lstm_loss
from training.losses.npair import npair_batches, npair_loss
from training.losses.vll import clip_ce_loss, vll_loss

__all__ = ["Task", "make_task", "Batch"]


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


def _collate_clips(items: list[Any]) -> Batch:
    return Batch(torch.stack([it.clip for it in items]), torch.tensor([it.label for it in items]))


def _collate_videos(items: list[Any]) -> Batch:
    vb = collate_videos(items)
    return Batch(vb.clips, vb.labels, vb.clip_video)


def _collate_padded_videos(items: list[Any]) -> Batch:
    """Whole videos of different lengths: pad each to the longest by repeating its last
    frame (paper 003 section 4), then stack as ``(B, 3, T, h, w)``."""
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
    """Family-specific pieces of a training run (base: classifier families)."""

    family: str = ""

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

    def build_only_kwargs(self) -> dict[str, Any]:
        """Kwargs used to build for training only (e.g. a local pretrained file)."""
        return {}

    def spec(self) -> VariantSpec:
        """The effective variant spec: the registered one with the run's overrides."""
        return self.base

    # ---- data
    def video_level(self) -> bool:
        return True

    def train_dataset(self, entries: Sequence[VideoEntry]) -> Dataset:
        spec = self.spec()
        if self.video_level():
            return VideoDataset(
                entries, spec=spec, train=True, max_clips=self.cfg.max_clips, seed=self.cfg.seed
            )
        return ClipDataset(entries, spec=spec, train=True, mode="random", seed=self.cfg.seed)

    def collate(self, items: list[Any]) -> Batch:
        return _collate_videos(items) if self.video_level() else _collate_clips(items)

    def loader(
        self, dataset: Dataset, entries: Sequence[VideoEntry], rank: int, world: int, workers: int
    ) -> tuple[DataLoader, Any]:
        """A loader whose order depends on (seed, epoch) only; returns it and the object
        whose ``set_epoch`` must be called each epoch."""
        sampler = DistributedSampler(
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
    """c3d_vll: clip-level CE, or video-level CE with CCL-euclidean / -error / full (paper 000)."""

    family = "c3d_vll"

    def spec(self) -> VariantSpec:
        return _consecutive_spec(self.base, self.cfg)

    def video_level(self) -> bool:
        return self.cfg.level == "video"

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits = model(batch.inputs)
        if not self.video_level():
            loss = clip_ce_loss(logits, batch.labels)
            return loss, {"ce": float(loss.detach())}
        loss = vll_loss(
            logits, batch.input_video, batch.labels, ccl=self.cfg.ccl, alpha=self.cfg.alpha
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

    def build_only_kwargs(self) -> dict[str, Any]:
        return {"vgg_weights": self.cfg.vgg_weights} if self.cfg.vgg_weights else {}

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
    """ms3d: N-pair batches of one p(z) walk per video; the repository is built afterwards."""

    family = "ms3d"

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
        return d.replace(pathways=pathways, sampler_kwargs=kw)

    def train_dataset(self, entries: Sequence[VideoEntry]) -> Dataset:
        spec = self.spec()
        one_walk = spec.replace(sampler_kwargs={**spec.sampler_kwargs, "walks": 1})
        return VideoDataset(entries, spec=one_walk, train=True, seed=self.cfg.seed)

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


class FullVideoTask(Task):
    """full_video: every frame (or TSM-k sub-sampling), clustering inside the network."""

    family = "full_video"

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
        return VideoDataset(entries, spec=self.spec(), train=True, seed=self.cfg.seed)

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
