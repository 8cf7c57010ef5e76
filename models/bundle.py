"""The model bundle: the contract between training, export and the service.

A bundle is a directory holding ``manifest.json`` (family, registry name and network
kwargs, class labels, the effective variant spec, training config and metrics, sha256 of
every other file), ``weights.safetensors`` and, by family and export, ``repository.safetensors``,
``model.onnx`` and ``model.<gpu>.plan``. File names, ONNX tensor names and manifest fields
are named here and nowhere else. Every file is written atomically; a bundle whose checksums
do not match is refused whole.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.fileio import atomic_write, atomic_write_bytes, remove_stale_temps, sha256_file
from models.registry import create_model
from models.spec import VariantSpec

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "ONNX_EARLY_FILE",
    "ONNX_FILE",
    "ONNX_LATE_FILE",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "REPOSITORY_FILE",
    "TAILOR_BOXES_FILE",
    "WEIGHTS",
    "Bundle",
    "BundleError",
    "add_bundle_file",
    "is_bundle",
    "load_bundle",
    "plan_name",
    "save_weights",
    "write_bundle",
]

log = logging.getLogger(__name__)

# Format 2: the manifest's "spec" holds the variant spec (format 1 had "preprocessing", with
# the clip shape inside the sampler kwargs and again in the network kwargs; still read).
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
REPOSITORY_FILE = "repository.safetensors"
# A YOLO ONNX person detector of an ms3d bundle whose tailor strategy takes its boxes from one.
TAILOR_BOXES_FILE = "tailor_boxes.onnx"
ONNX_FILE = "model.onnx"
# full_video's streamed two-pass clustering runs its network in two parts: stem + layer1 on
# chunks of frames, and layer2 .. head on the g cluster means.
ONNX_EARLY_FILE = "model.early.onnx"
ONNX_LATE_FILE = "model.late.onnx"
# The exported network's one input (N, 3, T, H, W) and one output.
ONNX_INPUT = "input"
ONNX_OUTPUT = "output"


def plan_name(gpu_name: str) -> str:
    """``model.<sanitised gpu name>.plan``: lower case, runs of other characters as ``-``.

    >>> plan_name("NVIDIA H100 80GB HBM3")
    'model.nvidia-h100-80gb-hbm3.plan'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"GPU name {gpu_name!r} has no usable characters")
    return f"model.{slug}.plan"


def is_bundle(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` has a manifest (a bundle, valid or not)."""
    return (Path(directory) / MANIFEST).is_file()


class BundleError(Exception):
    """A bundle is missing, malformed, or fails its checksums."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk.

    Attributes:
        path: The bundle directory.
        manifest: The parsed ``manifest.json``.
    """

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.manifest["model"]["kwargs"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def spec(self) -> VariantSpec:
        """The effective variant spec the model was trained with; a file its tailor settings
        name (a YOLO detector) is resolved to the bundle's own, checksummed copy."""
        spec = VariantSpec.from_dict(self.manifest["spec"])
        boxes = spec.tailor.get("boxes", "motion")
        if boxes != "motion" and not Path(boxes).is_absolute():
            spec = spec.replace(tailor={**spec.tailor, "boxes": str(self.file(boxes))})
        return spec

    @property
    def config(self) -> dict[str, Any]:
        """The training config recorded at training time (empty if none)."""
        return dict(self.manifest.get("config") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        """The final evaluation figures recorded at training time (empty if none)."""
        return dict(self.manifest.get("metrics") or {})

    @property
    def eval_max_clips(self) -> int:
        """The cap on inputs per video the bundle was evaluated with (0: none)."""
        return int(self.config.get("eval_max_clips") or 0)

    @property
    def files(self) -> list[str]:
        """Names of the files the manifest lists."""
        return list(self.manifest["files"])

    def file_info(self, name: str) -> dict[str, Any]:
        """What the manifest records of file ``name`` (sha256 and export details)."""
        self.file(name)
        return dict(self.manifest["files"][name])

    def plans(self) -> list[str]:
        """TensorRT plans the bundle lists."""
        return [name for name in self.manifest["files"] if name.endswith(".plan")]

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists; raises :class:`BundleError` if it does not."""
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.path} has no {name}")
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """Rebuild the network from the registry and load its weights (eval mode)."""
        model = create_model(self.model_name, spec=self.spec, **self.model_kwargs)
        state = load_file(str(self.file(WEIGHTS)), device=str(device))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BundleError(
                f"weights of {self.path} do not fit {self.model_name}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model.to(device).eval()


def save_weights(path: str | os.PathLike, model: nn.Module) -> Path:
    """Write a model's state dict as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def write_bundle(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    family: str,
    labels: list[str],
    spec: VariantSpec,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Bundle:
    """Write weights and manifest; files already in ``directory`` (e.g. a repository) that the
    caller wrote first are checksummed too when listed in ``extra['files']``.

    Args:
        directory: The bundle directory (created if needed).
        model: The trained network.
        model_name: Registry name used to rebuild it.
        model_kwargs: Network kwargs used to rebuild it with ``spec`` (JSON-serialisable).
        family: Family name.
        labels: Class names in index order.
        spec: The effective variant spec (clip shape, sizes, sampler, aggregator).
        config: Training config (JSON-serialisable).
        metrics: Final evaluation figures.
        extra: Extra manifest keys; ``extra['files']`` lists other files in the bundle.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS, model)
    extra = dict(extra or {})
    other_files = list(extra.pop("files", []))
    manifest = {
        "format_version": FORMAT_VERSION,
        "family": family,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "labels": list(labels),
        "spec": spec.to_dict(),
        "config": config or {},
        "metrics": metrics or {},
        **extra,
        "files": {},
    }
    for name in [WEIGHTS, *other_files]:
        manifest["files"][name] = {"sha256": sha256_file(directory / name)}
    _write_manifest(directory, manifest)
    return Bundle(directory, manifest)


def add_bundle_file(bundle: Bundle | str | os.PathLike, name: str, **info: Any) -> Bundle:
    """Record a file just written into the bundle (e.g. ``model.onnx``) in the manifest."""
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["files"][name] = {"sha256": sha256_file(bundle.path / name), **info}
    _write_manifest(bundle.path, manifest)
    return Bundle(bundle.path, manifest)


def load_bundle(directory: str | os.PathLike, *, verify: bool = True) -> Bundle:
    """Read and verify a bundle.

    Raises:
        BundleError: No manifest, an unknown format version, a missing file, or a checksum
            mismatch; the message names the bundle and the file.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{directory} is not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path} is unreadable: {err}") from None
    if manifest.get("format_version") == 1:
        manifest = _from_format_1(manifest)
    for key in ("format_version", "family", "model", "labels", "spec", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks {key!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{directory}: bundle format {manifest['format_version']} is not supported "
            f"(this version reads 1 and {FORMAT_VERSION})"
        )
    try:
        VariantSpec.from_dict(manifest["spec"])
    except (TypeError, ValueError) as err:
        raise BundleError(f"{manifest_path}: bad spec: {err}") from None
    for stale in remove_stale_temps(directory):
        log.info("removed %s, left by an interrupted write", stale)
    if WEIGHTS not in manifest["files"]:
        raise BundleError(f"{directory}: manifest lists no {WEIGHTS}")
    if verify:
        for name, info in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"{directory}: {name} is missing")
            if sha256_file(path) != info["sha256"]:
                raise BundleError(
                    f"{directory}: {name} fails its sha256 check; refusing the bundle"
                )
    return Bundle(directory, manifest)


# Format 1 kept the clip shape in the sampler kwargs and repeated it in the network kwargs.
_V1_SHAPE_KEYS = {
    "clip_len": "clip_len",
    "sizes": "pathways",
    "min_frames": "segments",
    "num_segments": "segments",
}
_V1_NETWORK_SHAPE_KEYS = ("clip_len", "input_size", "pathway_sizes", "num_clusters")


def _from_format_1(manifest: dict[str, Any]) -> dict[str, Any]:
    """A format-1 manifest read as format 2 (in memory; the file is not rewritten)."""
    old = dict(manifest.get("preprocessing") or {})
    sampler_kwargs = dict(old.get("sampler_kwargs") or {})
    spec = {k: v for k, v in old.items() if k not in ("clip_len", "sampler_kwargs")}
    for key, field_name in _V1_SHAPE_KEYS.items():
        if key in sampler_kwargs:
            spec[field_name] = sampler_kwargs.pop(key)
    if old.get("sampler") == "consecutive":
        spec.setdefault("clip_len", old.get("clip_len", 0))
        # Format 1 spelled out the default (non-overlapping) stride.
        span = (spec["clip_len"] - 1) * sampler_kwargs.get("frame_step", 1) + 1
        if sampler_kwargs.get("stride") == span:
            del sampler_kwargs["stride"]
    spec["sampler_kwargs"] = sampler_kwargs
    model = dict(manifest.get("model") or {})
    kwargs = dict(model.get("kwargs") or {})
    for key in _V1_NETWORK_SHAPE_KEYS:
        kwargs.pop(key, None)
    model["kwargs"] = kwargs
    out = {k: v for k, v in manifest.items() if k != "preprocessing"}
    return {**out, "format_version": FORMAT_VERSION, "model": model, "spec": spec}


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default).encode()
    atomic_write_bytes(directory / MANIFEST, data + b"\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
