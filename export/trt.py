"""Build a TensorRT 10.x engine from a bundle's ONNX, with the clustering as a plugin.

``python -m export.trt --bundle DIR [--fp16] [--workspace-gb N] [--max-frames N]`` registers
the ``TemporalCluster`` plugin (:mod:`export.plugin`), parses ``DIR/model.onnx``, builds one
optimisation profile from the dimension ranges the manifest records, and writes
``DIR/model.<gpu-name>.plan`` atomically, recorded in the manifest (GPU, TensorRT version,
precision, profile). The builder's timing cache is kept beside the bundle. A bundle with
full_video's two stage graphs (``model.early.onnx``, ``model.late.onnx``; see
:mod:`export.onnx`) also gets ``model.early.<gpu-name>.plan`` and ``model.late.<gpu-name>.plan``
(:func:`stage_plan_name`), profiles from their manifest entries (:func:`stage_profiles`).

``tensorrt`` is imported lazily; without it the command exits with status 2 and one line
saying what to install. Precision and profiles: docs/export.md#tensorrt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from models.bundle import (
    ONNX_EARLY_FILE,
    ONNX_FILE,
    ONNX_INPUT,
    ONNX_LATE_FILE,
    Bundle,
    BundleError,
    add_bundle_file,
    load_bundle,
    plan_name,
)
from models.fileio import atomic_write_bytes

__all__ = [
    "TensorRTMissing",
    "INSTALL_HINT",
    "STAGE_FILES",
    "build_engine",
    "profile_shapes",
    "stage_plan_name",
    "stage_profiles",
    "main",
]

# full_video's stage graphs, each built into its own plan.
STAGE_FILES = (ONNX_EARLY_FILE, ONNX_LATE_FILE)
Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


INSTALL_HINT = (
    "export.trt needs TensorRT 10.x and an NVIDIA GPU: pip install 'tensorrt>=10,<11' "
    "(or pip install -e '.[tensorrt]')"
)


class TensorRTMissing(RuntimeError):
    """``tensorrt`` is not importable or no CUDA device is present."""


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    import torch

    if not torch.cuda.is_available():
        raise TensorRTMissing(
            "export.trt needs a CUDA device; none is visible (TensorRT builds per GPU)"
        )
    return trt


def stage_plan_name(onnx_file: str, gpu_name: str) -> str:
    """The plan of one stage graph: its name with the GPU's as in :func:`plan_name`.

    >>> stage_plan_name("model.early.onnx", "NVIDIA H100 80GB HBM3")
    'model.early.nvidia-h100-80gb-hbm3.plan'
    """
    return onnx_file.removesuffix(".onnx") + plan_name(gpu_name).removeprefix("model")


def stage_profiles(bundle: Bundle, gpu_name: str) -> list[tuple[str, str, Shapes]]:
    """``(onnx file, plan file, (min, opt, max) shapes)`` of each stage graph the bundle lists
    (none for a bundle without them), from their manifest entries: the early graph's frames
    from 1 over the stream's chunk to the chunk plus the shift's context on both sides, the
    late graph's one fixed shape."""
    return [
        (name, stage_plan_name(name, gpu_name), profile_shapes(bundle.file_info(name)))
        for name in STAGE_FILES
        if bundle.has(name)
    ]


def profile_shapes(onnx_info: dict[str, Any], *, max_frames: int | None = None) -> Shapes:
    """``(min, opt, max)`` input shapes from the manifest entry of an ONNX file.

    Named axes (``clips``, ``frames``) take their ranges from ``onnx_info["dims"]``;
    ``max_frames`` overrides the largest frame count (and caps the optimum).

    Raises:
        BundleError: The entry lacks the input shape or a named axis' range.
    """
    try:
        shape = onnx_info["inputs"][0]["shape"]
        dims = onnx_info["dims"]
    except (KeyError, IndexError):
        raise BundleError(
            "manifest entry of the ONNX file lacks inputs/dims; re-run python -m export.onnx"
        ) from None
    ranges = {name: [int(r["min"]), int(r["opt"]), int(r["max"])] for name, r in dims.items()}
    if max_frames is not None and "frames" in ranges:
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        low, opt, _ = ranges["frames"]
        ranges["frames"] = [min(low, max_frames), min(opt, max_frames), max_frames]
    out: list[list[int]] = [[], [], []]
    for axis in shape:
        if isinstance(axis, str):
            if axis not in ranges:
                raise BundleError(f"manifest gives no range for input axis {axis!r}")
            for k in range(3):
                out[k].append(ranges[axis][k])
        else:
            for k in range(3):
                out[k].append(int(axis))
    return tuple(out[0]), tuple(out[1]), tuple(out[2])


def _parse(trt: Any, network: Any, logger: Any, path: Path) -> Any:
    """Parse ``path`` into ``network`` (from the file, so external data is found beside it);
    returns the parser, which owns the weights and must live until the build is done."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {path}: {errors}")
    return parser


def build_engine(
    bundle: Bundle | str | os.PathLike,
    *,
    fp16: bool = False,
    workspace_gb: float = 4.0,
    max_frames: int | None = None,
) -> Bundle:
    """Build and record ``model.<gpu-name>.plan`` for the current GPU, and the plans of the
    stage graphs when the bundle has them (:func:`stage_profiles`).

    Args:
        bundle: A bundle that already holds ``model.onnx``.
        fp16: Allow FP16 kernels (weakly typed network + FP16 flag); FP32 otherwise.
        workspace_gb: Builder workspace limit, GiB.
        max_frames: Largest frame count the ``full_video`` profile of ``model.onnx`` accepts
            (the early stage's comes from its manifest entry).

    Returns:
        The reloaded bundle.

    Raises:
        TensorRTMissing: No ``tensorrt`` or no CUDA device.
        BundleError: No ``model.onnx`` in the bundle, or its manifest entry is incomplete.
        RuntimeError: TensorRT failed to parse or build (its messages included).
    """
    trt = _import_tensorrt()
    import torch

    from export.plugin import register

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    onnx_info = bundle.file_info(ONNX_FILE)
    shapes = profile_shapes(onnx_info, max_frames=max_frames)
    if onnx_info.get("custom_ops"):
        # Before parsing: the parser prefers a registered plugin to the node's local function.
        register()

    gpu = torch.cuda.get_device_name()
    plan = plan_name(gpu)
    cache_path = (
        bundle.path.parent / f"{bundle.name}.{plan[len('model.') : -len('.plan')]}.timing-cache"
    )
    builder = _Builder(trt, fp16=fp16, workspace_gb=workspace_gb, cache_path=cache_path)
    builds = [(ONNX_FILE, plan, shapes), *stage_profiles(bundle, gpu)]
    for onnx_file, plan_file, file_shapes in builds:
        info = bundle.file_info(onnx_file)
        builder.build(bundle.file(onnx_file), file_shapes, bundle.path / plan_file)
        names = ("min", "opt", "max")
        bundle = add_bundle_file(
            bundle,
            plan_file,
            gpu=gpu,
            tensorrt=trt.__version__,
            onnx=onnx_file,
            precision="fp16" if fp16 else "fp32",
            strongly_typed=builder.strongly_typed,
            profiles=[{ONNX_INPUT: {k: list(s) for k, s in zip(names, file_shapes)}}],
            workspace_gb=workspace_gb,
            plugins=[f"{op['plugin_namespace']}::{op['op']}" for op in info.get("custom_ops", [])],
            timing_cache=cache_path.name,
        )
    return bundle


class _Builder:
    """One TensorRT builder and timing cache for the plans of a bundle."""

    def __init__(self, trt: Any, *, fp16: bool, workspace_gb: float, cache_path: Path) -> None:
        self.trt = trt
        self.fp16 = fp16
        self.workspace = int(workspace_gb * (1 << 30))
        self.cache_path = cache_path
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        flags = trt.NetworkDefinitionCreationFlag
        self.strongly_typed = not fp16 and hasattr(flags, "STRONGLY_TYPED")
        self.flags = 1 << int(flags.STRONGLY_TYPED) if self.strongly_typed else 0

    def build(self, onnx_path: Path, shapes: Shapes, plan_path: Path) -> None:
        """Parse ``onnx_path``, build it for one profile of ``shapes``, write ``plan_path``
        and the timing cache atomically."""
        trt = self.trt
        network = self.builder.create_network(self.flags)
        parser = _parse(trt, network, self.logger, onnx_path)
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = self.builder.create_optimization_profile()
        profile.set_shape(ONNX_INPUT, *shapes)
        config.add_optimization_profile(profile)
        path = self.cache_path
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = self.builder.build_serialized_network(network, config)
        del parser  # only now: the network's weights were the parser's
        if serialized is None:
            raise RuntimeError(
                f"TensorRT failed to build an engine from {onnx_path} (see the log above)"
            )
        atomic_write_bytes(plan_path, bytes(serialized))
        atomic_write_bytes(path, bytes(config.get_timing_cache().serialize()))


def main(argv: list[str] | None = None) -> int:
    """``python -m export.trt``: 0 built, 1 failed, 2 TensorRT or a GPU missing."""
    parser = argparse.ArgumentParser(
        prog="python -m export.trt", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", required=True, help="model bundle directory (with model.onnx)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace, GiB")
    parser.add_argument(
        "--max-frames", type=int, default=None, help="largest frame count (full_video)"
    )
    args = parser.parse_args(argv)
    try:
        _import_tensorrt()
    except TensorRTMissing as err:
        print(err, file=sys.stderr)
        return 2
    try:
        bundle = build_engine(
            args.bundle, fp16=args.fp16, workspace_gb=args.workspace_gb, max_frames=args.max_frames
        )
    except (BundleError, RuntimeError, ValueError) as err:
        print(f"export.trt failed: {err}", file=sys.stderr)
        return 1
    plans = bundle.plans()
    print(f"wrote {', '.join(str(bundle.path / p) for p in plans)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
