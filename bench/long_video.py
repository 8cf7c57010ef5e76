"""Long videos: peak memory and speed of the streamed path (``models.stream.recognize_video``)
against today's in-memory path (``models.pipeline.decode_for`` + ``predict_frames``).

Run ``python bench/long_video.py`` (not a timed test). It

1. writes 1-, 10- and 60-minute 320x240 25 fps H.264 videos (a gradient panning at a varying
   speed and a moving square; libx264 ``ultrafast``) once into ``bench/_work/long_video/``
   (``--work-dir``), reused by later runs;
2. for each family's demo bundle (``demo/bundles/<family>-move4digits``, PyTorch on the CPU,
   ``--threads`` for both the network and the decoder) recognises each video with the streamed
   path, and the 1-minute one with the in-memory path too, every measurement in a fresh
   subprocess so that its peak RSS (``VmHWM``, read at the end) belongs to that run alone
   (each process first recognises a 2 s video by the same path, untimed, as a service warms
   up: one-off costs such as lazy imports are not the video's; ``--no-warmup`` times the
   first call); the streamed and in-memory runs on the shortest video (1 minute) alternate
   ``--repeats`` times (medians), the longer ones run once;
3. prints per family: the RSS once the model is loaded and warmed up, the streamed peak RSS
   per length, the ratio longest/1-minute (target <= 1.2), the in-memory peak on 1 minute, and
   frames/s of both paths on 1 minute with their ratio (target >= 0.9x; >= 0.6x for
   full_video, which reads the video twice).

Frames/s is decoded frames over the wall time of the recognition alone (imports, model
loading and the warm-up excluded); process CPU seconds of the same span are printed beside
it because on a shared machine they are the steadier figure. The host may be shared with
other jobs, so the load average at start and end is printed too. The in-memory path runs on
the shortest video only (on 60 minutes its frames alone would be 1.1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("c3d_vll", "attention_lstm", "ms3d", "full_video")
BUNDLES = ROOT / "demo" / "bundles"
WORK = ROOT / "bench" / "_work" / "long_video"
WIDTH, HEIGHT, FPS = 320, 240, 25
TARGET_RSS_RATIO = 1.2
TARGET_SPEED = {"full_video": 0.6}  # two passes over the video; others: DEFAULT_SPEED
DEFAULT_SPEED = 0.9
WARMUP_S = 2.0  # the untimed recognition before each timed one


def write_long_video(
    path: Path, *, seconds: float, fps: int = FPS, width: int = WIDTH, height: int = HEIGHT
) -> int:
    """Encode a moving test video (H.264 in MP4) frame by frame; returns its frame count.

    Frames are made directly in yuv420p (no colour conversion): a luma gradient panning at a
    speed that varies over time (so frame differences vary, as ms3d's sampler wants), a
    bright square bouncing around, and slowly drifting chroma. Written under a temporary name
    and renamed, so an interrupted run leaves no truncated video behind.
    """
    import av

    n = round(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    luma = ((xx + yy // 2) % 256).astype(np.uint8)
    luma = np.concatenate([luma, luma], axis=1)  # pans by slicing
    cy, cx = height // 2, width // 2
    u = ((np.mgrid[0:cy, 0:cx][1] * 2) % 256).astype(np.uint8)
    u = np.concatenate([u, u], axis=1)
    frame = np.empty((height * 3 // 2, width), dtype=np.uint8)
    side = max(4, min(height, width) // 6)
    tmp = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "28", "preset": "ultrafast"}
        pan = 0.0
        for i in range(n):
            pan += 2.0 + 1.5 * np.sin(i / 40.0)
            off = int(pan) % width
            frame[:height] = luma[:, off : off + width]
            y = abs((3 * i) % (2 * (height - side)) - (height - side))
            x = abs((5 * i) % (2 * (width - side)) - (width - side))
            frame[y : y + side, x : x + side] = 235
            # U plane (quarter size, one row of chroma per two rows of the view) then V.
            chroma = frame[height:].reshape(2, cy, cx)
            chroma[0] = u[:, (i // 3) % cx : (i // 3) % cx + cx]
            chroma[1] = 128 + (i // 25) % 32
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return n


def video_for(work: Path, seconds: float) -> Path:
    """The cached ``seconds``-long video, written on first use."""
    path = work / f"moving_{seconds:g}s_{WIDTH}x{HEIGHT}_{FPS}fps.mp4"
    if not path.exists():
        started = time.perf_counter()
        n = write_long_video(path, seconds=seconds)
        print(
            f"wrote {path.name}: {n} frames, {path.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return path


# --------------------------------------------------------------------------- one measurement


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def measure(
    family: str,
    mode: str,
    video: Path,
    threads: int,
    batch_size: int,
    warmup: Path | None = None,
) -> dict[str, Any]:
    """Recognise ``video`` once with ``family``'s demo bundle (in this process), after one
    untimed recognition of ``warmup`` by the same path (one-off costs: lazy imports, kernel
    selection), as a service warms up before its first request."""
    import torch

    from models.bundle import REPOSITORY_FILE, load_bundle
    from models.pipeline import Prediction, decode_for, predict_frames
    from models.repository import Repository
    from models.stream import recognize_video, stages_for

    torch.set_num_threads(threads)
    bundle = load_bundle(BUNDLES / f"{family}-move4digits")
    model = bundle.build_model()
    spec = bundle.spec
    stages = stages_for(model)
    centres, gamma = None, None
    if bundle.has(REPOSITORY_FILE):
        repo = Repository.load(bundle.file(REPOSITORY_FILE))
        centres, gamma = repo.centres_tensor(), repo.gamma

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(x)
            return out

    def recognise(path: Path) -> tuple[int, Prediction]:
        if mode == "stream":
            answer = recognize_video(
                path,
                spec,
                forward,
                stages=stages,
                batch_size=batch_size,
                centres=centres,
                gamma=gamma,
                threads=threads,
            )
            return answer.meta.frame_count, answer.prediction
        if mode == "memory":
            decoded, _ = decode_for(path, spec, threads=threads)
            prediction = predict_frames(
                forward, decoded, spec, batch_size=batch_size, centres=centres, gamma=gamma
            )
            return len(decoded), prediction
        raise ValueError(f"unknown mode {mode!r}")

    if warmup is not None:
        recognise(warmup)
    ready_mb = _status_mb("VmRSS")
    ready_hwm_mb = _status_mb("VmHWM")
    wall, cpu = time.perf_counter(), time.process_time()
    frames, prediction = recognise(video)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "family": family,
        "mode": mode,
        "video": video.name,
        "warmup": warmup.name if warmup is not None else None,
        "frames": int(frames),
        "inputs": int(prediction.inputs),
        "top": int(prediction.scores.order[0]),
        "wall_s": wall,
        "cpu_s": cpu,
        "fps": frames / wall if wall > 0 else float("nan"),
        "ready_mb": ready_mb,
        "ready_hwm_mb": ready_hwm_mb,
        "peak_mb": _status_mb("VmHWM"),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def run_measurement(
    family: str,
    mode: str,
    video: Path,
    threads: int,
    batch_size: int,
    timeout: float,
    warmup: Path | None,
) -> dict[str, Any]:
    """:func:`measure` in a fresh subprocess (its peak RSS is that run's alone)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--families",
        family,
        "--video",
        str(video),
        "--threads",
        str(threads),
        "--batch-size",
        str(batch_size),
    ]
    if warmup is not None:
        cmd += ["--warmup-video", str(warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  {family:<15} {mode:<6} {row['video']:<34} {row['frames']:>6} frames "
        f"{row['wall_s']:7.2f} s {row['fps']:7.0f} f/s  peak {row['peak_mb']:6.1f} MB",
        flush=True,
    )
    return row


# --------------------------------------------------------------------------- the report


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def summarise(results: dict[str, dict[str, Any]], minutes: list[float]) -> list[dict[str, Any]]:
    """Per family: medians of the repeated runs and the ratios against the targets."""
    summary = []
    first, last = min(minutes), max(minutes)
    for family, runs in results.items():
        stream: dict[float, list[dict[str, Any]]] = runs["stream"]
        memory: list[dict[str, Any]] = runs["memory"]
        peaks = {m: _median(stream[m], "peak_mb") for m in minutes if stream.get(m)}
        fps = {m: _median(stream[m], "fps") for m in minutes if stream.get(m)}
        cpu_fps = {
            m: statistics.median(r["frames"] / r["cpu_s"] for r in stream[m])
            for m in minutes
            if stream.get(m)
        }
        mem_fps = _median(memory, "fps")
        mem_cpu_fps = (
            statistics.median(r["frames"] / r["cpu_s"] for r in memory) if memory else float("nan")
        )
        ran = sorted(peaks)
        summary.append(
            {
                "family": family,
                "ready_mb": _median(stream.get(first, []), "ready_mb"),
                "stream_peak_mb": peaks,
                "rss_ratio": peaks[ran[-1]] / peaks[first] if first in peaks else float("nan"),
                "rss_ratio_of": f"{ran[-1]:g}/{first:g} min" if ran else "",
                "memory_peak_mb": _median(memory, "peak_mb"),
                "stream_fps": fps,
                "stream_cpu_fps": cpu_fps,
                "memory_fps": mem_fps,
                "memory_cpu_fps": mem_cpu_fps,
                "speed_ratio": fps.get(first, float("nan")) / mem_fps,
                "cpu_speed_ratio": cpu_fps.get(first, float("nan")) / mem_cpu_fps,
                "same_answer": bool(memory)
                and bool(stream.get(first))
                and all(r["top"] == memory[0]["top"] for r in memory + stream[first]),
                "longest_ran": last in peaks,
            }
        )
    return summary


def print_table(summary: list[dict[str, Any]], minutes: list[float]) -> None:
    lengths = " ".join(f"{m:>6g}m" for m in minutes)
    print(
        f"\npeak RSS (MiB, VmHWM)      ready | streamed {lengths} | ratio (target "
        f"<= {TARGET_RSS_RATIO}) | in-memory 1m"
    )
    for s in summary:
        peaks = " ".join(
            f"{s['stream_peak_mb'][m]:7.0f}" if m in s["stream_peak_mb"] else "      -"
            for m in minutes
        )
        ok = "ok" if s["rss_ratio"] <= TARGET_RSS_RATIO else "MISS"
        print(
            f"  {s['family']:<22} {s['ready_mb']:7.0f} |          {peaks} | "
            f"{s['rss_ratio']:.3f} {s['rss_ratio_of']} {ok:<4} | {s['memory_peak_mb']:7.0f}"
        )
    print(
        "\nframes/s on the shortest video: streamed / in-memory (wall; process CPU in brackets)"
        " | streamed on the longer ones"
    )
    for s in summary:
        target = TARGET_SPEED.get(s["family"], DEFAULT_SPEED)
        first = min(s["stream_fps"]) if s["stream_fps"] else None
        ok = "ok" if s["speed_ratio"] >= target else "MISS"
        longer = " ".join(
            f"{m:g}m {s['stream_fps'][m]:.0f} ({s['stream_cpu_fps'][m]:.0f})"
            for m in minutes
            if m in s["stream_fps"] and m != first
        )
        print(
            f"  {s['family']:<15} {s['stream_fps'].get(first, float('nan')):6.0f} "
            f"({s['stream_cpu_fps'].get(first, float('nan')):5.0f}) / {s['memory_fps']:6.0f} "
            f"({s['memory_cpu_fps']:5.0f}) = {s['speed_ratio']:.2f}x "
            f"({s['cpu_speed_ratio']:.2f}x) target >= {target}x {ok:<4}"
            f" same answer: {'yes' if s['same_answer'] else 'NO'} | {longer}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--threads", type=int, default=2, help="network and decoder threads")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--repeats", type=int, default=5, help="alternating streamed/in-memory pairs, 1 minute"
    )
    parser.add_argument("--work-dir", type=Path, default=WORK, help="where the videos are kept")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    parser.add_argument("--json", type=Path, help="also write every run and the summary here")
    parser.add_argument("--worker", choices=("stream", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--warmup-video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first recognition in each process (default: after a 2 s warm-up video)",
    )
    args = parser.parse_args(argv)

    if args.worker:
        row = measure(
            args.families[0],
            args.worker,
            args.video,
            args.threads,
            args.batch_size,
            args.warmup_video,
        )
        print(json.dumps(row))
        return 0

    minutes = sorted(set(args.minutes))
    load_start = os.getloadavg()
    print(
        f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} {load_start[1]:.2f} "
        f"{load_start[2]:.2f}; threads {args.threads}, batch {args.batch_size}, "
        f"{args.repeats} repeats on {minutes[0]:g} min, "
        f"{'no warm-up' if args.no_warmup else f'after a {WARMUP_S:g} s warm-up video'}",
        flush=True,
    )
    videos = {m: video_for(args.work_dir, 60.0 * m) for m in minutes}
    warmup = None if args.no_warmup else video_for(args.work_dir, WARMUP_S)
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for family in args.families:
        stream: dict[float, list[dict[str, Any]]] = {m: [] for m in minutes}
        memory: list[dict[str, Any]] = []
        results[family] = {"stream": stream, "memory": memory}

        def one(mode: str, m: float, family: str = family) -> dict[str, Any]:
            return run_measurement(
                family, mode, videos[m], args.threads, args.batch_size, args.timeout, warmup
            )

        for _ in range(max(1, args.repeats)):
            stream[minutes[0]].append(one("stream", minutes[0]))
            memory.append(one("memory", minutes[0]))
        for m in minutes[1:]:
            stream[m].append(one("stream", m))
    load_end = os.getloadavg()
    summary = summarise(results, minutes)
    print_table(summary, minutes)
    print(
        f"\n{time.perf_counter() - started:.0f} s of measurements; load average at end "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}"
    )
    if args.json:
        payload = {
            "minutes": minutes,
            "threads": args.threads,
            "warmup": not args.no_warmup,
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "runs": {
                f: {"stream": {str(m): r for m, r in v["stream"].items()}, "memory": v["memory"]}
                for f, v in results.items()
            },
            "summary": summary,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
