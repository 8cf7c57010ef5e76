"""Training losses, one module per family."""

from training.losses.attention import attention_lstm_loss
from training.losses.npair import npair_loss
from training.losses.vll import clip_ce_loss, vll_loss

__all__ = ["attention_lstm_loss", "clip_ce_loss", "npair_loss", "vll_loss"]
