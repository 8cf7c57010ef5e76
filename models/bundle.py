"""The model bundle: the contract between training, export and the service.

A bundle is a directory holding ``manifest.json`` (family, registry name and constructor
kwargs, class labels, the effective sampler and preprocessing, training config and metrics,
sha256 of every other file), ``weights.safetensors`` and, depending on the family and what has
been exported, ``repository.safetensors``, ``model.onnx`` and ``model.<gpu>.plan``.
Every file is written atomically; a bundle whose checksums do not match is refused whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models._defaults import ModelDefaults
from models._io import atomic_write, atomic_write_bytes, sha256_file
from models._registry import create_model

__all__ = [
    "FORMAT_VERSION",
    "BundleError",
    "Bundle",
    "write_bundle",
    "load_bundle",
    "add_bundle_file",
    "save_weights",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


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
    def defaults(self) -> ModelDefaults:
        """The effective preprocessing, sampler and aggregator the model was trained with."""
        return defaults_from_dict(self.manifest["preprocessing"])

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists; raises :class:`BundleError` if it does not."""
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.path} has no {name}")
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """Rebuild the network from the registry and load its weights (eval mode)."""
        model = create_model(self.model_name, **self.model_kwargs)
        state = load_file(str(self.file(WEIGHTS)), device=str(device))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BundleError(
                f"weights of {self.path} do not fit {self.model_name}: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model.to(device).eval()


def defaults_from_dict(data: dict[str, Any]) -> ModelDefaults:
    """Inverse of :meth:`ModelDefaults.to_dict` (lists back to tuples)."""
    known = {f.name for f in fields(ModelDefaults)}
    values = {k: v for k, v in data.items() if k in known}
    for key in ("input_size", "decode_size", "mean", "std"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return ModelDefaults(**values)


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
    defaults: ModelDefaults,
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
        model_kwargs: Constructor kwargs used to rebuild it (JSON-serialisable).
        family: Family name.
        labels: Class names in index order.
        defaults: Effective preprocessing/sampler/aggregator settings.
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
        "preprocessing": defaults.to_dict(),
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
    for key in ("format_version", "family", "model", "labels", "preprocessing", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks {key!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{directory}: bundle format {manifest['format_version']} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    if WEIGHTS not in manifest["files"]:
        raise BundleError(f"{directory}: manifest lists no {WEIGHTS}")
    if verify:
        for name, info in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"{directory}: {name} is missing")
            if sha256_file(path) != info["sha256"]:
                raise BundleError(f"{directory}: {name} fails its sha256 check; refusing the bundle")
    return Bundle(directory, manifest)


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
