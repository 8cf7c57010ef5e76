"""A Triton Inference Server model repository from a bundle.

``python -m export.triton --bundle B --out REPO [--backend onnxruntime|tensorrt]
[--max-batch N] [--name NAME] [--instances N] [--gpu NAME]`` writes, for a bundle named
``NAME`` (default: the bundle's directory name):

- ``REPO/NAME_net``: the network, ``1/model.onnx`` (ONNX Runtime backend) or ``1/model.plan``
  (TensorRT backend: the bundle's plan for ``--gpu``, or its only plan), with dynamic
  batching up to ``--max-batch`` clips, ``--instances`` GPU instances, and the input and
  output shapes the manifest records (named axes become ``-1``).
- ``REPO/NAME_early`` and ``REPO/NAME_late`` for a full_video bundle with its stage graphs
  (their plans for TensorRT): the two networks of the streamed two-pass clustering.
- ``REPO/NAME``: the entry point, a Python-backend step (:mod:`export.triton_step`) that
  takes a video file's bytes, decodes, samples and aggregates with the project's pipeline
  and calls the models above; ``1/step.json`` holds what it needs of the bundle (spec,
  labels, batch, the ms3d repository file copied beside it).

Each ``config.pbtxt`` is Triton's model configuration in protobuf text format
(``model_config.proto``; tests parse them with the protobuf ``tritonclient`` ships). The
Python backend imports this project: the server's image must have it installed (recipe:
docker/Dockerfile.tritonserver). Layout and limits: docs/export.md#triton-inference-server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from export.fp16 import fp16_name
from export.triton_step import STEP_FILE, STEP_FORMAT
from export.trt_runtime import plugin_impl
from models.bundle import (
    ONNX_EARLY_FILE,
    ONNX_FILE,
    ONNX_INPUT,
    ONNX_LATE_FILE,
    ONNX_OUTPUT,
    REPOSITORY_FILE,
    Bundle,
    BundleError,
    load_bundle,
    plan_name,
)

__all__ = ["BACKENDS", "TritonExportError", "Enum", "model_config", "pbtxt", "write_repository"]

BACKENDS = ("onnxruntime", "tensorrt")
# Requests the server may hold to fill a batch, microseconds.
QUEUE_DELAY_US = 2000
_MODEL_PY = '''"""Triton Python backend entry of an actrec bundle (code: export.triton_step)."""

from export.triton_step import TritonPythonModel  # noqa: F401
'''


class TritonExportError(RuntimeError):
    """The bundle cannot become a repository as asked (no ONNX export, no plan...)."""


@dataclass(frozen=True)
class Enum:
    """A protobuf enum value in text format (written without quotes)."""

    name: str


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a quoted string with JSON's escapes, which text format reads


def pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """``message`` in protobuf text format: dicts are messages, lists repeated fields (of
    scalars on one line), :class:`Enum` enum values, and ``("map", {k: v})`` a map field."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, tuple) and value and value[0] == "map":
            for map_key, map_value in value[1].items():
                entry = {"key": map_key, "value": map_value}
                lines.append(f"{pad}{key} {{\n{pbtxt(entry, indent + 1)}{pad}}}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"{pad}  {{\n{pbtxt(v, indent + 2)}{pad}  }}" for v in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _dims(shape: list[int | str]) -> list[int]:
    """Per-request dims of a manifest shape: the batch axis dropped, named axes ``-1``."""
    return [-1 if isinstance(axis, str) else int(axis) for axis in shape[1:]]


def model_config(
    name: str,
    backend: str,
    info: dict[str, Any],
    *,
    max_batch: int,
    instances: int,
    kind: str = "KIND_GPU",
    batching: bool = True,
) -> dict[str, Any]:
    """The ``config.pbtxt`` message of a network model from its ONNX manifest entry."""
    inputs = info["inputs"][0]["shape"]
    outputs = info["outputs"][0]["shape"]
    config: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "max_batch_size": max_batch,
        "input": [{"name": ONNX_INPUT, "data_type": Enum("TYPE_FP32"), "dims": _dims(inputs)}],
        "output": [{"name": ONNX_OUTPUT, "data_type": Enum("TYPE_FP32"), "dims": _dims(outputs)}],
        "instance_group": [{"count": instances, "kind": Enum(kind)}],
    }
    if backend == "tensorrt":
        config["platform"] = "tensorrt_plan"
    if batching and max_batch > 1:
        preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
        config["dynamic_batching"] = {
            "preferred_batch_size": preferred,
            "max_queue_delay_microseconds": QUEUE_DELAY_US,
        }
    return config


def _step_config(name: str, instances: int) -> dict[str, Any]:
    string, fp32 = Enum("TYPE_STRING"), Enum("TYPE_FP32")
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "VIDEO", "data_type": string, "dims": [1]}],
        "output": [
            {"name": "LABELS", "data_type": string, "dims": [-1]},
            {"name": "SCORES", "data_type": fp32, "dims": [-1]},
            {"name": "UNKNOWN", "data_type": Enum("TYPE_BOOL"), "dims": [1]},
            {"name": "RESULT", "data_type": string, "dims": [1]},
        ],
        # Decoding and sampling run on the CPU; the networks run on the GPU models.
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
    }


def _write_model(repo: Path, name: str, config: dict[str, Any], files: dict[str, Any]) -> None:
    """``repo/name/config.pbtxt`` and ``repo/name/1/<file>`` (bytes, text or a path to copy)."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(pbtxt(config))
    for file_name, content in files.items():
        target = version / file_name
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def _self_contained(path: Path) -> bytes:
    """An ONNX file with its external data (the stage graphs read model.onnx's) inline."""
    return onnx.load(str(path)).SerializeToString()


def _plan_for(bundle: Bundle, onnx_file: str, gpu: str | None) -> Path:
    sources = (onnx_file, fp16_name(onnx_file))
    plans = [p for p in bundle.plans() if bundle.file_info(p).get("onnx", ONNX_FILE) in sources]
    if gpu is not None:
        plans = [p for p in plans if p.endswith(plan_name(gpu).removeprefix("model"))]
    if len(plans) != 1:
        found = ", ".join(plans) or "none"
        raise TritonExportError(
            f"{bundle.path}: need exactly one TensorRT plan of {onnx_file}"
            f"{f' for {gpu}' if gpu else ''} (found {found}); build it with python -m "
            f"export.trt --bundle {bundle.path}, or name the GPU with --gpu"
        )
    if plugin_impl(bundle.file_info(plans[0])) == "jit":
        raise TritonExportError(
            f"{plans[0]} runs its clustering through the Python plugin, which Triton's "
            "TensorRT backend cannot load; rebuild it with python -m export.trt --plugin aot"
        )
    return bundle.file(plans[0])


def write_repository(
    bundle: Bundle | str | os.PathLike,
    out: str | os.PathLike,
    *,
    backend: str = "onnxruntime",
    max_batch: int | None = None,
    name: str | None = None,
    instances: int = 1,
    step_instances: int = 2,
    gpu: str | None = None,
    cpu: bool = False,
) -> Path:
    """Write the repository described in the module docstring; returns ``out``.

    Args:
        bundle: An exported bundle (``python -m export.onnx``; ``export.trt`` too for the
            TensorRT backend).
        out: The repository directory (created; this bundle's models in it are replaced).
        backend: ``onnxruntime`` or ``tensorrt``.
        max_batch: Largest batch of clips the network model takes (default: the profile's
            largest clip count; capped to it for TensorRT).
        name: The entry model's name (default: the bundle's directory name).
        instances: GPU instances of each network model.
        step_instances: CPU instances of the pipeline step.
        gpu: The GPU whose plans to take (TensorRT; default: the only one there is).
        cpu: Run the network models on CPU instances (ONNX Runtime only).

    Raises:
        TritonExportError: Unknown backend, no ONNX export or plan, a bad name or batch.
        BundleError: The bundle does not load.
    """
    if backend not in BACKENDS:
        raise TritonExportError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if cpu and backend == "tensorrt":
        raise TritonExportError("the TensorRT backend runs on GPU instances only")
    kind = "KIND_CPU" if cpu else "KIND_GPU"
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if not bundle.has(ONNX_FILE):
        raise TritonExportError(
            f"{bundle.path} has no {ONNX_FILE}; run python -m export.onnx --bundle {bundle.path}"
        )
    name = name or bundle.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise TritonExportError(f"{name!r} is not a usable model name (letters, digits, _ . -)")
    info = bundle.file_info(ONNX_FILE)
    largest = int(info.get("dims", {}).get("clips", {}).get("max", 16))
    batch = largest if max_batch is None else int(max_batch)
    if batch < 1 or (backend == "tensorrt" and batch > largest):
        raise TritonExportError(
            f"--max-batch {batch} must be 1..{largest} (the plan's profile)"
            if backend == "tensorrt"
            else f"--max-batch must be at least 1, got {batch}"
        )
    repo = Path(out)
    models = [name, f"{name}_net", f"{name}_early", f"{name}_late"]
    for model in models:
        shutil.rmtree(repo / model, ignore_errors=True)
    repo.mkdir(parents=True, exist_ok=True)

    def network_file(onnx_file: str) -> dict[str, Any]:
        if backend == "tensorrt":
            return {"model.plan": _plan_for(bundle, onnx_file, gpu)}
        return {"model.onnx": _self_contained(bundle.file(onnx_file))}

    net = f"{name}_net"
    config = model_config(net, backend, info, max_batch=batch, instances=instances, kind=kind)
    _write_model(repo, net, config, network_file(ONNX_FILE))
    stages = None
    if bundle.has(ONNX_EARLY_FILE) and bundle.has(ONNX_LATE_FILE):
        early_info, late_info = bundle.file_info(ONNX_EARLY_FILE), bundle.file_info(ONNX_LATE_FILE)
        for stage, stage_info, onnx_file in (
            ("early", early_info, ONNX_EARLY_FILE),
            ("late", late_info, ONNX_LATE_FILE),
        ):
            stage_config = model_config(
                f"{name}_{stage}", backend, stage_info, max_batch=1, instances=instances, kind=kind
            )
            _write_model(repo, f"{name}_{stage}", stage_config, network_file(onnx_file))
        stages = {
            "early": f"{name}_early",
            "late": f"{name}_late",
            "context": int(early_info["context"]),
            "num_clusters": int(early_info["num_clusters"]),
            "clustering": str(early_info["clustering"]),
            "max_frames": int(early_info["dims"]["frames"]["max"]),
        }
    files: dict[str, Any] = {"model.py": _MODEL_PY}
    spec = dict(bundle.manifest["spec"])
    boxes = (spec.get("tailor") or {}).get("boxes", "motion")
    tailor_boxes = None
    if boxes != "motion" and bundle.has(str(boxes)):
        tailor_boxes = Path(str(boxes)).name
        files[tailor_boxes] = bundle.file(str(boxes))
    repository = None
    if bundle.has(REPOSITORY_FILE):
        repository = REPOSITORY_FILE
        files[REPOSITORY_FILE] = bundle.file(REPOSITORY_FILE)
    step = {
        "format": STEP_FORMAT,
        "name": name,
        "bundle": bundle.name,
        "family": bundle.family,
        "labels": bundle.labels,
        "spec": spec,
        "network": net,
        "stages": stages,
        "batch_size": batch,
        "max_inputs": bundle.eval_max_clips,
        "repository": repository,
        "tailor_boxes": tailor_boxes,
        "backend": backend,
    }
    files[STEP_FILE] = json.dumps(step, indent=2) + "\n"
    _write_model(repo, name, _step_config(name, step_instances), files)
    return repo


def main(argv: list[str] | None = None) -> int:
    """``python -m export.triton``: 0 written, 1 failed."""
    parser = argparse.ArgumentParser(
        prog="python -m export.triton", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", required=True, help="an exported model bundle")
    parser.add_argument("--out", required=True, help="the model repository directory")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch of clips")
    parser.add_argument("--name", default=None, help="entry model name (default: bundle name)")
    parser.add_argument("--instances", type=int, default=1, help="GPU instances per network")
    parser.add_argument("--gpu", default=None, help="GPU whose TensorRT plans to take")
    parser.add_argument(
        "--cpu", action="store_true", help="CPU instances for the networks (onnxruntime)"
    )
    args = parser.parse_args(argv)
    try:
        repo = write_repository(
            args.bundle,
            args.out,
            backend=args.backend,
            max_batch=args.max_batch,
            name=args.name,
            instances=args.instances,
            gpu=args.gpu,
            cpu=args.cpu,
        )
    except (TritonExportError, BundleError) as err:
        print(f"export.triton failed: {err}", file=sys.stderr)
        return 1
    print(f"wrote {repo}: {', '.join(sorted(p.name for p in repo.iterdir() if p.is_dir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
