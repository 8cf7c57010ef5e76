"""Model figures: parameters and FLOPs per video for every registered variant, and the
cost claims of the full-video paper's Table 1 (the paper is cited in models/full_video.py).

Run ``python bench/models.py`` (``make bench``). Three tables:

1. Every registered variant: parameters, the input each network sees, inputs per video and
   FLOPs per video. The reference video is 10 s at 25 fps (250 frames); its inputs come from the
   variant's own sampler and defaults (its :class:`~models.spec.VariantSpec`):
   clip families cost FLOPs per clip x clips, whole-video families one pass over all frames.
2. ``full_video`` (TSM ResNet-18, 224x224) on a 32-frame video: clustering into g = 8 / 16
   against TSM on 8, 16 and all 32 frames. The paper counts multiply-accumulates (its 58.24G
   for TSM on 32 frames is 32 x 1.82 GMACs of ResNet-18), so MACs = FLOPs / 2 are printed
   next to its numbers.
3. The clustering's share of the CPU forward time on the same video (2 threads): median of
   repeated full forward passes against the median of the clustering functions alone
   (distances, assignment, cluster means) on the same layer1 activations.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
products, 2 FLOPs per multiply-accumulate). Models are run on the ``meta`` device where they
allow it (no arithmetic happens), otherwise once on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model, get_spec, list_models
from models.pipeline import sample_video

# Family modules; importing one registers its variants. Missing ones are skipped, so the script
# runs while the package is still growing.
_FAMILY_MODULES = ("models.c3d_vll", "models.attention_lstm", "models.ms3d", "models.full_video")

REFERENCE_SECONDS = 10.0
REFERENCE_FPS = 25
REFERENCE_FRAMES = int(REFERENCE_SECONDS * REFERENCE_FPS)

# The full-video paper, Table 1 (Move4MNIST, TSM ResNet-18, 32-frame videos): "FLOPs / Video"
# in G.
PAPER_TABLE1 = {
    "TSM 8 frames": 14.56,
    "TSM 16 frames": 29.12,
    "TSM all 32 frames": 58.24,
    "Ours g=8 (all 32 frames)": 28.61,
    "Ours g=16 (all 32 frames)": 38.51,
}


def _import_families() -> list[str]:
    missing = []
    for name in _FAMILY_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            missing.append(name)
    return missing


def inputs_per_video(name: str, num_frames: int = REFERENCE_FRAMES) -> tuple[int, int]:
    """(inputs N, frames per input L) that the variant's sampler makes of a reference video."""
    # Flat grey frames: the samplers only need the count (p(z) falls back to its floor).
    frames = np.full((num_frames, 8, 8, 3), 128, dtype=np.uint8)
    indices = sample_video(frames, get_spec(name))
    return int(indices.shape[0]), int(indices.shape[1])


def count_flops(build: Callable[[], nn.Module], shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on a zero input of ``shape``; meta device first, else CPU."""
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build().eval()
            x = torch.zeros(shape, device=device)
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
            return int(counter.get_total_flops())
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def count_parameters(build: Callable[[], nn.Module]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def registry_table() -> list[dict]:
    rows = []
    for name in list_models():
        d = get_spec(name)
        n_inputs, length = inputs_per_video(name)
        shape = (1, 3, length, *d.input_size)
        build = functools.partial(create_model, name)
        flops = count_flops(build, shape)
        rows.append(
            {
                "model": name,
                "family": d.family,
                "params_m": count_parameters(build) / 1e6,
                "input": "x".join(map(str, shape[1:])),
                "inputs": n_inputs,
                "gflops_input": flops / 1e9,
                "gflops_video": flops * n_inputs / 1e9,
            }
        )
    return rows


def table1_rows(frames: int = 32, size: int = 224) -> list[dict]:
    """Paper Table 1's FLOPs for full_video ResNet-18 (num_classes 4 as on Move4MNIST)."""
    configs = [
        ("TSM 8 frames", "none", 8, 8),
        ("TSM 16 frames", "none", 16, 16),
        (f"TSM all {frames} frames", "none", 8, frames),
        (f"Ours g=8 (all {frames} frames)", "cumulative", 8, frames),
        (f"Ours g=16 (all {frames} frames)", "cumulative", 16, frames),
    ]
    rows = []
    for label, mode, g, t in configs:
        build = functools.partial(
            create_model,
            "full_video",
            spec=get_spec("full_video").replace(segments=g),
            num_classes=4,
            clustering=mode,
        )
        flops = count_flops(
            build,
            (1, 3, t, size, size),
        )
        paper = PAPER_TABLE1.get(label)
        rows.append({"config": label, "gflops": flops / 1e9, "gmacs": flops / 2e9, "paper": paper})
    return rows


def _timings(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(best, median) wall seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs.

    Both are reported: on a shared machine the best run is the closest to the code's own cost,
    the median shows what a loaded machine gives.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def clustering_share(frames: int, size: int, repeats: int, threads: int) -> dict:
    """How much of a CPU forward pass the clustering takes, per clustering mode.

    Two measurements on the same video: (1) in place: each forward runs stage by stage
    (``early_features``, ``cluster``, ``late_features`` + ``forward_head``, the same calls as
    ``forward``) with a clock between stages, so the clustering is timed inside real forward
    passes with their memory traffic; (2) alone: the clustering functions (distances,
    assignment, cluster means) repeated on one set of layer1 activations. Times are
    ``(best, median)`` seconds.
    """
    from models.clustering import (
        CLUSTERING_MODES,
        assign_clusters,
        cluster_means,
        hamming_distances,
    )
    from models.full_video import FullVideoNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, frames, size, size)
    result: dict = {}
    with torch.no_grad():
        baseline = create_model("full_video", num_classes=4, clustering="none").eval()
        result["none"] = {"forward": _timings(lambda: baseline(x), repeats, warmup=2)}
        for mode in CLUSTERING_MODES:
            model = cast(FullVideoNet, create_model("full_video", num_classes=4, clustering=mode))
            model.eval()
            g = model.num_clusters
            totals, inside = [], []
            for run in range(repeats + 2):
                start = time.perf_counter()
                activations = model.early_features(x)
                clustered_at = time.perf_counter()
                segments = model.cluster(activations)
                late_at = time.perf_counter()
                model.forward_head(model.late_features(segments))
                end = time.perf_counter()
                if run >= 2:  # the first runs warm the allocator and oneDNN's kernel cache
                    totals.append(end - start)
                    inside.append(late_at - clustered_at)

            def clustering(
                model_g: int = g, mode_: str = mode, acts: torch.Tensor = activations
            ) -> torch.Tensor:
                d = hamming_distances(acts)
                return cluster_means(acts, assign_clusters(d, model_g, mode_), model_g)

            alone = _timings(clustering, repeats * 4, warmup=2)
            shares = [c / t for c, t in zip(inside, totals)]
            result[mode] = {
                "forward": (min(totals), statistics.median(totals)),
                "inside": (min(inside), statistics.median(inside)),
                "alone": alone,
                "share_inside": statistics.median(shares),
                "share_alone": alone[0] / min(totals),
            }
        result["activation_shape"] = tuple(activations.shape)
    return result


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", type=int, default=32, help="frames of the full_video comparison (Table 1: 32)"
    )
    parser.add_argument(
        "--size", type=int, default=224, help="frame side for the full_video comparison"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed forward passes per configuration"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the timing")
    parser.add_argument(
        "--skip-timing", action="store_true", help="only count parameters and FLOPs"
    )
    args = parser.parse_args(argv)

    missing = _import_families()
    print(f"torch {torch.__version__}; registered: {len(list_models())} variants", end="")
    print(f"; not yet present: {', '.join(missing)}" if missing else "")
    print(
        f"\n== Every variant on a reference video of {REFERENCE_SECONDS:g} s at "
        f"{REFERENCE_FPS} fps ({REFERENCE_FRAMES} frames) =="
    )
    rows = registry_table()
    _print_table(
        [
            "model",
            "family",
            "params (M)",
            "input (C x L x H x W)",
            "inputs/video",
            "GFLOPs/input",
            "GFLOPs/video",
        ],
        [
            [
                r["model"],
                r["family"],
                f"{r['params_m']:.2f}",
                r["input"],
                str(r["inputs"]),
                f"{r['gflops_input']:.2f}",
                f"{r['gflops_video']:.2f}",
            ]
            for r in rows
        ],
    )

    print(
        f"\n== full_video (TSM ResNet-18, {args.size}x{args.size}) on a {args.frames}-frame "
        "video; full-video paper, Table 1 =="
    )
    t1 = table1_rows(args.frames, args.size)
    _print_table(
        ["configuration", "GFLOPs", "GMACs", "paper (G)"],
        [
            [
                r["config"],
                f"{r['gflops']:.2f}",
                f"{r['gmacs']:.2f}",
                f"{r['paper']:.2f}" if r["paper"] else "-",
            ]
            for r in t1
        ],
    )
    by_label = {r["config"]: r["gflops"] for r in t1}
    ours = by_label[f"Ours g=8 (all {args.frames} frames)"]
    ratio = ours / by_label[f"TSM all {args.frames} frames"]
    paper_ratio = PAPER_TABLE1["Ours g=8 (all 32 frames)"] / PAPER_TABLE1["TSM all 32 frames"]
    print(f"g=8 / all frames: {ratio:.3f} (paper: {paper_ratio:.3f}; target <= 0.55)")

    if args.skip_timing:
        return
    print(
        f"\n== Clustering share of the CPU forward time ({args.threads} threads, "
        f"{args.frames}x{args.size}x{args.size}, {args.repeats} timed forwards and "
        f"{args.repeats * 4} timed clusterings per mode) =="
    )
    share = clustering_share(args.frames, args.size, args.repeats, args.threads)
    print(f"layer1 activations per video: {share['activation_shape']}; times are best / median")
    share_rows: list[list[str]] = []
    for mode in ("cumulative", "slope", "uniform"):
        r = share[mode]
        share_rows.append(
            [
                mode,
                f"{r['forward'][0]:.3f} / {r['forward'][1]:.3f}",
                f"{r['inside'][0] * 1e3:.1f} / {r['inside'][1] * 1e3:.1f}",
                f"{r['alone'][0] * 1e3:.1f} / {r['alone'][1] * 1e3:.1f}",
                f"{r['share_inside']:.2%}",
                f"{r['share_alone']:.2%}",
            ]
        )
    none = share["none"]["forward"]
    share_rows.append(["none (TSM all)", f"{none[0]:.3f} / {none[1]:.3f}", "-", "-", "-", "-"])
    _print_table(
        [
            "mode",
            "forward (s)",
            "clustering in forward (ms)",
            "clustering alone (ms)",
            "share in forward (median)",
            "share alone (best/best)",
        ],
        share_rows,
    )
    print("target: share <= 3%")


if __name__ == "__main__":
    main()
