"""Benchmark: full sequential decode + resize, ``video.decode`` against decord 0.6.

Writes a 10 s, 25 fps, 640x480 H.264 MP4 with moving texture, a moving disc and per-frame
grain (so the encoder cannot make it trivially small), then times decoding every frame to
128x171 (H x W) RGB with both decoders on that same file, interleaved, several repeats, and
prints medians and the ratio ours/decord. Not a test: run ``python bench/decode.py``.

Both decoders run at their defaults (ours: 2 decoder threads; decord: ``num_threads=0``,
its automatic choice) and, for a like-for-like view, decord at our thread count too.
Wall time is what counts; process CPU time (all threads) is printed beside it because on a
shared machine it is the steadier of the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from video.decode import decode_video

HEIGHT, WIDTH = 128, 171


def write_bench_video(
    path: Path,
    *,
    seconds: int = 10,
    fps: int = 25,
    height: int = 480,
    width: int = 640,
    seed: int = 0,
) -> int:
    """Encode the benchmark clip and return its frame count."""
    rng = np.random.default_rng(seed)
    # Blocky texture plus fine noise, larger than the frame so it can pan.
    coarse = rng.integers(0, 256, (height // 8 + 40, width // 8 + 40, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    texture = (0.7 * texture + 0.3 * rng.integers(0, 256, texture.shape)).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    n = seconds * fps
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(n):
            dy, dx = int(120 + 100 * np.sin(i / 20)), (2 * i) % 300
            img = texture[dy : dy + height, dx : dx + width].copy()
            cy, cx = height / 2 + 150 * np.sin(i / 15), width / 2 + 250 * np.cos(i / 23)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 60**2
            img[disc] = 255 - img[disc]
            grain = rng.integers(-6, 7, img.shape)
            img = np.clip(img.astype(np.int16) + grain, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def _ours(path: Path, threads: int) -> int:
    frames, _ = decode_video(path, size=(HEIGHT, WIDTH), threads=threads)
    return len(frames)


def _decord(path: Path, threads: int) -> int:
    import decord

    reader = decord.VideoReader(str(path), width=WIDTH, height=HEIGHT, num_threads=threads)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert frames.shape[1:] == (HEIGHT, WIDTH, 3)
    return len(frames)


def _time(fn: Callable[[], int]) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="our decoder threads")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where to write the clip (default: a temporary directory)",
    )
    args = parser.parse_args()

    try:
        import decord  # noqa: F401 - importing is the availability check
    except ImportError as exc:
        decord_ok = False
        print(f"decord is not importable ({exc}); measuring ours only")
    else:
        decord_ok = True

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        path = work / "bench_640x480_25fps_10s.mp4"
        n = write_bench_video(path)
        print(
            f"clip: {path.name}, {n} frames, {path.stat().st_size / 1e6:.2f} MB; "
            f"output {HEIGHT}x{WIDTH}; {args.repeats} repeats, interleaved"
        )

        runners: dict[str, Callable[[], int]] = {
            f"ours (threads={args.threads})": lambda: _ours(path, args.threads),
        }
        if decord_ok:
            runners["decord (num_threads=0, default)"] = lambda: _decord(path, 0)
            runners[f"decord (num_threads={args.threads})"] = lambda: _decord(path, args.threads)
        for fn in runners.values():  # warm-up: imports, page cache, lazy library loading
            fn()
        walls: dict[str, list[float]] = {k: [] for k in runners}
        cpus: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.repeats):
            for name, fn in runners.items():
                wall, cpu, frames = _time(fn)
                if frames != n:
                    raise SystemExit(f"{name} decoded {frames} frames, expected {n}")
                walls[name].append(wall)
                cpus[name].append(cpu)

    fps = {name: n / statistics.median(w) for name, w in walls.items()}
    for name in runners:
        cpu_ms = 1e3 * statistics.median(cpus[name]) / n
        print(f"{name:34s} {fps[name]:8.1f} frames/s (median wall)   {cpu_ms:6.3f} ms CPU/frame")
    if decord_ok:
        ours = f"ours (threads={args.threads})"
        for name in list(runners)[1:]:
            # Per-round ratios are paired (same moment, same machine load); take their median.
            paired = statistics.median(t / o for o, t in zip(walls[ours], walls[name]))
            print(
                f"ratio ours/{name}: {fps[ours] / fps[name]:.2f}x of medians, "
                f"{paired:.2f}x paired median"
            )


if __name__ == "__main__":
    main()
