"""Build TensorRT engines (10.9 to 11.x) from a bundle's ONNX, with the clustering as a plugin.

``python -m export.trt --bundle DIR [--fp16] [--plugin aot|jit|none] [--workspace-gb N]
[--max-frames N]`` parses ``DIR/model.onnx`` (``model.fp16.onnx`` with ``--fp16``) into a
strongly typed network, builds one optimisation profile from the dimension ranges the
manifest records, and writes ``DIR/model.<gpu-name>.plan`` atomically, recorded in the
manifest (GPU, TensorRT version, precision, profile, the plugin layers the parser really
made). A bundle with full_video's two stage graphs (``model.early.onnx``, ``model.late.onnx``;
see :mod:`export.onnx`) also gets ``model.early.<gpu-name>.plan`` and
``model.late.<gpu-name>.plan`` (:func:`stage_plan_name`), profiles from their manifest
entries (:func:`stage_profiles`).

``--plugin`` says how the ``TemporalCluster`` node is built: ``aot`` (default) embeds the
plugin's ahead-of-time kernel, so the plan loads in any TensorRT runtime; ``jit`` runs the
plugin's Python implementation (the loading process registers :mod:`export.plugin`);
``none`` expands the node's ONNX function into standard layers. After parsing, the network
is checked for the plugin layer: a parser that silently used the function instead is an
error for ``aot``/``jit``, and what was built is what the manifest records.

The builder's timing cache is kept beside the bundle, one file per GPU, compute capability
and TensorRT version (:func:`export.trt_compat.timing_cache_name`); a cache the builder
refuses is replaced, and the cache is written before the plan.

``tensorrt`` is imported lazily; without it (or outside 10.9 .. 11.x, or without a GPU) the
command exits with status 2 and one line saying what to install. Precision, profiles and the
plugin: docs/export.md#tensorrt.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from export.fp16 import fp16_name
from export.trt_compat import (
    MAX_TENSORRT,
    MIN_TENSORRT,
    PLUGIN_MODES,
    TensorRTUnsupported,
    import_tensorrt,
    network_flags,
    plugin_layers,
    timing_cache_name,
)
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
    "plugin_record",
    "prepare_for_parser",
    "profile_shapes",
    "stage_plan_name",
    "stage_profiles",
    "main",
]

log = logging.getLogger(__name__)

# full_video's stage graphs, each built into its own plan.
STAGE_FILES = (ONNX_EARLY_FILE, ONNX_LATE_FILE)
Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
# The custom node export.onnx writes (export.onnx holds the same names; not imported here so
# that this module stays light).
_CLUSTER_DOMAIN = "actrec"
_CLUSTER_OP = "TemporalCluster"
# The plugin's attributes in its declared order (export.plugin).
_PLUGIN_ATTRIBUTES = ("num_clusters", "method")

_RANGE = f">={MIN_TENSORRT[0]}.{MIN_TENSORRT[1]},<{MAX_TENSORRT[0]}"
INSTALL_HINT = (
    f"export.trt needs TensorRT {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} to "
    f"{MAX_TENSORRT[0] - 1}.x and an NVIDIA GPU: pip install 'tensorrt{_RANGE}' "
    "(or pip install -e '.[tensorrt]')"
)


class TensorRTMissing(RuntimeError):
    """``tensorrt`` is not importable, unsupported, or no CUDA device is present."""


def _import_tensorrt() -> Any:
    try:
        trt = import_tensorrt()
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    except TensorRTUnsupported as err:
        raise TensorRTMissing(str(err)) from None
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


def prepare_for_parser(proto: onnx.ModelProto, plugin: str) -> onnx.ModelProto:
    """A copy of ``proto`` whose ``TemporalCluster`` nodes ask TensorRT's parser for what
    ``plugin`` says: ``aot`` adds the integer attribute ``aot=1`` (the parser then takes the
    plugin's ahead-of-time implementation), ``jit`` drops it, ``none`` also drops
    ``plugin_namespace`` so that no registered plugin can match and the node's ONNX function
    is expanded. ``num_clusters`` and ``method`` come first, in the plugin's order: TensorRT
    passes the node's attributes to ``aot_impl`` by position. ONNX Runtime runs every variant
    alike (the function).

    Raises:
        ValueError: ``plugin`` is not one of :data:`export.trt_compat.PLUGIN_MODES`.
    """
    if plugin not in PLUGIN_MODES:
        raise ValueError(f"plugin must be one of {PLUGIN_MODES}, got {plugin!r}")
    out = copy.deepcopy(proto)
    dropped = {"aot"} if plugin != "none" else {"aot", "plugin_namespace"}
    for node in out.graph.node:
        if node.domain != _CLUSTER_DOMAIN or node.op_type != _CLUSTER_OP:
            continue
        kept = [a for a in node.attribute if a.name not in dropped]
        kept.sort(key=_attribute_rank)
        del node.attribute[:]
        node.attribute.extend(kept)
        if plugin == "aot":
            node.attribute.append(helper.make_attribute("aot", 1))
    return out


def _attribute_rank(attribute: onnx.AttributeProto) -> int:
    names = _PLUGIN_ATTRIBUTES
    return names.index(attribute.name) if attribute.name in names else len(names)


def _parse(trt: Any, network: Any, logger: Any, path: Path) -> Any:
    """Parse ``path`` into ``network`` (from the file, so external data is found beside it);
    returns the parser, which owns the weights and must live until the build is done."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {path}: {errors}")
    return parser


@dataclass(frozen=True)
class _Job:
    """One plan to build: its source graph (as recorded), the file parsed, shapes, output."""

    onnx_file: str
    parse_path: Path
    shapes: Shapes
    plan_file: str
    custom_ops: list[dict[str, Any]]


def build_engine(
    bundle: Bundle | str | os.PathLike,
    *,
    fp16: bool = False,
    plugin: str = "aot",
    workspace_gb: float = 4.0,
    max_frames: int | None = None,
) -> Bundle:
    """Build and record ``model.<gpu-name>.plan`` for the current GPU, and the plans of the
    stage graphs when the bundle has them (:func:`stage_profiles`).

    Args:
        bundle: A bundle that already holds ``model.onnx`` (and ``model.fp16.onnx`` and its
            stage graphs' FP16 twins for ``fp16``).
        fp16: Build the FP16 graphs (strongly typed: FP16 where :mod:`export.onnx` made it
            FP16, the clustering and reductions in FP32); FP32 otherwise.
        plugin: ``"aot"``, ``"jit"`` or ``"none"`` (module docstring).
        workspace_gb: Builder workspace limit, GiB.
        max_frames: Largest frame count the ``full_video`` profile of ``model.onnx`` accepts
            (the early stage's comes from its manifest entry).

    Returns:
        The reloaded bundle.

    Raises:
        TensorRTMissing: No ``tensorrt`` (10.9 .. 11.x) or no CUDA device.
        BundleError: A graph to build is missing, or its manifest entry is incomplete.
        RuntimeError: TensorRT failed to parse or build (its messages included), or the
            parser did not make the plugin layer ``plugin`` asked for.
    """
    trt = _import_tensorrt()
    import torch

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if plugin not in PLUGIN_MODES:
        raise ValueError(f"plugin must be one of {PLUGIN_MODES}, got {plugin!r}")
    gpu = torch.cuda.get_device_name()
    plan = plan_name(gpu)
    jobs = _jobs(bundle, gpu, plan, fp16=fp16, max_frames=max_frames)
    if plugin != "none" and any(job.custom_ops for job in jobs):
        from export.plugin import register

        register()  # before parsing: the parser looks registered plugins up by name
    capability = torch.cuda.get_device_capability()
    slug = plan.removeprefix("model.").removesuffix(".plan")
    cache_path = bundle.path.parent / timing_cache_name(
        bundle.name, slug, capability, trt.__version__
    )
    builder = _Builder(trt, workspace_gb=workspace_gb, cache_path=cache_path, plugin=plugin)
    names = ("min", "opt", "max")
    for job in jobs:

        def record(layers: list[dict[str, str]], job: _Job = job) -> dict[str, Any]:
            return plugin_record(job.onnx_file, bool(job.custom_ops), plugin, layers)

        with _parse_ready(bundle, job, plugin) as path:
            outcome = builder.build(path, job.shapes, bundle.path / job.plan_file, record)
        bundle = add_bundle_file(
            bundle,
            job.plan_file,
            gpu=gpu,
            capability=list(capability),
            tensorrt=trt.__version__,
            onnx=job.onnx_file,
            precision="fp16" if fp16 else "fp32",
            strongly_typed=True,
            profiles=[{ONNX_INPUT: {k: list(s) for k, s in zip(names, job.shapes)}}],
            workspace_gb=workspace_gb,
            **outcome.plugins,
            timing_cache=outcome.cache_name,
            timing_cache_reused=outcome.cache_reused,
        )
    return bundle


def plugin_record(
    onnx_file: str, clusters: bool, plugin: str, layers: list[dict[str, str]]
) -> dict[str, Any]:
    """What a plan's manifest entry says of its clustering, from the plugin layers the parsed
    network really holds (:func:`export.trt_compat.plugin_layers`): ``plugins`` (their ids),
    ``plugin_impl`` (``"aot"``/``"jit"``; ``"onnx-function"`` when the node was expanded;
    ``None`` for a graph without the node) and ``plugin_layers`` (their names).

    Raises:
        RuntimeError: The graph has the node, ``plugin`` asked for the plugin, and the
            parser made no plugin layer (it expanded the node's ONNX function instead).
    """
    if clusters and plugin != "none" and not layers:
        raise RuntimeError(
            f"TensorRT's parser did not map {onnx_file}'s {_CLUSTER_OP} node to the plugin "
            "(it expanded the node's ONNX function); no plan written. Use --plugin none to "
            "build from the function on purpose."
        )
    found = sorted({layer["plugin"] or "?" for layer in layers})
    impl = (plugin if found else "onnx-function") if clusters else None
    return {"plugins": found, "plugin_impl": impl, "plugin_layers": [x["layer"] for x in layers]}


def _jobs(bundle: Bundle, gpu: str, plan: str, *, fp16: bool, max_frames: int | None) -> list[_Job]:
    """The plans to build: ``model.onnx`` (or its FP16 twin) and the stage graphs."""

    def source(name: str) -> str:
        wanted = fp16_name(name) if fp16 else name
        if not bundle.has(wanted):
            raise BundleError(
                f"{bundle.path} has no {wanted}; run python -m export.onnx --bundle "
                f"{bundle.path}{' --fp16' if fp16 else ''}"
            )
        return wanted

    main_file = source(ONNX_FILE)
    info = bundle.file_info(main_file)
    jobs = [
        _Job(
            main_file,
            bundle.file(main_file),
            profile_shapes(bundle.file_info(ONNX_FILE), max_frames=max_frames),
            plan,
            list(info.get("custom_ops", [])),
        )
    ]
    for name, plan_file, shapes in stage_profiles(bundle, gpu):
        stage_file = source(name)
        jobs.append(_Job(stage_file, bundle.file(stage_file), shapes, plan_file, []))
    return jobs


class _parse_ready:
    """Context manager: the path to parse for ``job``, a prepared copy of the graph
    (:func:`prepare_for_parser`) in the bundle directory when it holds the custom node."""

    def __init__(self, bundle: Bundle, job: _Job, plugin: str) -> None:
        self.bundle, self.job, self.plugin = bundle, job, plugin
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if not self.job.custom_ops:
            return self.job.parse_path
        proto = prepare_for_parser(onnx.load(str(self.job.parse_path)), self.plugin)
        handle, name = tempfile.mkstemp(suffix=".parse.onnx", dir=self.bundle.path)
        os.close(handle)
        self.tmp = Path(name)
        self.tmp.write_bytes(proto.SerializeToString())
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Outcome:
    plugins: dict[str, Any]  # plugin_record of the parsed network
    cache_name: str | None
    cache_reused: bool


class _Builder:
    """One TensorRT builder and timing cache for the plans of a bundle."""

    def __init__(self, trt: Any, *, workspace_gb: float, cache_path: Path, plugin: str) -> None:
        self.trt = trt
        self.workspace = int(workspace_gb * (1 << 30))
        self.cache_path = cache_path
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.flags = network_flags(trt, plugin)

    def _timing_cache(self, config: Any) -> bool:
        """Attach the cache file's timing cache (a fresh one if there is none or the builder
        refuses it: another TensorRT or GPU wrote it, or it is damaged); whether the file's
        was taken."""
        path = self.cache_path
        if path.is_file():
            cache = config.create_timing_cache(path.read_bytes())
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return True
            log.warning("%s does not fit this TensorRT/GPU; starting a new timing cache", path)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise RuntimeError("TensorRT refused a new timing cache")
        return False

    def build(
        self,
        onnx_path: Path,
        shapes: Shapes,
        plan_path: Path,
        record: Callable[[list[dict[str, str]]], dict[str, Any]],
    ) -> _Outcome:
        """Parse ``onnx_path``; ``record`` the parsed network's plugin layers (it raises to
        stop before the build); build for one profile of ``shapes``; write the timing cache,
        then ``plan_path``, atomically."""
        trt = self.trt
        network = self.builder.create_network(self.flags)
        parser = _parse(trt, network, self.logger, onnx_path)
        plugins = record(plugin_layers(trt, network))
        config = self.builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        profile = self.builder.create_optimization_profile()
        profile.set_shape(ONNX_INPUT, *shapes)
        config.add_optimization_profile(profile)
        reused = self._timing_cache(config)
        serialized = self.builder.build_serialized_network(network, config)
        del parser  # only now: the network's weights were the parser's
        if serialized is None:
            raise RuntimeError(
                f"TensorRT failed to build an engine from {onnx_path} (see the log above)"
            )
        cache = config.get_timing_cache()
        cache_name = None
        if cache is not None:
            atomic_write_bytes(self.cache_path, bytes(cache.serialize()))
            cache_name = self.cache_path.name
        atomic_write_bytes(plan_path, bytes(serialized))
        return _Outcome(plugins, cache_name, reused)


def main(argv: list[str] | None = None) -> int:
    """``python -m export.trt``: 0 built, 1 failed, 2 TensorRT or a GPU missing."""
    parser = argparse.ArgumentParser(
        prog="python -m export.trt", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", required=True, help="model bundle directory (with model.onnx)")
    parser.add_argument(
        "--fp16", action="store_true", help="build model.fp16.onnx (python -m export.onnx --fp16)"
    )
    parser.add_argument(
        "--plugin",
        choices=PLUGIN_MODES,
        default="aot",
        help="TemporalCluster as the AOT kernel (default), the Python plugin, or ONNX layers",
    )
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
            args.bundle,
            fp16=args.fp16,
            plugin=args.plugin,
            workspace_gb=args.workspace_gb,
            max_frames=args.max_frames,
        )
    except (BundleError, RuntimeError, ValueError) as err:
        print(f"export.trt failed: {err}", file=sys.stderr)
        return 1
    plans = bundle.plans()
    print(f"wrote {', '.join(str(bundle.path / p) for p in plans)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
