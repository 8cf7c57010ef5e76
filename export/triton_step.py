"""The pipeline step of a Triton Inference Server model repository (:mod:`export.triton`).

A Triton client sends a video file's bytes to the bundle's entry model; this step, run by
Triton's Python backend, decodes, samples and aggregates with the project's own pipeline
(:func:`models.stream.recognize_video`, :func:`models.aggregators.topk`: the code the service
and the batch tool run) and sends the network calls back into Triton (business logic
scripting) to the repository's network model, or to full_video's two stage models for the
streamed two-pass clustering. The answer is the service's top-5.

:class:`PipelineStep` holds that logic and takes the network call as a function, so it runs
outside Triton too (tests drive it with ONNX Runtime on the repository's own model files);
:class:`TritonPythonModel` is the thin Python-backend class around it, importing
``triton_python_backend_utils`` (which only exists inside Triton) when Triton loads it.

Inputs and outputs of the entry model: ``VIDEO`` (``TYPE_STRING``, the file's bytes) in;
``LABELS`` (``TYPE_STRING``, up to 5, best first), ``SCORES`` (``TYPE_FP32``), ``UNKNOWN``
(``TYPE_BOOL``, ms3d's rejection) and ``RESULT`` (``TYPE_STRING``, the answer as JSON:
``model``, ``family``, ``top5``, ``unknown``, ``frames``, ``clips``) out. Layout and recipe:
docs/export.md#triton-inference-server.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from export.trt_runtime import early_in_windows
from models.aggregators import topk
from models.repository import Repository
from models.spec import VariantSpec
from models.stream import recognize_video

__all__ = [
    "STEP_FILE",
    "STEP_FORMAT",
    "TOP_K",
    "Infer",
    "PipelineStep",
    "TritonPythonModel",
]

# The step's settings, written by export.triton beside model.py.
STEP_FILE = "step.json"
STEP_FORMAT = 1
TOP_K = 5

# A network call through Triton: (model name, float32 input array) -> the output array.
Infer = Callable[[str, np.ndarray], np.ndarray]


class _RemoteStages:
    """:class:`models.stream.WholeVideoStages` whose early and late networks are two models
    of the repository; an early call longer than its profile runs in windows."""

    def __init__(self, infer: Infer, settings: dict[str, Any]) -> None:
        self._infer = infer
        self._early, self._late = str(settings["early"]), str(settings["late"])
        self.context = int(settings["context"])
        self.num_clusters = int(settings["num_clusters"])
        self.clustering = str(settings["clustering"])
        self.max_frames = int(settings["max_frames"])

    def _call(self, model: str, x: Tensor) -> Tensor:
        return torch.from_numpy(self._infer(model, np.ascontiguousarray(x.numpy(), np.float32)))

    def early(self, x: Tensor) -> Tensor:
        return early_in_windows(
            lambda part: self._call(self._early, part), x, self.max_frames, self.context
        )

    def late(self, segments: Tensor) -> Tensor:
        return self._call(self._late, segments)


class PipelineStep:
    """One bundle's recognition, with the network behind ``infer``.

    Args:
        directory: The step's version directory (``step.json`` and, for ms3d, the repository).
        infer: The network call (model name, input array) -> output array.

    Raises:
        ValueError: ``step.json`` is missing or of another format.
    """

    def __init__(self, directory: str | os.PathLike, infer: Infer) -> None:
        self.directory = Path(directory)
        path = self.directory / STEP_FILE
        try:
            settings = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable step file: {err}") from None
        if settings.get("format") != STEP_FORMAT:
            raise ValueError(f"{path} has format {settings.get('format')!r}, not {STEP_FORMAT}")
        self.settings = settings
        self.name: str = settings["name"]
        self.family: str = settings["family"]
        spec = VariantSpec.from_dict(settings["spec"])
        boxes = settings.get("tailor_boxes")
        if boxes:
            spec = spec.replace(tailor={**spec.tailor, "boxes": str(self.directory / boxes)})
        self.spec = spec
        self.network: str = settings["network"]
        self.batch_size = int(settings["batch_size"])
        self.max_inputs = int(settings["max_inputs"])
        self.labels: list[str] = list(settings["labels"])
        self.centres: Tensor | None = None
        self.gamma: float | None = None
        if settings.get("repository"):
            repo = Repository.load(self.directory / settings["repository"])
            self.labels, self.centres, self.gamma = repo.names, repo.centres_tensor(), repo.gamma
        self._infer = infer
        stages = settings.get("stages")
        self.stages = _RemoteStages(infer, stages) if stages else None

    def forward(self, inputs: Tensor) -> Tensor:
        """The network on ``(N, 3, T, H, W)`` inputs, in requests of at most ``batch_size``."""
        array = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        step = self.batch_size
        outs = [self._infer(self.network, array[i : i + step]) for i in range(0, len(array), step)]
        return torch.from_numpy(np.concatenate(outs))

    def recognize(self, path: str | os.PathLike) -> dict[str, Any]:
        """The answer for the video file at ``path``.

        Raises:
            video.errors.VideoError: Not a decodable video.
        """
        answer = recognize_video(
            path,
            self.spec,
            self.forward,
            stages=self.stages,
            batch_size=self.batch_size,
            max_inputs=self.max_inputs,
            centres=self.centres,
            gamma=self.gamma,
        )
        scores = answer.prediction.scores
        return {
            "model": self.name,
            "family": self.family,
            "top5": [{"label": k, "score": v} for k, v in topk(scores, TOP_K, self.labels)],
            "unknown": bool(scores.unknown),
            "frames": int(answer.meta.frame_count),
            "clips": int(answer.prediction.inputs),
        }

    def recognize_bytes(self, data: bytes) -> dict[str, Any]:
        """:meth:`recognize` of a video sent as bytes (kept in a temporary file meanwhile)."""
        handle, name = tempfile.mkstemp(prefix="actrec-triton-", suffix=".video")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            return self.recognize(name)
        finally:
            os.unlink(name)


class TritonPythonModel:
    """Triton's Python backend entry point (``model.py`` imports this class)."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

        self._pb = pb_utils
        directory = Path(args["model_repository"]) / args["model_version"]
        self.step = PipelineStep(directory, self._infer)

    def _infer(self, model: str, array: np.ndarray) -> np.ndarray:
        pb = self._pb
        request = pb.InferenceRequest(
            model_name=model,
            requested_output_names=["output"],
            inputs=[pb.Tensor("input", array)],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return np.asarray(pb.get_output_tensor_by_name(response, "output").as_numpy())

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; a request that fails gets an error response (a video
        that does not decode, a failed network call), the others their answers."""
        from video.errors import VideoError

        pb = self._pb
        responses = []
        for request in requests:
            try:
                video = pb.get_input_tensor_by_name(request, "VIDEO").as_numpy().reshape(-1)[0]
                result = self.step.recognize_bytes(bytes(video))
            except (VideoError, ValueError, RuntimeError) as err:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(err))))
                continue
            top = result["top5"]
            tensors = [
                pb.Tensor("LABELS", np.array([t["label"].encode() for t in top], dtype=object)),
                pb.Tensor("SCORES", np.array([t["score"] for t in top], dtype=np.float32)),
                pb.Tensor("UNKNOWN", np.array([result["unknown"]], dtype=bool)),
                pb.Tensor("RESULT", np.array([json.dumps(result).encode()], dtype=object)),
            ]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        """Nothing to release: the step holds no files open."""
