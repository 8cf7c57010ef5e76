"""Benchmark: ``video.decode`` against decord and torchcodec, dense and sparse.

Writes 10 s, 25 fps, 640x480 H.264 MP4s with moving texture, a moving disc and per-frame
grain (so the encoder cannot make them trivially small), one per keyframe interval (GOP)
asked for, and times on each, interleaved, several repeats, output 128x171 (H x W) RGB:

* dense: every frame (ours: ``decode_video``; decord: ``get_batch`` of every index;
  torchcodec: ``get_frames_in_range``);
* sparse: the 8 TSN segment centres, ``uniform_segments(T, 8)`` (ours: ``decode_sampled``,
  which decodes only the GOPs holding them; ours also through ``decode_frames_at``, the full
  decode converting 8 frames; decord: ``get_batch``; torchcodec: ``get_frames_at``, exact
  seek mode).

It prints medians and the ratios: our sparse decode against our full decode, and ours
against each peer, dense and sparse (above 1.0x: ours is faster). Each ratio is a ratio of
medians and the median of per-round ratios (paired: same moment, same machine load).
Process CPU time (all threads) is printed beside wall time, and its ratio: on a shared
machine it is the steadier of the two. Every decoder runs with ``--threads`` decoder threads
and opens the file inside the timed call. Not a test: run ``python bench/decode.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sized
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from video.decode import decode_frames_at, decode_sampled, decode_video, index_video
from video.sampling import uniform_segments

HEIGHT, WIDTH = 128, 171


def write_bench_video(
    path: Path,
    *,
    seconds: int = 10,
    fps: int = 25,
    height: int = 480,
    width: int = 640,
    gop: int = 250,
    seed: int = 0,
) -> int:
    """Encode the benchmark clip with keyframes at most ``gop`` frames apart (x264's
    ``keyint``; 250 is its default) and return its frame count."""
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
        stream.options = {"crf": "23", "preset": "veryfast", "g": str(gop)}
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


# Each runner decodes and returns the frames, (n, HEIGHT, WIDTH, 3) uint8 (or a tensor).
Runner = Callable[[], Sized]
# Frames of the sparse decode: TSM-8's segment centres.
_FRAMES = 8


def _pick(frames: int) -> np.ndarray:
    return uniform_segments(frames, _FRAMES)


def _ours_dense(path: Path, threads: int) -> np.ndarray:
    return decode_video(path, size=(HEIGHT, WIDTH), threads=threads)[0]


def _ours_sparse(path: Path, threads: int) -> np.ndarray:
    got = decode_sampled(path, _pick, size=(HEIGHT, WIDTH), threads=threads)
    assert got is not None, "the bench clip is indexable"
    return got[0]


def _ours_convert_only(path: Path, threads: int, n: int) -> np.ndarray:
    return decode_frames_at(path, _pick(n), size=(HEIGHT, WIDTH), threads=threads)[0]


def _decord(path: Path, threads: int, sparse: bool) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), width=WIDTH, height=HEIGHT, num_threads=threads)
    wanted = _pick(len(reader)) if sparse else np.arange(len(reader))
    frames: np.ndarray = reader.get_batch(wanted.tolist()).asnumpy()
    return frames


def _torchcodec(path: Path, threads: int, sparse: bool) -> Sized:
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    decoder = VideoDecoder(
        str(path),
        dimension_order="NHWC",
        num_ffmpeg_threads=threads,
        seek_mode="exact",
        transforms=[Resize((HEIGHT, WIDTH))],
    )
    total = decoder.metadata.num_frames
    assert total is not None
    if sparse:
        return decoder.get_frames_at(_pick(total).tolist()).data
    return decoder.get_frames_in_range(0, total).data


def _available(module: str) -> bool:
    try:
        __import__(module)
    except (ImportError, OSError, RuntimeError) as exc:  # torchcodec raises OSError/RuntimeError
        print(f"{module} is not usable here ({type(exc).__name__}: {exc}); skipped")
        return False
    return True


def _runners(path: Path, n: int, threads: int, peers: list[str]) -> dict[str, Runner]:
    runners: dict[str, Runner] = {
        "ours dense": lambda: _ours_dense(path, threads),
        "ours sparse": lambda: _ours_sparse(path, threads),
        "ours full decode, 8 converted": lambda: _ours_convert_only(path, threads, n),
    }
    if "decord" in peers:
        runners["decord dense"] = lambda: _decord(path, threads, sparse=False)
        runners["decord sparse"] = lambda: _decord(path, threads, sparse=True)
    if "torchcodec" in peers:
        runners["torchcodec dense"] = lambda: _torchcodec(path, threads, sparse=False)
        runners["torchcodec sparse"] = lambda: _torchcodec(path, threads, sparse=True)
    return runners


def _time(fn: Runner) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    frames = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, len(frames)


def _ratio(
    walls: dict[str, list[float]], cpus: dict[str, list[float]], slow: str, fast: str
) -> str:
    of_medians = statistics.median(walls[slow]) / statistics.median(walls[fast])
    paired = statistics.median(s / f for s, f in zip(walls[slow], walls[fast]))
    cpu = statistics.median(cpus[slow]) / statistics.median(cpus[fast])
    return f"{of_medians:.2f}x of medians, {paired:.2f}x paired median, {cpu:.2f}x CPU"


def bench_clip(path: Path, n: int, repeats: int, threads: int, peers: list[str]) -> None:
    """Time every runner on one clip and print the figures and ratios."""
    index = index_video(path)
    print(
        f"\nclip {path.name}: {n} frames, {index.keyframes} keyframes, "
        f"{path.stat().st_size / 1e6:.2f} MB; sparse frames {_pick(n).tolist()}"
    )
    full = _ours_dense(path, threads)
    sparse = _ours_sparse(path, threads)
    if not np.array_equal(sparse, full[_pick(n)]):
        raise SystemExit("our sparse frames differ from our full decode's")
    runners = _runners(path, n, threads, peers)
    for fn in runners.values():  # warm-up: imports, page cache, lazy library loading
        fn()
    walls: dict[str, list[float]] = {k: [] for k in runners}
    cpus: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            wall, cpu, got = _time(fn)
            want = _FRAMES if "sparse" in name or "converted" in name else n
            if got != want:
                raise SystemExit(f"{name} gave {got} frames, expected {want}")
            walls[name].append(wall)
            cpus[name].append(cpu)
    for name in runners:
        wall_ms = 1e3 * statistics.median(walls[name])
        cpu_ms = 1e3 * statistics.median(cpus[name])
        print(f"  {name:32s} {wall_ms:8.1f} ms wall (median) {cpu_ms:8.1f} ms CPU")
    ratio = _ratio(walls, cpus, "ours dense", "ours sparse")
    print(f"  ours sparse vs ours dense:        {ratio}")
    for peer in peers:
        for kind in ("dense", "sparse"):
            ratio = _ratio(walls, cpus, f"{peer} {kind}", f"ours {kind}")
            print(f"  ours vs {peer} {kind}:{' ' * (24 - len(peer) - len(kind))}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="decoder threads, every decoder")
    parser.add_argument(
        "--gops",
        default="250,50,25,12",
        help="keyframe intervals in frames, one clip each (250: x264's default, one GOP)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where to write the clips (default: a temporary directory)",
    )
    args = parser.parse_args()
    peers = [name for name in ("decord", "torchcodec") if _available(name)]
    print(
        f"output {HEIGHT}x{WIDTH}; {args.repeats} repeats, interleaved; "
        f"{args.threads} decoder threads; peers: {', '.join(peers) or 'none'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for gop in (int(g) for g in args.gops.split(",")):
            path = work / f"bench_640x480_25fps_10s_gop{gop}.mp4"
            n = write_bench_video(path, gop=gop)
            bench_clip(path, n, args.repeats, args.threads, peers)


if __name__ == "__main__":
    main()
