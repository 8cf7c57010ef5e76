"""CPU inference throughput: PyTorch eager vs ONNX Runtime on the same inputs, per family.

Run: ``python bench/infer.py [--models c3d_vll ms3d ...] [--threads 2] [--repeats 5]``.

Each model is built from the registry with random weights (throughput does not depend on the
weights), exported with :func:`export.onnx.export_network` exactly as ``python -m export.onnx``
does, and both backends run the same ``(clips, 3, T, H, W)`` batch in one process, one after
the other, with the same number of threads (PyTorch intra-op threads and ONNX Runtime
``intra_op_num_threads``). Figures are clips/s from the median of ``--repeats`` timed runs
after one warm-up run; ``ratio`` is ONNX Runtime over eager. Target: ratio >= 1.3 for the
paper-size ``c3d_vll`` (16 x 112 x 112 clips).

``--int8`` also quantizes each graph with :func:`export.quantize.quantize_graph` (what
``python -m export.onnx --quantize int8`` writes, calibrated here on two random batches of
the spec: throughput does not depend on the values) and times it in the same run;
``int8x`` is int8 over fp32 ONNX Runtime clips/s. Target: >= 2.0 for ``c3d_vll`` and
``full_video``.

Default models: the paper-size ``c3d_vll``, ``ms3d`` and ``full_video`` (TSM ResNet-18 at 224,
``--frames`` frames per video) and ``attention_lstm_tiny``: the paper-size attention network
(VGG16 at 224 on every frame of 30-frame clips) takes minutes per timed run on two cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.onnx import export_network, onnx_forward
from export.quantize import quantize_graph
from models import create_model, get_spec

DEFAULT_MODELS = ["c3d_vll", "ms3d", "full_video", "attention_lstm_tiny"]


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocations, ONNX Runtime's first-run kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _RandomBatches:
    """A calibration data reader of random batches shaped like ``x``."""

    def __init__(self, x: torch.Tensor, count: int = 2) -> None:
        self._batches = [{"input": torch.randn_like(x).numpy()} for _ in range(count)]

    def get_next(self) -> dict | None:
        return self._batches.pop() if self._batches else None


def bench_model(
    name: str,
    *,
    clips: int,
    frames: int,
    repeats: int,
    threads: int,
    workdir: Path,
    int8: bool = False,
) -> dict[str, float]:
    """Clips/s of eager PyTorch and ONNX Runtime for one registered model."""
    torch.manual_seed(0)
    defaults = get_spec(name)
    model = create_model(name).eval()
    length = defaults.input_frames or frames
    x = torch.randn(clips, 3, length, *defaults.input_size)
    started = time.perf_counter()
    path = workdir / f"{name}.onnx"
    path.write_bytes(export_network(model, defaults).SerializeToString())
    export_s = time.perf_counter() - started
    forward = onnx_forward(path, threads=threads)
    with torch.inference_mode():
        eager_s = _median_seconds(lambda: model(x), repeats)
        ort_s = _median_seconds(lambda: forward(x), repeats)
        diff = float((model(x) - forward(x)).abs().max())
    extra: dict[str, float] = {}
    if int8:
        quantized = workdir / f"{name}.int8.onnx"
        quantize_graph(path, quantized, _RandomBatches(x), family=defaults.family)
        int8_forward = onnx_forward(quantized, threads=threads)
        int8_s = _median_seconds(lambda: int8_forward(x), repeats)
        extra = {"int8": clips / int8_s, "int8x": ort_s / int8_s}
    return {
        "clips": clips,
        "frames": length,
        "eager": clips / eager_s,
        "ort": clips / ort_s,
        "ratio": eager_s / ort_s,
        "max_abs_diff": diff,
        "export_s": export_s,
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registry names")
    parser.add_argument(
        "--clips", type=int, default=4, help="clips per batch (videos for whole-video models: 1)"
    )
    parser.add_argument(
        "--frames", type=int, default=32, help="frames per video for full_video models"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per backend (median)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both backends")
    parser.add_argument(
        "--int8", action="store_true", help="also time the int8 (QDQ) graph of each model"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} runs")
    int8_head = f" {'int8 clips/s':>12} {'int8x':>6}" if args.int8 else ""
    print(
        f"{'model':<22} {'input':<24} {'eager clips/s':>13} {'ORT clips/s':>12} "
        f"{'ratio':>6} {'max|diff|':>10}{int8_head}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            whole_video = get_spec(name).input_frames == 0
            clips = 1 if whole_video else args.clips
            r = bench_model(
                name,
                clips=clips,
                frames=args.frames,
                repeats=args.repeats,
                threads=args.threads,
                workdir=Path(tmp),
                int8=args.int8,
            )
            size = "x".join(str(s) for s in get_spec(name).input_size)
            shape = f"{clips}x3x{r['frames']}x{size}"
            print(
                f"{name:<22} {shape:<24} {r['eager']:>13.2f} {r['ort']:>12.2f} "
                f"{r['ratio']:>6.2f} {r['max_abs_diff']:>10.1e}"
                + (f" {r['int8']:>12.2f} {r['int8x']:>6.2f}" if args.int8 else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
