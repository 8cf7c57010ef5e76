"""Run a bundle's TensorRT engine with the contract of a backend forward.

The plan of a bundle is built per GPU model by ``python -m export.trt`` and named
:func:`plan_name` of the device name. A plan whose clustering is the plugin's ahead-of-time
kernel needs nothing registered; for one built with the Python plugin (``--plugin jit``)
:class:`TrtEngine` registers :mod:`export.plugin` before deserialising. Each engine enqueues
on its own CUDA stream.
:class:`TrtStages` runs full_video's two stage plans (``model.early.<gpu>.plan``,
``model.late.<gpu>.plan``) as the :class:`models.stream.WholeVideoStages` of the streamed
two-pass clustering. ``tensorrt`` is imported lazily: this module imports on machines without
it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from export.trt import stage_plan_name
from export.trt_compat import TensorRTUnsupported, import_tensorrt
from models.bundle import (
    ONNX_EARLY_FILE,
    ONNX_INPUT,
    ONNX_LATE_FILE,
    ONNX_OUTPUT,
    Bundle,
    BundleError,
    plan_name,
)

__all__ = [
    "TrtEngine",
    "TrtStages",
    "early_in_windows",
    "plugin_impl",
    "tensorrt_available",
    "torch_dtype",
]


def plugin_impl(info: dict[str, Any]) -> str | None:
    """How a plan's clustering runs, from its manifest entry: ``"aot"`` (the kernel is in the
    plan), ``"jit"`` (the Python plugin must be registered), ``"onnx-function"`` (standard
    layers), or ``None`` (no clustering node). Plans recorded before ``plugin_impl`` existed
    and listing ``plugins`` were built with the Python plugin."""
    if "plugin_impl" in info:
        value = info["plugin_impl"]
        return None if value is None else str(value)
    return "jit" if info.get("plugins") else None


def torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    """The torch dtype of a TensorRT tensor type (float32, float16, bfloat16, int32, int64).

    Raises:
        RuntimeError: Another type.
    """
    for name, torch_type in (
        ("float32", torch.float32),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("int32", torch.int32),
        ("int64", torch.int64),
    ):
        if hasattr(trt, name) and dtype == getattr(trt, name):
            return torch_type
    raise RuntimeError(f"the engine has a tensor of type {dtype}, which the backend does not take")


def tensorrt_available() -> bool:
    """``tensorrt`` importable, in the supported range (10.9 .. 11.x), and a CUDA device
    present."""
    try:
        import_tensorrt()
    except (ImportError, TensorRTUnsupported):
        return False
    return torch.cuda.is_available()


class TrtEngine:
    """A bundle's TensorRT engine for the current GPU, called like a PyTorch forward.

    Args:
        bundle: A bundle whose manifest lists ``model.<gpu>.plan`` for this GPU.
        stage: A stage graph's ONNX name (``model.early.onnx``, ``model.late.onnx``): run its
            plan (:func:`export.trt.stage_plan_name`) instead.

    Raises:
        RuntimeError: No TensorRT or no CUDA device, no plan for this GPU, or a plan TensorRT
            cannot deserialise (built by another TensorRT version, plugin missing); the message
            says which.
    """

    def __init__(self, bundle: Bundle, *, stage: str | None = None) -> None:
        try:
            trt = import_tensorrt()
        except ImportError:
            raise RuntimeError(
                "TensorRT backend unavailable: the tensorrt package (10.9 .. 11.x) is not installed"
            ) from None
        except TensorRTUnsupported as err:
            raise RuntimeError(f"TensorRT backend unavailable: {err}") from None
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT backend unavailable: no CUDA device")
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.gpu = torch.cuda.get_device_name(self.device)
        self.plan = plan_name(self.gpu) if stage is None else stage_plan_name(stage, self.gpu)
        try:
            path = bundle.file(self.plan)
        except BundleError:
            raise RuntimeError(
                f"{bundle.path} has no TensorRT plan for {self.gpu} ({self.plan}); "
                f"build one with `python -m export.trt --bundle {bundle.path}`"
            ) from None
        info = bundle.file_info(self.plan)
        if info.get("tensorrt") and info["tensorrt"] != trt.__version__:
            raise RuntimeError(
                f"{path} was built with TensorRT {info['tensorrt']}, "
                f"this is {trt.__version__}; rebuild it"
            )
        self.plugin_impl = plugin_impl(info)
        if self.plugin_impl == "jit":
            from export.plugin import register

            register()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {path}")
        self._context = self._engine.create_execution_context()
        profile = self._engine.get_tensor_profile_shape(ONNX_INPUT, 0)
        self.min_shape, self.opt_shape, self.max_shape = (tuple(s) for s in profile)
        self.precision = info.get("precision", "fp32")
        self._dtypes = {
            name: torch_dtype(trt, self._engine.get_tensor_dtype(name))
            for name in (ONNX_INPUT, ONNX_OUTPUT)
        }
        # Its own stream: never the default stream, which would serialise with every other
        # CUDA user of the process.
        self._stream = torch.cuda.Stream(self.device)
        self._lock = threading.Lock()

    def _check(self, shape: tuple[int, ...]) -> None:
        for axis, (low, size, high) in enumerate(
            zip(self.min_shape[1:], shape[1:], self.max_shape[1:]), 1
        ):
            if not low <= size <= high:
                raise ValueError(
                    f"input axis {axis} is {size}, the engine takes {low}..{high} "
                    f"(rebuild with a larger profile, e.g. --max-frames)"
                )

    def _run(self, chunk: Tensor) -> Tensor:
        # On the engine's stream: the input (copied on it) and the output are allocated by
        # torch's caching allocator for this stream, so neither is reused while TensorRT runs.
        self._context.set_input_shape(ONNX_INPUT, tuple(chunk.shape))
        out_shape = tuple(self._context.get_tensor_shape(ONNX_OUTPUT))
        out = torch.empty(out_shape, dtype=self._dtypes[ONNX_OUTPUT], device=self.device)
        self._context.set_tensor_address(ONNX_INPUT, chunk.data_ptr())
        self._context.set_tensor_address(ONNX_OUTPUT, out.data_ptr())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out

    def __call__(self, inputs: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` float32 clips -> the network output, float32 on the CPU.

        Batches beyond the profile's largest clip count run in chunks.
        """
        shape = tuple(inputs.shape)
        self._check(shape)
        step = self.max_shape[0]
        with self._lock, torch.no_grad(), torch.cuda.stream(self._stream):
            x = inputs.to(self.device, self._dtypes[ONNX_INPUT], non_blocking=True).contiguous()
            outs = [self._run(x[i : i + step]) for i in range(0, shape[0], step)]
            result = torch.cat(outs).float().cpu()  # copies on the stream, then waits for it
        return result

    def describe(self) -> dict[str, Any]:
        """GPU, plan file, precision and profile range, for the service's model listing."""
        return {
            "gpu": self.gpu,
            "plan": self.plan,
            "precision": self.precision,
            "plugin": self.plugin_impl,
            "min_shape": list(self.min_shape),
            "max_shape": list(self.max_shape),
        }


def early_in_windows(
    early: Callable[[Tensor], Tensor], x: Tensor, max_frames: int, context: int
) -> Tensor:
    """``early(x)`` for ``(N, 3, T, H, W)`` frames, run on windows of at most ``max_frames``
    frames when ``T`` is larger: each window computes a run of frames with ``context`` frames
    on both sides (the temporal shift's reach), so the result equals one call on all of
    ``x``.

    Raises:
        ValueError: ``max_frames`` leaves no frame beside the context.
    """
    frames = x.shape[2]
    if frames <= max_frames:
        return early(x)
    step = max_frames - 2 * context
    if step < 1:
        raise ValueError(f"{max_frames} frames per call leave none beside {context} on each side")
    outs = []
    for start in range(0, frames, step):
        stop = min(frames, start + step)
        low, high = max(0, start - context), min(frames, stop + context)
        outs.append(early(x[:, :, low:high])[:, start - low : stop - low])
    return torch.cat(outs, dim=1)


class TrtStages:
    """:class:`models.stream.WholeVideoStages` backed by the bundle's two stage plans for the
    current GPU (built by ``python -m export.trt`` from ``model.early.onnx`` and
    ``model.late.onnx``); ``context``, ``num_clusters`` and ``clustering`` come from the
    manifest entry of ``model.early.onnx``.

    Raises:
        RuntimeError: As :class:`TrtEngine`, for either plan.
        BundleError: The bundle has no stage graphs.
    """

    def __init__(self, bundle: Bundle) -> None:
        info = bundle.file_info(ONNX_EARLY_FILE)
        self.context = int(info["context"])
        self.num_clusters = int(info["num_clusters"])
        self.clustering = str(info["clustering"])
        self._early = TrtEngine(bundle, stage=ONNX_EARLY_FILE)
        self._late = TrtEngine(bundle, stage=ONNX_LATE_FILE)
        self.max_frames = int(self._early.max_shape[2])

    def early(self, x: Tensor) -> Tensor:
        """``(1, 3, t, H, W)`` frames -> ``(1, t, C, h, w)`` layer1 activations; more frames
        than the profile takes run in windows (:func:`early_in_windows`)."""
        return early_in_windows(self._early, x, self.max_frames, self.context)

    def late(self, segments: Tensor) -> Tensor:
        """``(1, g, C, h, w)`` cluster means -> ``(1, num_classes)`` logits."""
        return self._late(segments)

    def describe(self) -> dict[str, Any]:
        """Both plans, as :meth:`TrtEngine.describe`."""
        return {"early": self._early.describe(), "late": self._late.describe()}
