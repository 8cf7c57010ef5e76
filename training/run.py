"""``python -m training.run``: train a recognizer, evaluate it, write a model bundle.

Reads top to bottom: config, distributed setup, data, model, optimizer, loop, save.
Distribution comes only from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); one process is the same code path with a world of one. Only rank 0 logs,
evaluates and writes.

Examples:
    python -m training.run --family c3d_vll --data data/move4digits --out store
    torchrun --nproc_per_node=2 -m training.run --family full_video --data DIR --out store
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
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
from models.registry import create_model
from training.config import TrainConfig, parse_config
from training.datasets import load_dataset, validate_entries
from training.evaluate import evaluate_videos
from training.schedule import lr_at
from training.tasks import Batch, make_task

__all__ = [
    "channels_last_for",
    "main",
    "make_optimizer",
    "mixed_precision",
    "to_device",
    "train",
    "train_step",
]

log = logging.getLogger("training")


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


def channels_last_for(family: str, device: torch.device) -> bool:
    """Whether the loop stores the model and inputs channels-last 3D: on CUDA for the
    pure-3D-conv families, where cuDNN's NDHWC kernels are faster."""
    return device.type == "cuda" and family in ("c3d_vll", "ms3d")


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
    scaler: Any,
    epoch: int,
    step: int,
    history: list[dict],
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


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    # Append-only log: a torn last line is the worst an interruption can do, and the
    # complete history is also kept in the checkpoint.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
    classes = list(splits.classes)
    train_entries, test_entries = list(splits.train), list(splits.test)
    held_out: list[str] = []
    if cfg.family == "ms3d" and cfg.holdout_classes > 0:
        # Open-set protocol: the last classes never reach training or the first repository.
        if cfg.holdout_classes >= len(classes) - 1:
            raise SystemExit(
                f"--holdout-classes {cfg.holdout_classes} leaves fewer than two "
                f"known classes out of {len(classes)}"
            )
        held_out = classes[-cfg.holdout_classes :]
        known = len(classes) - cfg.holdout_classes
        train_entries = [e for e in train_entries if e.label < known]
    if cfg.limit_train:
        train_entries = train_entries[: cfg.limit_train]
    if cfg.limit_test:
        test_entries = test_entries[: cfg.limit_test]
    train_entries = validate_entries(train_entries, strict=cfg.strict, what="training split")
    if test_entries:
        test_entries = validate_entries(test_entries, strict=cfg.strict, what="test split")
    task = make_task(cfg, classes if not held_out else classes[: len(classes) - len(held_out)])
    spec = task.spec()

    name = cfg.name or f"{task.model_name}-{Path(cfg.data.rstrip('/')).stem}"
    bundle_dir = Path(cfg.out) / name
    ckpt_path = bundle_dir / "checkpoint.pt"
    metrics_path = bundle_dir / "metrics.jsonl"
    if ctx.main:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        log.info(
            "%s: %d train / %d test videos, %d classes, model %s -> %s",
            cfg.family,
            len(train_entries),
            len(test_entries),
            len(classes),
            task.model_name,
            bundle_dir,
        )

    # ---- model
    _seed_all(cfg.seed, 0)
    model_kwargs = task.model_kwargs()
    model = create_model(task.model_name, spec=spec, **model_kwargs, **task.build_only_kwargs()).to(
        ctx.device
    )
    channels_last = channels_last_for(cfg.family, ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net: nn.Module = model
    if ctx.world > 1:
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )

    # ---- optimizer, data loader
    optimizer = make_optimizer(cfg, model)
    autocast, scaler = mixed_precision(cfg, ctx.device)
    dataset = task.train_dataset(train_entries)
    loader, epoch_sampler = task.loader(dataset, train_entries, ctx.rank, ctx.world, cfg.workers)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs

    # ---- resume
    start_epoch, step, history = 0, 0, []
    if cfg.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=ctx.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        history = json.loads(state["history"])
        if ctx.main:
            log.info("resuming after epoch %d (step %d) from %s", start_epoch, step, ckpt_path)
    elif ctx.main:
        metrics_path.unlink(missing_ok=True)

    # ---- loop
    started = time.time()
    last_eval: dict[str, Any] = history[-1].get("eval", {}) if history else {}
    stop_at = min(cfg.epochs, start_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
    epochs = range(start_epoch, stop_at)
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
        batches = loader
        if show:
            batches = tqdm(
                loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch"
            )
        t0 = time.time()
        for batch in batches:
            lr = lr_at(
                step,
                base_lr=cfg.lr,
                total_steps=total_steps,
                schedule=cfg.lr_schedule,
                warmup_steps=cfg.warmup_steps,
                step_size=cfg.lr_step,
                gamma=cfg.lr_gamma,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
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
            if show:
                batches.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": lr_at(
                max(0, step - 1),
                base_lr=cfg.lr,
                total_steps=total_steps,
                schedule=cfg.lr_schedule,
                warmup_steps=cfg.warmup_steps,
                step_size=cfg.lr_step,
                gamma=cfg.lr_gamma,
            ),
            "train": {k: v / max(1, steps_per_epoch) for k, v in totals.items()},
            "inputs_per_s": seen * ctx.world / max(1e-9, time.time() - t0),
        }
        if ctx.main and (epoch + 1 == cfg.epochs or (epoch + 1) % max(1, cfg.eval_every) == 0):
            last_eval = _evaluate(
                cfg,
                task,
                model,
                spec,
                train_entries,
                test_entries,
                classes,
                held_out,
                ctx.device,
                show,
            )[0]
            record["eval"] = last_eval
        history.append(record)
        if ctx.main:
            _append_jsonl(metrics_path, record)
            _save_checkpoint(ckpt_path, model, optimizer, scaler, epoch, step, history)
            summary = " ".join(f"{k}={v:.4f}" for k, v in record["train"].items())
            extra = f" top1={last_eval.get('top1', float('nan')):.3f}" if "eval" in record else ""
            log.info(
                "epoch %d/%d %s%s (%.1f inputs/s)",
                epoch + 1,
                cfg.epochs,
                summary,
                extra,
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
            last_eval = _evaluate(
                cfg,
                task,
                model,
                spec,
                train_entries,
                test_entries,
                classes,
                held_out,
                ctx.device,
                show,
            )[0]
        extra: dict[str, Any] = {"files": []}
        if cfg.family == "ms3d":
            repo = _ms3d_repository(
                cfg,
                model,
                spec,
                train_entries,
                test_entries,
                classes,
                held_out,
                ctx.device,
                show,
                final=True,
            )[0]
            repo.save(bundle_dir / "repository.safetensors")
            extra["files"].append("repository.safetensors")
            labels = list(repo.names)
        else:
            labels = classes
        extra["training"] = {
            "wall_time_s": time.time() - started,
            "world_size": ctx.world,
            "train_videos": len(train_entries),
            "test_videos": len(test_entries),
            "held_out_classes": held_out,
        }
        write_bundle(
            bundle_dir,
            model=model,
            model_name=task.model_name,
            model_kwargs=model_kwargs,
            family=cfg.family,
            labels=labels,
            spec=spec,
            config=dataclasses.asdict(cfg),
            metrics=last_eval,
            extra=extra,
        )
        log.info(
            "bundle written to %s (top1 %.3f)", bundle_dir, last_eval.get("top1", float("nan"))
        )
        out = bundle_dir
    _barrier(ctx)
    if ctx.world > 1:
        dist.destroy_process_group()
    return out


def _evaluate(
    cfg, task, model, spec, train_entries, test_entries, classes, held_out, device, show
) -> tuple[dict[str, Any], Any]:
    """Rank 0 evaluation through the service's path; ms3d builds its repository first."""
    model.eval()
    forward = _forward_fn(model, device)
    try:
        if cfg.family == "ms3d":
            repo, figures = _ms3d_repository(
                cfg,
                model,
                spec,
                train_entries,
                test_entries,
                classes,
                held_out,
                device,
                show,
                final=False,
            )
            return figures, repo
        videos = [(e.path, e.label) for e in test_entries]
        summary, _ = evaluate_videos(
            forward,
            videos,
            spec,
            len(classes),
            batch_size=cfg.batch_size,
            max_inputs=cfg.eval_max_clips,
            progress=show,
        )
        return summary, None
    finally:
        model.train()


def _forward_fn(model: nn.Module, device: torch.device):
    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device))

    return forward


def _ms3d_repository(
    cfg, model, spec, train_entries, test_entries, classes, held_out, device, show, *, final: bool
):
    """Build the class-centre repository from training videos, calibrate gamma on held-out
    in-class videos, and measure closed-set accuracy and open-set rejection on the test split.

    With ``final``, the held-out classes are then added to the repository from their training
    videos (no retraining), so the served bundle knows every class.
    """
    from models.pipeline import decode_for, embed_video
    from models.repository import Repository, calibrate_gamma, in_class_distances
    from video.errors import VideoError

    model.eval()
    forward = _forward_fn(model, device)
    known = len(classes) - len(held_out)

    def embed(entries):
        out, labels = [], []
        for e in entries:
            try:
                frames, _ = decode_for(e.path, spec)
            except VideoError as err:
                log.warning("repository skips %s: %s", e.path, err)
                continue
            out.append(embed_video(forward, frames, spec, batch_size=cfg.batch_size))
            labels.append(e.label)
        return out, labels

    # Centres from `repo_videos` videos per class; the rest of the training videos calibrate gamma.
    by_class: dict[int, list] = {}
    for e in train_entries:
        by_class.setdefault(e.label, []).append(e)
    centre_entries, calib_entries = [], []
    for _, items in sorted(by_class.items()):
        w = cfg.repo_videos or max(1, math.ceil(0.75 * len(items)))
        w = min(w, len(items) - 1) if len(items) > 1 else 1
        centre_entries += items[:w]
        calib_entries += items[w:]
    embeddings, labels = embed(centre_entries)
    repo = Repository(dim=embeddings[0].shape[1])
    for label in range(known):
        rows = [emb for emb, lab in zip(embeddings, labels) if lab == label]
        if rows:
            repo.add_class(classes[label], np.concatenate(rows))
    calib, calib_labels = embed(calib_entries)
    calib_dist = np.empty(0)
    if calib:
        names = [classes[lab] for lab in calib_labels]
        calib_dist = in_class_distances(repo, calib, names)
    if cfg.gamma > 0:
        repo.gamma = cfg.gamma
    elif calib:
        repo.gamma = calibrate_gamma(calib_dist, cfg.gamma_percentile)

    figures: dict[str, Any] = {"gamma": repo.gamma}
    known_test = [(e.path, e.label) for e in test_entries if e.label < known]
    unknown_test = [(e.path, e.label) for e in test_entries if e.label >= known]
    centres = repo.centres_tensor()
    closed, outcomes = evaluate_videos(
        forward,
        known_test,
        spec,
        known,
        batch_size=cfg.batch_size,
        centres=centres,
        gamma=repo.gamma,
        progress=show,
    )
    figures.update(closed)
    figures["in_class_acceptance"] = (
        float(np.mean([not o.unknown for o in outcomes])) if outcomes else float("nan")
    )
    if unknown_test:
        _, open_outcomes = evaluate_videos(
            forward,
            unknown_test,
            spec,
            len(classes),
            batch_size=cfg.batch_size,
            centres=centres,
            gamma=repo.gamma,
        )
        figures["unknown_rejection"] = float(np.mean([o.unknown for o in open_outcomes]))
        figures["unknown_videos"] = len(unknown_test)
        if len(calib_dist):
            # The acceptance/rejection trade-off over the gamma percentile, from the same
            # nearest-centre distances (no extra forward pass).
            known_d = np.array([o.nearest for o in outcomes])
            unknown_d = np.array([o.nearest for o in open_outcomes])
            figures["open_set_sweep"] = [
                {
                    "percentile": q,
                    "gamma": (g := calibrate_gamma(calib_dist, q)),
                    "in_class_acceptance": float(np.mean(known_d < g)),
                    "unknown_rejection": float(np.mean(unknown_d >= g)),
                }
                for q in (50.0, 75.0, 90.0, 95.0, 99.0)
            ]
    if final and held_out:
        # The held-out classes' training videos were kept out of training; read them now.
        emb_h, lab_h = embed(_held_out_train(cfg, known))
        for label in range(known, len(classes)):
            rows = [emb for emb, lab in zip(emb_h, lab_h) if lab == label]
            if rows:
                repo.add_class(classes[label], np.concatenate(rows))
        all_test = [(e.path, e.label) for e in test_entries]
        full, _ = evaluate_videos(
            forward,
            all_test,
            spec,
            len(repo.names),
            batch_size=cfg.batch_size,
            centres=repo.centres_tensor(),
            gamma=math.inf,
        )
        figures["all_classes_after_adding_top1"] = full["top1"]
    model.train()
    return repo, figures


def _held_out_train(cfg: TrainConfig, known: int) -> list:
    splits = load_dataset(cfg.data, split=cfg.split)
    entries = [e for e in splits.train if e.label >= known]
    return validate_entries(entries, strict=False, what="held-out classes") if entries else []


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
