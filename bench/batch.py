"""A folder of videos: one at a time in a loop, against ``python -m service.batch``, against
``service.batch --ray`` on a local Ray instance.

Run ``python bench/batch.py`` (not a timed test). It

1. writes ``--videos`` (200) ``--seconds`` (10) s 320x240 25 fps H.264 videos once into
   ``bench/_work/batch/videos/`` (``bench.long_video.write_long_video``: a panning gradient and
   a moving square), reused by later runs;
2. recognises the folder with one family's demo bundle (``--family``, default ``c3d_vll``),
   three ways, each in a fresh process:

   * **loop**: the in-process pipeline one video at a time, ``models.pipeline.decode_for``
     then ``predict_frames``, with the backend the service picks for the bundle (``auto``);
   * **batch**: ``python -m service.batch --workers W`` (default 2): decoding overlapped with
     inference, inference merged across videos;
   * **ray**: ``python -m service.batch --ray --ray-actors 2 --workers 1``: a local Ray
     instance (its CPUs: the machine's), two actors (skipped without Ray, or ``--no-ray``);

3. prints videos/s of each, over the whole command (interpreter start, imports, model load,
   Ray start-up included) and over the recognition alone (as each reports it), the ratio
   batch/loop (target >= 1.3 on 2 cores), the CPU seconds of each command (its process and
   the children it waited for; for the Ray run this misses worker processes Ray reaps
   itself), whether every video got the same top-1 label as in the loop, and the load average
   before and after: on a shared host a run with more threads also gets a larger share of the
   CPUs. The figures go to ``bench/_work/batch/results.json`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.long_video import write_long_video  # noqa: E402

BUNDLES = ROOT / "demo" / "bundles"
WORK = ROOT / "bench" / "_work" / "batch"
TARGET = 1.3
# service.batch's closing line on standard error.
_SUMMARY = re.compile(r"(\d+) videos in ([\d.]+) s")


def videos_for(work: Path, count: int, seconds: float) -> Path:
    """The folder of ``count`` cached videos, written on first use."""
    folder = work / f"videos-{count}x{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    made = 0
    for i in range(count):
        path = folder / f"v{i:04d}.mp4"
        if not path.exists():
            write_long_video(path, seconds=seconds)
            made += 1
    if made:
        print(f"wrote {made} videos in {time.perf_counter() - started:.1f} s", flush=True)
    return folder


def loop(bundle: Path, folder: Path, out: Path) -> None:
    """The baseline, in this process: each video decoded whole, then run, one at a time."""
    import torch

    from models.pipeline import decode_for, predict_frames
    from service.settings import Settings
    from service.store import ModelStore

    model = ModelStore(Settings(store=bundle.parent)).load_one(bundle)
    repo = model.repository
    centres = repo.centres_tensor() if repo is not None else None
    gamma = repo.gamma if repo is not None else None
    started = time.perf_counter()
    top1 = {}
    videos = sorted(folder.glob("*.mp4"))
    with torch.inference_mode():
        for path in videos:
            frames, _ = decode_for(path, model.spec)
            prediction = predict_frames(
                model.backend.forward,
                frames,
                model.spec,
                batch_size=model.batch_size,
                max_inputs=model.max_inputs,
                centres=centres,
                gamma=gamma,
            )
            top1[str(path)] = model.labels[int(prediction.scores.order[0])]
    seconds = time.perf_counter() - started
    out.write_text(json.dumps({"videos": len(videos), "seconds": seconds, "top1": top1}))


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the process and the children it waited
    for) and standard error of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stderr


def _batch_run(name: str, cmd: list[str], out: Path, count: int) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    wall, cpu, stderr = _timed([*cmd, "--out", str(out), "--no-progress"])
    match = _SUMMARY.search(stderr)
    assert match and int(match.group(1)) == count, stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in lines if "error" in r]
    assert len(lines) == count and not errors, errors[:3]
    top1 = {r["path"]: r["top5"][0]["label"] for r in lines}
    return _figures(name, count, wall, cpu, float(match.group(2)), top1)


def _figures(
    name: str, count: int, wall: float, cpu: float, seconds: float, top1: dict[str, str]
) -> dict[str, Any]:
    return {
        "run": name,
        "videos": count,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "recognition_s": round(seconds, 2),
        "videos_per_s": round(count / wall, 3),
        "recognition_videos_per_s": round(count / seconds, 3),
        "top1": top1,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--family", default="c3d_vll")
    p.add_argument("--videos", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--work-dir", type=Path, default=WORK)
    p.add_argument("--loop-into", type=Path, help=argparse.SUPPRESS)  # the loop's own process
    args = p.parse_args()
    name = f"{args.family}-move4digits"
    bundle = args.work_dir / "bundles" / name
    folder = videos_for(args.work_dir, args.videos, args.seconds)
    if args.loop_into is not None:
        loop(bundle, folder, args.loop_into)
        return
    # One copy for the three runs: the demo bundle may be retrained meanwhile.
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(BUNDLES / name, bundle)

    load_before = os.getloadavg()
    print(f"{args.videos} videos of {args.seconds:g} s, {bundle.name}, {os.cpu_count()} CPUs")
    runs = []
    loop_out = args.work_dir / "loop.json"
    wall, cpu, _ = _timed(
        [sys.executable, __file__, "--family", args.family, "--videos", str(args.videos),
         "--seconds", str(args.seconds), "--work-dir", str(args.work_dir),
         "--loop-into", str(loop_out)]
    )  # fmt: skip
    measured = json.loads(loop_out.read_text())
    runs.append(_figures("loop", args.videos, wall, cpu, measured["seconds"], measured["top1"]))
    batch = [sys.executable, "-m", "service.batch", "--model", str(bundle), str(folder)]
    runs.append(
        _batch_run(
            f"service.batch --workers {args.workers}",
            [*batch, "--workers", str(args.workers)],
            args.work_dir / "batch.jsonl",
            args.videos,
        )
    )
    if args.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray is not installed (pip install '.[scale]'): the --ray run is skipped")
        else:
            runs.append(
                _batch_run(
                    "service.batch --ray (2 local actors)",
                    [*batch, "--ray", "--ray-actors", "2", "--workers", "1"],
                    args.work_dir / "ray.jsonl",
                    args.videos,
                )
            )
    load_after = os.getloadavg()

    base = runs[0]
    columns = ("wall s", "videos/s", "recog. s", "videos/s", "x loop", "CPU s")
    print(f"{'run':<38} " + " ".join(f"{c:>9}" for c in columns))
    for run in runs:
        ratio = run["videos_per_s"] / base["videos_per_s"]
        run["vs_loop"] = round(ratio, 2)
        run["same_top1_as_loop"] = all(run["top1"][k] == v for k, v in base["top1"].items())
        print(
            f"{run['run']:<38} {run['wall_s']:>9.1f} {run['videos_per_s']:>9.2f} "
            f"{run['recognition_s']:>9.1f} {run['recognition_videos_per_s']:>9.2f} "
            f"{ratio:>8.2f}x {run['cpu_s']:>9.1f}"
            + ("" if run["same_top1_as_loop"] else "  (top-1 differs!)")
        )
    speedup = runs[1]["vs_loop"]
    verdict = "meets" if speedup >= TARGET else "misses"
    print(f"service.batch: {speedup:.2f}x the loop's videos/s ({verdict} the {TARGET}x target)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    summary = {
        "family": args.family,
        "videos": args.videos,
        "seconds_per_video": args.seconds,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "runs": [{k: v for k, v in r.items() if k != "top1"} for r in runs],
    }
    (args.work_dir / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
