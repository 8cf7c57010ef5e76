"""Loss of the attention joint-LSTM family: step CE, deep supervision, attention regulariser.

The attention_lstm paper (cited in :mod:`models.attention_lstm`), Sections 3.2-3.3. Trains
:class:`models.attention_lstm.AttentionLSTM` with the joint LSTM's cross-entropy per step, the
deep-supervision cross-entropy of each level's 3D-conv head, and ``lam`` times the regulariser
``sum_t sum_i (e_{t,i} - att_{t,i})^2`` between the normalised 3D-conv energy and the
attention.

How the terms are reduced and what is detached: docs/models.md#attention_lstm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from models.attention_lstm import AttentionLSTMOutput

__all__ = ["attention_regularizer", "step_cross_entropy", "attention_lstm_loss"]


def step_cross_entropy(
    step_logits: Tensor, labels: Tensor, *, last_steps: int | None = None
) -> Tensor:
    """Cross-entropy of every step's logits against the clip label, averaged over steps and clips.

    Args:
        step_logits: ``(N, T, num_classes)``.
        labels: ``(N,)`` int64 class indices.
        last_steps: Use only the last ``last_steps`` steps (all if ``None`` or ``>= T``).
    """
    if step_logits.ndim != 3 or labels.shape != step_logits.shape[:1]:
        raise ValueError(
            f"need logits (N, T, C) and labels (N,), got {tuple(step_logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if last_steps is not None:
        if last_steps < 1:
            raise ValueError(f"last_steps must be >= 1, got {last_steps}")
        step_logits = step_logits[:, -last_steps:]
    n, t, c = step_logits.shape
    return F.cross_entropy(step_logits.reshape(n * t, c), labels.repeat_interleave(t))


def attention_regularizer(
    energy: Tensor, attention: Tensor, *, detach_attention: bool = True
) -> Tensor:
    """``sum_t sum_i (energy_{t,i} - attention_{t,i})^2``, averaged over the batch.

    Args:
        energy: ``(N, T, K*K)`` normalised spatial energy of a level's 3D-conv features.
        attention: ``(N, T, K*K)`` the LSTM's attention over the same grid.
        detach_attention: Treat the attention as a fixed target (no gradient into it).
    """
    if energy.shape != attention.shape or energy.ndim != 3:
        raise ValueError(
            f"energy {tuple(energy.shape)} and attention {tuple(attention.shape)} "
            "must both be (N, T, K*K)"
        )
    target = attention.detach() if detach_attention else attention
    return (energy - target).pow(2).sum(dim=(1, 2)).mean()


def attention_lstm_loss(
    out: AttentionLSTMOutput,
    labels: Tensor,
    *,
    lam: float = 1000.0,
    ds_weight: float = 1.0,
    last_steps: int | None = None,
    detach_attention: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total training loss of :class:`models.attention_lstm.AttentionLSTM`.

    ``total = ce + ds_weight * ds + lam * att_reg`` (see the module docstring).

    Args:
        out: ``model(x, return_aux=True)``.
        labels: ``(N,)`` int64 class index per clip.
        lam: Weight of the attention regulariser (paper: 1000).
        ds_weight: Weight of the deep-supervision cross-entropy.
        last_steps: Train the LSTM output on the last ``last_steps`` steps only (``None``: all).
        detach_attention: See :func:`attention_regularizer`.

    Returns:
        The scalar total and its detached parts ``{"ce", "ds", "att_reg", "total"}``.
    """
    if len(out.ds_logits) != len(out.energy) or len(out.energy) != len(out.attention):
        raise ValueError("ds_logits, energy and attention need one entry per level")
    ce = step_cross_entropy(out.step_logits, labels, last_steps=last_steps)
    ds = sum((step_cross_entropy(logits, labels) for logits in out.ds_logits), ce.new_zeros(()))
    reg = sum(
        (
            attention_regularizer(e, a, detach_attention=detach_attention)
            for e, a in zip(out.energy, out.attention)
        ),
        ce.new_zeros(()),
    )
    total = ce + ds_weight * ds + lam * reg
    parts = {"ce": ce.detach(), "ds": ds.detach(), "att_reg": reg.detach(), "total": total.detach()}
    return total, parts
