"""Shared fixtures: tests make their own tiny videos and never download anything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from media import write_video


@pytest.fixture
def make_video(tmp_path: Path):
    """Factory writing a real H.264 MP4 (or other codec) into the test's temp dir."""

    def _make(name: str = "clip.mp4", **kwargs) -> Path:
        path = tmp_path / name
        write_video(path, **kwargs)
        return path

    return _make
