"""The learning-rate schedule: a pure function of the optimizer step.

Because the rate depends on nothing but the step (never on wall time or on how many
invocations a run took), a run resumed from a checkpoint follows the same schedule as an
uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from training.config import TrainConfig

__all__ = ["lr_at", "schedule_for", "set_lr"]


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    schedule: str,
    warmup_steps: int = 0,
    step_size: int = 2000,
    gamma: float = 0.1,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based): a pure function of the step."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (step // max(1, step_size))
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def schedule_for(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """:func:`lr_at` with the run's schedule settings bound: ``step -> learning rate``."""

    def lr(step: int) -> float:
        return lr_at(
            step,
            base_lr=cfg.lr,
            total_steps=total_steps,
            schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps,
            step_size=cfg.lr_step,
            gamma=cfg.lr_gamma,
        )

    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of ``optimizer`` to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
