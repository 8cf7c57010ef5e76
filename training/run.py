"""``python -m training.run``: train a recognizer, evaluate it, write a model bundle.

Reads top to bottom: config, distributed setup, data, model, optimizer, loop, save. What a
family does differently (its split of the dataset, model kwargs, batches, loss, evaluation
and additions to the bundle) lives in its :class:`~training.tasks.Task`.
Distribution comes only from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); one process is the same code path with a world of one. Only rank 0 logs,
evaluates and writes.

Examples:
    python -m training.run --family FAMILY --data data/move4digits --out store
    torchrun --nproc_per_node=2 -m training.run --family FAMILY --data DIR --out store
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from models.bundle import write_bundle
from models.fileio import atomic_write
from models.pipeline import Forward
from models.registry import create_model
from models.stream import stages_for
from training.config import TrainConfig, parse_config
from training.datasets import load_dataset, validate_entries
from training.init import init_from_bundle
from training.pretrained import load_pretrained, pretrained_path
from training.schedule import schedule_for, set_lr
from training.tasks import Batch, DataSplit, Task, make_task

__all__ = [
    "CHECKPOINT_FILE",
    "channels_last_for",
    "main",
    "make_optimizer",
    "mixed_precision",
    "to_channels_last",
    "to_device",
    "train",
    "train_step",
]

log = logging.getLogger("training")

# The resume checkpoint in OUT/NAME/ while a run is unfinished; removed once the bundle is
# written (it is no part of the bundle).
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_flag: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_flag)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local_rank, device)


def _barrier(ctx: _Dist) -> None:
    if ctx.world > 1:
        dist.barrier()


def _seed_all(*key: int) -> None:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _limit_and_validate(cfg: TrainConfig, data: DataSplit) -> DataSplit:
    """``data`` cut to ``limit_train`` / ``limit_test`` videos, unusable videos dropped (or
    refused with ``strict``)."""
    train_entries, test_entries = data.train, data.test
    if cfg.limit_train:
        train_entries = train_entries[: cfg.limit_train]
    if cfg.limit_test:
        test_entries = test_entries[: cfg.limit_test]
    train_entries = validate_entries(train_entries, strict=cfg.strict, what="training split")
    if test_entries:
        test_entries = validate_entries(test_entries, strict=cfg.strict, what="test split")
    calibration = data.calibration
    if calibration:
        calibration = validate_entries(calibration, strict=cfg.strict, what="calibration split")
    return dataclasses.replace(
        data, train=train_entries, test=test_entries, calibration=calibration
    )


def _data_path(cfg: TrainConfig, path: Path) -> str:
    """``path`` relative to the dataset when it lies inside it (so a manifest does not depend
    on where the dataset sat), else as given."""
    root = Path(cfg.data)
    root = root if root.is_dir() else root.parent
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def mixed_precision(
    cfg: TrainConfig, device: torch.device
) -> tuple[Any, torch.amp.GradScaler | None]:
    """An autocast context factory and, for fp16, a gradient scaler (CUDA with ``amp`` only:
    bf16 where the GPU supports it, else fp16 + scaler; a no-op elsewhere)."""
    if not (cfg.amp and device.type == "cuda"):
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def channels_last_for(task: Task, device: torch.device) -> bool:
    """Whether the loop stores the model and inputs channels-last 3D: on CUDA for the tasks
    that ask for it (:attr:`Task.channels_last_3d`, the pure-3D-conv families)."""
    return device.type == "cuda" and task.channels_last_3d


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its parameters and buffers stored channels-last 3D."""
    # Module.to takes memory_format at run time; torch's stubs list only its other overloads.
    to: Callable[..., nn.Module] = model.to
    return to(memory_format=torch.channels_last_3d)


def to_device(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    """The batch on ``device`` (asynchronous from pinned memory), optionally channels-last 3D."""
    inputs = batch.inputs.to(device, non_blocking=True)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
    return Batch(
        inputs,
        batch.labels.to(device, non_blocking=True),
        None if batch.input_video is None else batch.input_video.to(device, non_blocking=True),
    )


def train_step(
    net: nn.Module,
    task: Any,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    autocast: Any,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float = 0.0,
    where: str = "",
) -> tuple[Tensor, dict[str, float]]:
    """One optimisation step: the task's loss under ``autocast``, backward (scaled for fp16),
    optional gradient clipping, update. Returns the detached loss and the loss parts; a
    non-finite loss stops the run before it reaches the weights."""
    with autocast():
        loss, parts = task.loss(net, batch)
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at {where or 'this step'}")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), parts


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    step: int,
    history: list[dict[str, Any]],
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "step": step,
        "history": json.dumps(history),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
) -> tuple[int, int, list[dict[str, Any]]]:
    """Restore model, optimizer and scaler; returns the next epoch, the step and the history."""
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1, int(state["step"]), json.loads(state["history"])


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    # Append-only log: a torn last line is the worst an interruption can do, and the
    # complete history is also kept in the checkpoint.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _forward_fn(model: nn.Module, device: torch.device) -> Forward:
    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device))

    return forward


@contextlib.contextmanager
def _evaluating(model: nn.Module, device: torch.device) -> Iterator[Forward]:
    """The model in eval mode as a :data:`~models.pipeline.Forward`; back to train mode after."""
    model.eval()
    try:
        yield _forward_fn(model, device)
    finally:
        model.train()


def _evaluate(
    task: Task, model: nn.Module, data: DataSplit, device: torch.device, show: bool
) -> dict[str, Any]:
    """Rank 0 evaluation through the service's path (the task's figures)."""
    with _evaluating(model, device) as forward:
        return task.evaluate(forward, data, stages=stages_for(model, device), progress=show)


def train(cfg: TrainConfig) -> Path | None:
    """Run one training job; returns the bundle directory on rank 0 (``None`` elsewhere, or
    when ``stop_after`` ended the invocation early)."""
    # ---- distributed setup
    ctx = _setup_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    logging.basicConfig(
        level=logging.INFO if ctx.main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    show = cfg.progress and ctx.main and sys.stderr.isatty()

    # ---- data
    splits = load_dataset(cfg.data, split=cfg.split)
    task = make_task(cfg, splits.classes)
    data = _limit_and_validate(cfg, task.split(splits))
    spec = task.spec()

    name = cfg.name or f"{task.model_name}-{Path(cfg.data.rstrip('/')).stem}"
    bundle_dir = Path(cfg.out) / name
    ckpt_path = bundle_dir / CHECKPOINT_FILE
    metrics_path = bundle_dir / METRICS_FILE
    if ctx.main:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "%s: %d train / %d test videos, %d classes, model %s -> %s",
            cfg.family,
            len(data.train),
            len(data.test),
            len(splits.classes),
            task.model_name,
            bundle_dir,
        )

    # ---- model
    _seed_all(cfg.seed, 0)
    model_kwargs = task.model_kwargs()
    model = create_model(task.model_name, spec=spec, **model_kwargs)
    init_record: dict[str, Any] | None = None
    pretrained_record: dict[str, Any] | None = None
    if pretrained := pretrained_path(cfg):
        pretrained_record = load_pretrained(model, task, pretrained)
    if cfg.init_from:
        init_record = init_from_bundle(
            model, task, spec, model_kwargs, cfg.init_from, backbone_only=cfg.init_backbone_only
        )
    model = model.to(ctx.device)
    channels_last = channels_last_for(task, ctx.device)
    if channels_last:
        model = to_channels_last(model)
    net: nn.Module = model
    if ctx.world > 1:
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    # ---- optimizer, data loader
    optimizer = make_optimizer(cfg, model)
    autocast, scaler = mixed_precision(cfg, ctx.device)
    dataset = task.train_dataset(data.train)
    loader, epoch_sampler = task.loader(dataset, data.train, ctx.rank, ctx.world, cfg.workers)
    steps_per_epoch = len(loader)
    lr_of = schedule_for(cfg, total_steps=steps_per_epoch * cfg.epochs)

    # ---- resume
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    if cfg.resume and ckpt_path.is_file():
        start_epoch, step, history = _load_checkpoint(
            ckpt_path, model, optimizer, scaler, ctx.device
        )
        if ctx.main:
            log.info("resuming after epoch %d (step %d) from %s", start_epoch, step, ckpt_path)
    elif ctx.main:
        metrics_path.unlink(missing_ok=True)

    # ---- loop
    started = time.time()
    last_eval: dict[str, Any] = history[-1].get("eval", {}) if history else {}
    stop_at = min(cfg.epochs, start_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
    epochs: Iterable[int] = range(start_epoch, stop_at)
    if show:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="epochs", unit="epoch", initial=start_epoch, total=cfg.epochs)
    for epoch in epochs:
        _seed_all(cfg.seed, epoch + 1, ctx.rank)  # dropout etc. depend on (seed, epoch, rank) only
        epoch_sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        net.train()
        totals: dict[str, float] = {}
        seen = 0
        bar = None
        batches: Iterable[Batch] = loader
        if show:
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch")
            batches = bar
        t0 = time.time()
        for batch in batches:
            lr = lr_of(step)
            set_lr(optimizer, lr)
            batch = to_device(batch, ctx.device, channels_last)
            loss, parts = train_step(
                net,
                task,
                batch,
                optimizer,
                autocast=autocast,
                scaler=scaler,
                grad_clip=cfg.grad_clip,
                where=f"epoch {epoch + 1}, step {step}",
            )
            step += 1
            seen += len(batch.inputs)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": lr_of(max(0, step - 1)),
            "train": {k: v / max(1, steps_per_epoch) for k, v in totals.items()},
            "inputs_per_s": seen * ctx.world / max(1e-9, time.time() - t0),
        }
        if ctx.main and (epoch + 1 == cfg.epochs or (epoch + 1) % max(1, cfg.eval_every) == 0):
            last_eval = _evaluate(task, model, data, ctx.device, show)
            record["eval"] = last_eval
        history.append(record)
        if ctx.main:
            _append_jsonl(metrics_path, record)
            _save_checkpoint(ckpt_path, model, optimizer, scaler, epoch, step, history)
            summary = " ".join(f"{k}={v:.4f}" for k, v in record["train"].items())
            top1 = f" top1={last_eval.get('top1', float('nan')):.3f}" if "eval" in record else ""
            log.info(
                "epoch %d/%d %s%s (%.1f inputs/s)",
                epoch + 1,
                cfg.epochs,
                summary,
                top1,
                record["inputs_per_s"],
            )
        _barrier(ctx)

    if stop_at < cfg.epochs:
        if ctx.main:
            log.info(
                "stopped after epoch %d of %d as asked; continue with --resume", stop_at, cfg.epochs
            )
        return None

    # ---- save the bundle
    out: Path | None = None
    if ctx.main:
        if not last_eval:
            last_eval = _evaluate(task, model, data, ctx.device, show)
        with _evaluating(model, ctx.device) as forward:
            additions = task.finish(bundle_dir, forward, data, progress=show)
        metrics = {**last_eval, **additions.metrics}
        extra: dict[str, Any] = {
            "files": list(additions.files),
            "training": {
                "wall_time_s": time.time() - started,
                "world_size": ctx.world,
                "train_videos": len(data.train),
                "test_videos": len(data.test),
                "held_out_classes": list(data.held_out),
                "calibration_videos": [_data_path(cfg, e.path) for e in data.calibration],
                "init_from": init_record,
                "pretrained": pretrained_record,
            },
        }
        write_bundle(
            bundle_dir,
            model=model,
            model_name=task.model_name,
            model_kwargs=model_kwargs,
            family=cfg.family,
            labels=additions.labels,
            spec=additions.spec or spec,
            config=dataclasses.asdict(cfg),
            metrics=metrics,
            extra=extra,
        )
        # The run is complete: the resume checkpoint (optimizer state, about 3x the weights)
        # is no part of the bundle.
        ckpt_path.unlink(missing_ok=True)
        log.info("bundle written to %s (top1 %.3f)", bundle_dir, metrics.get("top1", float("nan")))
        out = bundle_dir
    _barrier(ctx)
    if ctx.world > 1:
        dist.destroy_process_group()
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
