"""Training throughput per family: real optimisation steps of ``training.run``, in clips/s.

Run: ``python bench/train.py [--device cpu|cuda] [--preset demo|paper] [--family ...]``.

Each family's model is built exactly as ``python -m training.run --preset P`` builds it (the
preset's variant, optimizer and loss), and :func:`training.run.train_step` (the loop's own
step: autocast, backward, fp16 scaler, update) runs on a synthetic batch shaped like that
family's training batch:

- c3d_vll: ``batch_size`` videos x ``--clips-per-video`` clips (video-level loss with CCL);
- attention_lstm: video-level batches for ``demo``, ``batch_size`` single clips for ``paper``;
- ms3d: one N-pair batch of ``batch_size`` videos (one walk each);
- full_video: ``batch_size`` whole videos of ``--frames`` frames, clustering inside the net.

Throughput counts network inputs (clips; whole videos for full_video) per second, the median
of ``--repeats`` timed blocks of ``--steps`` steps after ``--warmup`` steps. On CUDA every
family runs twice in the same process: fp32 with the default memory format (the baseline) and
the loop's setting (bf16 autocast, or fp16 with a scaler, plus channels-last 3D for the 3D-conv
families); ``ratio`` is the second over the first. On CPU only the loop's setting runs (AMP
is CUDA-only in the loop), so there is no ratio.

The loss must stay finite over the timed steps, so each row is also a check that one real
training step per family works on that device.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model
from training.config import FAMILIES, Family, Preset, TrainConfig, apply_preset
from training.run import (
    channels_last_for,
    make_optimizer,
    mixed_precision,
    to_channels_last,
    to_device,
    train_step,
)
from training.tasks import Batch, Task, make_task


def _batch(task: Task, cfg: TrainConfig, *, clips_per_video: int, frames: int) -> Batch:
    """A random batch with the shapes and labels of ``task``'s training batches."""
    d = task.spec()
    classes = len(task.classes)
    g = torch.Generator().manual_seed(0)
    videos = cfg.batch_size
    if cfg.family == "full_video":
        length = d.segments if d.sampler == "uniform" else frames
        x = torch.randn(videos, 3, length, *d.input_size, generator=g)
        return Batch(x, torch.randint(classes, (videos,), generator=g))
    if cfg.family == "ms3d":
        x = torch.randn(videos, 3, d.input_frames, *d.input_size, generator=g)
        # N-pair: consecutive inputs are (anchor, positive) of one class.
        labels = torch.arange(videos // 2).repeat_interleave(2) % classes
        return Batch(x, labels)
    if not task.video_level():
        x = torch.randn(videos, 3, d.input_frames, *d.input_size, generator=g)
        return Batch(x, torch.randint(classes, (videos,), generator=g))
    x = torch.randn(videos * clips_per_video, 3, d.clip_len, *d.input_size, generator=g)
    clip_video = torch.arange(videos).repeat_interleave(clips_per_video)
    return Batch(x, torch.randint(classes, (videos,), generator=g), clip_video)


def bench_family(
    cfg: TrainConfig,
    device: torch.device,
    *,
    amp: bool,
    classes: int,
    steps: int,
    warmup: int,
    repeats: int,
    clips_per_video: int,
    frames: int,
) -> tuple[float, int]:
    """Inputs/s of ``training.run``'s step for one family and precision setting, and the
    number of inputs per step."""
    cfg = dataclasses.replace(cfg, amp=amp)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg, [f"class{i}" for i in range(classes)])
    model = (
        create_model(task.model_name, spec=task.spec(), **task.model_kwargs()).to(device).train()
    )
    channels_last = amp and channels_last_for(task, device)
    if channels_last:
        model = to_channels_last(model)
    optimizer = make_optimizer(cfg, model)
    autocast, scaler = mixed_precision(cfg, device)
    host = _batch(task, cfg, clips_per_video=clips_per_video, frames=frames)
    if device.type == "cuda":
        host = Batch(host.inputs.pin_memory(), host.labels, host.input_video)

    def block(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = torch.zeros(())
        for _ in range(n):
            batch = to_device(host, device, channels_last)  # the copy is part of a real step
            loss, _ = train_step(
                model,
                task,
                batch,
                optimizer,
                autocast=autocast,
                scaler=scaler,
                grad_clip=cfg.grad_clip,
            )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{cfg.family}: loss {float(loss)}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    block(warmup)
    seconds = statistics.median(block(steps) for _ in range(repeats))
    return steps * len(host.inputs) / seconds, len(host.inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--preset",
        choices=["demo", "paper"],
        default=None,
        help="model variant and hyperparameters (default: paper on CUDA, demo on CPU)",
    )
    parser.add_argument("--family", action="append", choices=list(FAMILIES))
    parser.add_argument(
        "--batch-size", type=int, default=0, help="videos (or clips) per step; 0: preset"
    )
    parser.add_argument("--clips-per-video", type=int, default=4, help="video-level batches")
    parser.add_argument("--frames", type=int, default=64, help="full_video frames per video")
    parser.add_argument("--classes", type=int, default=0, help="0: 101 for paper, 4 for demo")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    preset: Preset = args.preset or ("paper" if device.type == "cuda" else "demo")
    classes = args.classes or (101 if preset == "paper" else 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: cpu, {torch.get_num_threads()} threads, torch {torch.__version__}")
    modes = [("fp32", False), ("loop", True)] if device.type == "cuda" else [("loop", True)]
    header = f"{'family':<16}{'model':<22}{'inputs/step':>12}" + "".join(
        f"{m + ' in/s':>14}" for m, _ in modes
    )
    print(
        f"preset {preset}, {classes} classes\n"
        + header
        + (f"{'ratio':>8}" if len(modes) > 1 else "")
    )
    families: list[Family] = args.family or list(FAMILIES)
    for family in families:
        cfg = apply_preset(TrainConfig(family=family, preset=preset, data="-"), explicit=set())
        if args.batch_size:
            cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
        if family == "ms3d" and cfg.batch_size % 2:
            cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size + 1)
        results = [
            bench_family(
                cfg,
                device,
                amp=amp,
                classes=classes,
                steps=args.steps,
                warmup=args.warmup,
                repeats=args.repeats,
                clips_per_video=args.clips_per_video,
                frames=args.frames,
            )
            for _, amp in modes
        ]
        rates, inputs = [r for r, _ in results], results[0][1]
        row = f"{family:<16}{cfg.resolved_model():<22}{inputs:>12}" + "".join(
            f"{r:>14.1f}" for r in rates
        )
        print(row + (f"{rates[1] / rates[0]:>7.2f}x" if len(rates) > 1 else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
