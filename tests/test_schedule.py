"""The learning-rate schedule against hand-computed answers."""

from __future__ import annotations

import pytest

from training.schedule import lr_at


def test_lr_schedules_by_hand() -> None:
    assert lr_at(
        4999, base_lr=1e-3, total_steps=10, schedule="step", step_size=2000
    ) == pytest.approx(1e-5)
    assert lr_at(0, base_lr=1.0, total_steps=10, schedule="cosine") == 1.0
    assert lr_at(5, base_lr=1.0, total_steps=10, schedule="cosine") == pytest.approx(0.5)
    assert lr_at(10, base_lr=1.0, total_steps=10, schedule="cosine") == pytest.approx(0.0)
    assert lr_at(1, base_lr=1.0, total_steps=10, schedule="constant", warmup_steps=4) == 0.5
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, base_lr=1.0, total_steps=1, schedule="wavy")
