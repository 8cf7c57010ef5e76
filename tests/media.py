"""Tiny real media files for tests, written with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_pattern(n: int, height: int, width: int) -> np.ndarray:
    """``n`` RGB frames whose content changes with the index (a moving bright square)."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    side = max(2, min(height, width) // 4)
    for i in range(n):
        frames[i, ..., 0] = (i * 7) % 256
        y = (i * 2) % max(1, height - side)
        x = (i * 3) % max(1, width - side)
        frames[i, y : y + side, x : x + side] = 255
    return frames


def write_video(
    path: Path,
    frames: np.ndarray | None = None,
    *,
    n: int = 20,
    height: int = 48,
    width: int = 64,
    fps: int = 25,
    codec: str = "libx264",
    audio: bool = False,
) -> np.ndarray:
    """Write ``frames`` (or a generated pattern of ``n`` frames) and return what was written."""
    if frames is None:
        frames = frame_pattern(n, height, width)
    n, height, width = frames.shape[:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream), codec
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio:
            _add_silence(container, seconds=n / fps)
    return frames


def write_audio_only(path: Path, seconds: float = 0.5) -> None:
    """An audio-only file (AAC in MP4): a container without a video stream."""
    with av.open(str(path), mode="w") as container:
        _add_silence(container, seconds)


def _add_silence(container: av.container.OutputContainer, seconds: float) -> None:
    rate = 16000
    stream = container.add_stream("aac", rate=rate)
    samples = np.zeros((1, int(rate * seconds)), dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.time_base = Fraction(1, rate)
    frame.pts = 0
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
