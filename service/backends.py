"""Network backends: PyTorch, ONNX Runtime and TensorRT behind one ``forward`` contract.

A backend is only the network call of :mod:`models.pipeline`: a float32 CPU tensor
``(N, 3, T, H, W)`` in, what the eval-mode PyTorch module returns out; for ``full_video`` also
the early/late split the streamed clustering runs (:class:`models.stream.WholeVideoStages`)
where the backend has one. :func:`choose_backend` picks one per bundle (see
``docs/service.md``, "Backends"). With ``precision="int8"`` it is ONNX Runtime on the bundle's
``model.int8.onnx`` (``python -m export.onnx --quantize int8``, docs/export.md#int8), named
``onnxruntime-int8`` so that every answer says which graph produced it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from models.bundle import (
    ONNX_EARLY_FILE,
    ONNX_FILE,
    ONNX_LATE_FILE,
    Bundle,
    BundleError,
    plan_name,
)
from models.stream import WholeVideoStages, stages_for
from service.domain import ServiceError

__all__ = [
    "INT8_BACKEND",
    "Backend",
    "BackendUnavailable",
    "InputTooLarge",
    "Offer",
    "choose_backend",
    "load_backend",
    "machine_offer",
    "resolve_device",
]

log = logging.getLogger(__name__)

# The name of ONNX Runtime running the int8 graph, as answers and metrics report it.
INT8_BACKEND = "onnxruntime-int8"
# export.onnx.INT8_FILE, named here too so that choosing a backend imports no exporter.
_INT8_FILE = "model.int8.onnx"


class BackendUnavailable(ServiceError, RuntimeError):
    """The requested backend cannot run this bundle on this machine."""

    code = "backend_unavailable"


class InputTooLarge(ServiceError):
    """The input is past what the loaded engine takes (a TensorRT optimisation profile)."""

    code = "video_too_large"


@dataclass(frozen=True)
class Offer:
    """What a bundle holds and the machine can run.

    Attributes:
        onnx: The bundle lists ``model.onnx``.
        plan: The bundle lists a TensorRT plan for this machine's GPU.
        onnxruntime: ``onnxruntime`` is importable.
        tensorrt: TensorRT is importable and a CUDA device is present.
        int8: The bundle lists ``model.int8.onnx``.
    """

    onnx: bool
    plan: bool
    onnxruntime: bool
    tensorrt: bool
    int8: bool = False


def choose_backend(preference: str, offer: Offer, precision: str = "fp32") -> str:
    """The backend to run a bundle with.

    Args:
        preference: ``auto``, ``torch``, ``onnxruntime`` or ``tensorrt``.
        offer: What the bundle and the machine offer.
        precision: ``fp32``, or ``int8``: ONNX Runtime on ``model.int8.onnx``
            (:data:`INT8_BACKEND`), with ``auto`` or ``onnxruntime`` only.

    Raises:
        BackendUnavailable: An explicit preference or precision that ``offer`` cannot meet,
            with the reason.
        ValueError: An unknown preference or precision.
    """
    if precision == "int8":
        return _choose_int8(preference, offer)
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}")
    if preference == "auto":
        if offer.plan and offer.tensorrt:
            return "tensorrt"
        if offer.onnx and offer.onnxruntime:
            return "onnxruntime"
        return "torch"
    if preference == "torch":
        return "torch"
    if preference == "onnxruntime":
        if not offer.onnxruntime:
            raise BackendUnavailable("onnxruntime is not installed")
        if not offer.onnx:
            raise BackendUnavailable(f"the bundle has no {ONNX_FILE}; run python -m export.onnx")
        return "onnxruntime"
    if preference == "tensorrt":
        if not offer.tensorrt:
            raise BackendUnavailable("TensorRT is not installed or no CUDA device is present")
        if not offer.plan:
            raise BackendUnavailable(
                "the bundle has no TensorRT plan for this GPU; run python -m export.trt"
            )
        return "tensorrt"
    raise ValueError(f"unknown backend {preference!r}")


def _choose_int8(preference: str, offer: Offer) -> str:
    if preference not in ("auto", "onnxruntime", "torch", "tensorrt"):
        raise ValueError(f"unknown backend {preference!r}")
    if preference in ("torch", "tensorrt"):
        raise BackendUnavailable(
            f"precision int8 runs on ONNX Runtime only, not {preference}; set backend to auto "
            "or onnxruntime, or precision to fp32"
        )
    if not offer.onnxruntime:
        raise BackendUnavailable("precision int8 needs onnxruntime, which is not installed")
    if not offer.int8:
        raise BackendUnavailable(
            f"the bundle has no {_INT8_FILE}; run python -m export.onnx --bundle DIR "
            "--quantize int8 (or serve it with precision fp32)"
        )
    return INT8_BACKEND


def _plan_for_this_gpu(bundle: Bundle) -> bool:
    if not torch.cuda.is_available():
        return False
    return bundle.has(plan_name(torch.cuda.get_device_name()))


def _tensorrt_available() -> bool:
    try:
        from export.trt_runtime import tensorrt_available
    except ImportError:
        return False
    return bool(tensorrt_available())


def machine_offer(bundle: Bundle) -> Offer:
    """What ``bundle`` and this machine offer."""
    trt = _tensorrt_available()
    return Offer(
        onnx=bundle.has(ONNX_FILE),
        plan=trt and _plan_for_this_gpu(bundle),
        onnxruntime=importlib.util.find_spec("onnxruntime") is not None,
        tensorrt=trt,
        int8=bundle.has(_INT8_FILE),
    )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("device=cuda asked for but no CUDA device is present")
    return device


@dataclass
class Backend:
    """A loaded network.

    Attributes:
        name: ``torch``, ``onnxruntime`` or ``tensorrt``.
        forward: The network call (see the module docstring).
        info: What it runs on (device, execution providers...), for ``GET /models``.
        stages: A whole-video network's early/late split (``full_video``), with which a
            video is clustered in two streamed passes; ``None`` for clip networks, and where
            the backend has none (a ``full_video`` video is then decoded whole into memory).
    """

    name: str
    forward: Callable[[Tensor], Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    stages: WholeVideoStages | None = None


def _torch_backend(bundle: Bundle, device: str) -> Backend:
    model = bundle.build_model(device)

    def forward(inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(inputs.to(device, non_blocking=True)).float().cpu()

    return Backend("torch", forward, {"device": device}, stages_for(model, device))


def _onnxruntime_backend(
    bundle: Bundle, device: str, threads: int, *, int8: bool = False
) -> Backend:
    import onnxruntime as ort

    from export.onnx import OnnxForward

    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    file = _INT8_FILE if int8 else ONNX_FILE
    forward = OnnxForward(bundle.file(file), threads=threads, providers=providers)
    # The stage graphs are fp32: an int8 full_video model runs its whole graph (the video is
    # then decoded into memory, bounded by max_frames_in_memory).
    stages = None if int8 else _onnx_stages(bundle, threads, providers)
    info: dict[str, Any] = {
        "providers": forward.providers,
        "precision": "int8" if int8 else "fp32",
        "file": file,
    }
    if int8:
        info["agreement"] = bundle.file_info(file).get("agreement")
    if _ships_stages(bundle):
        info["stages"] = stages is not None
    return Backend(INT8_BACKEND if int8 else "onnxruntime", forward, info, stages)


def _ships_stages(bundle: Bundle) -> bool:
    """The bundle lists full_video's two stage graphs."""
    return bundle.has(ONNX_EARLY_FILE) and bundle.has(ONNX_LATE_FILE)


def _onnx_stages(bundle: Bundle, threads: int, providers: list[str]) -> WholeVideoStages | None:
    """ONNX Runtime early/late stages of a full_video bundle that ships both stage graphs,
    where ``export.onnx`` provides them (``OnnxStages``); else ``None`` (the video is then
    decoded whole into memory). Stale stage graphs are logged and left unused."""
    if not _ships_stages(bundle):
        return None
    make = getattr(importlib.import_module("export.onnx"), "OnnxStages", None)
    if make is None:
        return None
    try:
        stages: WholeVideoStages = make(bundle, threads=threads or None, providers=providers)
    except (BundleError, TypeError) as err:
        log.warning(
            "%s: the ONNX stage graphs are not usable (%s); full_video videos are decoded "
            "whole into memory",
            bundle.name,
            err,
        )
        return None
    return stages


def _tensorrt_backend(bundle: Bundle) -> Backend:
    from export.trt_runtime import TrtEngine

    try:
        engine = TrtEngine(bundle)
    except RuntimeError as err:
        raise BackendUnavailable(str(err)) from err

    def forward(inputs: Tensor) -> Tensor:
        try:
            return engine(inputs).float().cpu()
        except ValueError as err:
            # The engine's optimisation profile bounds the input (e.g. full_video's frame
            # count): a video past it is too large for this engine, not a server fault.
            raise InputTooLarge(str(err)) from None

    info = engine.describe()
    stages = _trt_stages(bundle)
    if _ships_stages(bundle):
        info["stages"] = stages is not None
    return Backend("tensorrt", forward, info, stages)


def _trt_stages(bundle: Bundle) -> WholeVideoStages | None:
    """TensorRT early/late stages of a full_video bundle with stage plans for this GPU, where
    ``export.trt_runtime`` provides them (``TrtStages``); else ``None`` (logged)."""
    if not _ships_stages(bundle):
        return None
    make = getattr(importlib.import_module("export.trt_runtime"), "TrtStages", None)
    if make is None:
        return None
    try:
        stages: WholeVideoStages = make(bundle)
    except (RuntimeError, BundleError, TypeError) as err:
        log.warning(
            "%s: no usable TensorRT stage plans (%s); full_video videos are decoded whole "
            "into memory",
            bundle.name,
            err,
        )
        return None
    return stages


def load_backend(
    bundle: Bundle,
    preference: str = "auto",
    *,
    device: str = "auto",
    threads: int = 0,
    precision: str = "fp32",
) -> Backend:
    """Choose and load the backend for ``bundle``.

    Args:
        bundle: A verified bundle.
        preference: ``auto`` or a backend name (see :func:`choose_backend`).
        device: ``auto``, ``cpu`` or ``cuda`` for torch and ONNX Runtime.
        threads: Intra-op threads for ONNX Runtime (0: its default); torch's are process-wide.
        precision: ``fp32`` or ``int8`` (see :func:`choose_backend`).

    Raises:
        BackendUnavailable: The chosen backend cannot load this bundle here.
    """
    name = choose_backend(preference, machine_offer(bundle), precision)
    dev = resolve_device(device)
    if name == INT8_BACKEND:
        return _onnxruntime_backend(bundle, dev, threads, int8=True)
    if name == "tensorrt":
        return _tensorrt_backend(bundle)
    if name == "onnxruntime":
        return _onnxruntime_backend(bundle, dev, threads)
    return _torch_backend(bundle, dev)
