"""The MS3D tailor strategy: re-weight each frame around the acting person's box.

The MS3D paper (cited in :mod:`models.ms3d`), Section IV.B, Eq. 7-8: pixels inside the box are
enhanced by ``eta``, pixels outside decay by ``xi ** d`` with their distance band ``d`` to the
box. Boxes come from a :class:`BoxSource`: :class:`MotionBoxSource` (no weights) or
:class:`OnnxYoloBoxSource` (a user-supplied YOLO ONNX file).

Conventions (box coverage, bands, missing boxes, rounding, default factors):
docs/models.md#ms3d.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "BoxSource",
    "MotionBoxSource",
    "OnnxYoloBoxSource",
    "DEFAULT_ETA",
    "DEFAULT_XI",
    "DEFAULT_BAND",
    "TAILOR_DEFAULTS",
    "band_index",
    "box_source",
    "decode_yolo_output",
    "letterbox",
    "motion_boxes",
    "tailor_chunk",
    "tailor_frame",
    "tailor_frames",
    "tailor_settings",
    "tailor_video",
    "tailor_weights",
]

DEFAULT_ETA = 1.2
DEFAULT_XI = 0.9
DEFAULT_BAND = 5

YoloLayout = Literal["auto", "yolov5", "yolov8", "nms"]


def _pixel_bounds(
    height: int, width: int, box: np.ndarray | tuple[float, float, float, float] | None
) -> tuple[int, int, int, int] | None:
    """Box -> inclusive-exclusive pixel bounds ``(c0, r0, c1, r1)`` clipped to the frame."""
    if box is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1, r1


def band_index(
    height: int,
    width: int,
    box: np.ndarray | tuple[float, float, float, float] | None,
    band: int = DEFAULT_BAND,
) -> np.ndarray | None:
    """Band number of every pixel: 0 inside the box, ``ceil(distance / band)`` outside.

    Args:
        height: Frame height.
        width: Frame width.
        box: ``(x0, y0, x1, y1)``; ``None`` or non-finite values mean no box.
        band: Band width in pixels (paper: 5).

    Returns:
        ``(height, width)`` int64 band numbers, or ``None`` when there is no usable box.
    """
    if band < 1:
        raise ValueError(f"band width must be >= 1 pixel, got {band}")
    bounds = _pixel_bounds(height, width, box)
    if bounds is None:
        return None
    c0, r0, c1, r1 = bounds
    cols, rows = np.arange(width), np.arange(height)
    dx = np.maximum(np.maximum(c0 - cols, cols - (c1 - 1)), 0)
    dy = np.maximum(np.maximum(r0 - rows, rows - (r1 - 1)), 0)
    chebyshev = np.maximum(dy[:, None], dx[None, :])
    return -(-chebyshev // band)  # ceil division on non-negative integers


def tailor_weights(
    height: int,
    width: int,
    box: np.ndarray | tuple[float, float, float, float] | None,
    *,
    eta: float = DEFAULT_ETA,
    xi: float = DEFAULT_XI,
    band: int = DEFAULT_BAND,
) -> np.ndarray:
    """Per-pixel factors of Eq. 7-8: ``eta`` inside the box, ``xi ** d`` in band ``d``.

    Returns:
        ``(height, width)`` float32 factors; all ones when there is no usable box.
    """
    d = band_index(height, width, box, band)
    if d is None:
        return np.ones((height, width), dtype=np.float32)
    weights = np.power(np.float64(xi), d)
    weights[d == 0] = eta
    return weights.astype(np.float32)


def tailor_frame(
    frame: np.ndarray,
    box: np.ndarray | tuple[float, float, float, float] | None,
    *,
    eta: float = DEFAULT_ETA,
    xi: float = DEFAULT_XI,
    band: int = DEFAULT_BAND,
) -> np.ndarray:
    """Apply Eq. 7-8 to one ``(H, W)`` or ``(H, W, C)`` frame; same dtype out."""
    boxes = None if box is None else np.asarray(box, dtype=np.float64)[None]
    return tailor_frames(frame[None], boxes, eta=eta, xi=xi, band=band)[0]


def tailor_frames(
    frames: np.ndarray,
    boxes: np.ndarray | None,
    *,
    eta: float = DEFAULT_ETA,
    xi: float = DEFAULT_XI,
    band: int = DEFAULT_BAND,
) -> np.ndarray:
    """Apply Eq. 7-8 to every frame with its own box.

    Args:
        frames: ``(T, H, W)`` or ``(T, H, W, C)`` frames, uint8 or float.
        boxes: ``(T, 4)`` boxes ``(x0, y0, x1, y1)``; a row of NaN means no box for that frame.
            ``None`` leaves every frame unchanged.
        eta: Enhancement factor inside the box (Eq. 7).
        xi: Decay factor per band outside the box (Eq. 8).
        band: Band width in pixels.

    Returns:
        The tailored frames, same shape and dtype.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must be (T, H, W[, C]), got {frames.shape}")
    if boxes is None:
        return frames.copy()
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape != (len(frames), 4):
        raise ValueError(f"expected ({len(frames)}, 4) boxes, got {boxes.shape}")
    height, width = frames.shape[1:3]
    weights = np.stack([tailor_weights(height, width, b, eta=eta, xi=xi, band=band) for b in boxes])
    if frames.ndim == 4:
        weights = weights[..., None]
    out = frames.astype(np.float32) * weights
    if frames.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(frames.dtype)


def motion_boxes(frames: np.ndarray, *, threshold: float = 25.0, min_pixels: int = 4) -> np.ndarray:
    """Per frame, the box around the pixels that changed since the neighbouring frame.

    The grey-level absolute difference ``|F_t - F_{t-1}|`` (the first frame uses the
    difference to its successor) is thresholded; the box spans the changed pixels.

    Args:
        frames: ``(T, H, W, C)`` or ``(T, H, W)`` frames (values on the 0-255 scale for the
            default threshold).
        threshold: A pixel moved when its grey difference exceeds this.
        min_pixels: Fewer moving pixels than this give no box (sensor noise, static shots).

    Returns:
        ``(T, 4)`` float64 boxes ``(x0, y0, x1, y1)``; NaN rows where there is no box (also
        for a single-frame video).
    """
    frames = np.asarray(frames)
    grey = frames.astype(np.float32)
    if grey.ndim == 4:
        grey = grey.mean(axis=-1)
    if grey.ndim != 3:
        raise ValueError(f"frames must be (T, H, W[, C]), got {frames.shape}")
    boxes = np.full((len(grey), 4), np.nan)
    if len(grey) < 2:
        return boxes
    diff = np.abs(np.diff(grey, axis=0))  # diff[t - 1] = |F_t - F_{t-1}|
    for t in range(len(grey)):
        moving = diff[max(t - 1, 0)] > threshold
        if moving.sum() < max(1, min_pixels):
            continue
        rows = np.flatnonzero(moving.any(axis=1))
        cols = np.flatnonzero(moving.any(axis=0))
        boxes[t] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class BoxSource(Protocol):
    """Anything that gives one person box per frame: ``(T, H, W, 3)`` uint8 -> ``(T, 4)``."""

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


class MotionBoxSource:
    """The default box source: :func:`motion_boxes` with fixed settings (no weights needed)."""

    def __init__(self, *, threshold: float = 25.0, min_pixels: int = 4) -> None:
        self.threshold = threshold
        self.min_pixels = min_pixels

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, 4)`` motion boxes of ``frames``."""
        return motion_boxes(frames, threshold=self.threshold, min_pixels=self.min_pixels)


def letterbox(
    frame: np.ndarray, size: tuple[int, int], fill: float = 114.0 / 255.0
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize ``frame`` keeping its aspect ratio into ``size`` and pad the rest (YOLO input).

    Args:
        frame: ``(H, W, 3)`` uint8 RGB frame.
        size: Network input ``(height, width)``.
        fill: Padding value on the [0, 1] scale (ultralytics uses grey 114).

    Returns:
        ``(1, 3, h, w)`` float32 in [0, 1], the scale ``r`` and the padding ``(pad_x, pad_y)``,
        so a network coordinate ``u`` maps back to the frame as ``(u - pad) / r``.
    """
    import torch
    import torch.nn.functional as F

    in_h, in_w = size
    h, w = frame.shape[:2]
    r = min(in_h / h, in_w / w)
    new_h, new_w = max(1, round(h * r)), max(1, round(w * r))
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_y, pad_x = (in_h - new_h) / 2, (in_w - new_w) / 2
    out = torch.full((1, 3, in_h, in_w), fill)
    top, left = int(pad_y), int(pad_x)
    out[:, :, top : top + new_h, left : left + new_w] = x
    return out.numpy(), r, (float(left), float(top))


def decode_yolo_output(
    output: np.ndarray,
    *,
    layout: YoloLayout = "auto",
    person_class: int = 0,
) -> tuple[np.ndarray, float] | None:
    """The highest-scoring person box of one image's raw YOLO output.

    Layouts (the batch axis of size 1 may be present or not):

    * ``"yolov5"``: ``(N, 5 + C)`` rows ``cx, cy, w, h, objectness, class scores...``;
      score = objectness x person class score (YOLOv5/v7 exports).
    * ``"yolov8"``: ``(4 + C, N)`` columns ``cx, cy, w, h, class scores...``; score = person
      class score (ultralytics YOLOv8/v11 exports without NMS).
    * ``"nms"``: ``(N, 6)`` rows ``x0, y0, x1, y1, score, class`` (exports with NMS inside).
    * ``"auto"``: ``yolov8`` when the output has fewer rows than columns, else ``yolov5``
      (true for real exports, whose candidate count ``N`` exceeds ``5 + C``).

    Box coordinates are in network-input pixels.

    Args:
        output: The detector's first output for one image.
        layout: One of the above.
        person_class: Index of the person class (0 in COCO).

    Returns:
        ``(box_xyxy, score)`` or ``None`` when there is no candidate.
    """
    arr = np.asarray(output, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D detection output per image, got shape {arr.shape}")
    if layout == "auto":
        layout = "yolov8" if arr.shape[0] < arr.shape[1] else "yolov5"
    if layout == "yolov8":
        arr = arr.T
        first_class = 4
    elif layout == "yolov5":
        first_class = 5
    elif layout != "nms":
        raise ValueError(f"unknown YOLO output layout {layout!r}")
    if len(arr) == 0:
        return None
    if layout == "nms":
        if arr.shape[1] < 6:
            raise ValueError(f"nms layout needs 6 columns, got {arr.shape[1]}")
        rows = arr[np.rint(arr[:, 5]) == person_class]
        if len(rows) == 0:
            return None
        best = rows[int(np.argmax(rows[:, 4]))]
        return best[:4].copy(), float(best[4])
    if arr.shape[1] <= first_class + person_class:
        raise ValueError(
            f"{layout} output with {arr.shape[1]} values per candidate has no class {person_class}"
        )
    score = arr[:, first_class + person_class]
    if layout == "yolov5":
        score = score * arr[:, 4]
    i = int(np.argmax(score))
    cx, cy, w, h = arr[i, :4]
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), float(score[i])


class OnnxYoloBoxSource:
    """Person boxes from a user-supplied YOLO ONNX file, run with ONNX Runtime.

    The model must take one ``(1, 3, h, w)`` float32 RGB image in [0, 1] (letterboxed, grey
    padding: the ultralytics and YOLOv5 export convention) and give as first output one of the
    layouts of :func:`decode_yolo_output`. ONNX Runtime is imported and the session created
    on first use, so the service does not pay for it unless tailoring is on.

    Args:
        path: The ``.onnx`` file.
        layout: Output layout (see :func:`decode_yolo_output`).
        person_class: Index of the person class.
        score_threshold: Best scores below this give no box for the frame.
        input_size: ``(height, width)`` when the model's input shape is dynamic (default 640).
        every: Run the detector on every ``every``-th frame and reuse its box in between.
        providers: ONNX Runtime execution providers (default: CPU).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        layout: YoloLayout = "auto",
        person_class: int = 0,
        score_threshold: float = 0.25,
        input_size: tuple[int, int] | None = None,
        every: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no YOLO ONNX file at {self.path}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.layout = layout
        self.person_class = person_class
        self.score_threshold = score_threshold
        self.every = every
        self.providers = providers or ["CPUExecutionProvider"]
        self._input_size = input_size
        self._session: Any = None
        self._input_name = ""

    def _ensure_session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self.path), providers=self.providers)
            inp = self._session.get_inputs()[0]
            self._input_name = inp.name
            dims = list(inp.shape)[-2:]
            if self._input_size is None:
                static = len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims)
                self._input_size = (int(dims[0]), int(dims[1])) if static else (640, 640)
        return self._session

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """The person box of one ``(H, W, 3)`` uint8 frame, in frame pixels; NaN if none."""
        session = self._ensure_session()
        assert self._input_size is not None
        image, r, (pad_x, pad_y) = letterbox(frame, self._input_size)
        output = session.run(None, {self._input_name: image})[0]
        found = decode_yolo_output(output, layout=self.layout, person_class=self.person_class)
        if found is None or found[1] < self.score_threshold:
            return np.full(4, np.nan)
        box = found[0]
        h, w = frame.shape[:2]
        x = np.clip((box[[0, 2]] - pad_x) / r, 0, w)
        y = np.clip((box[[1, 3]] - pad_y) / r, 0, h)
        return np.array([x[0], y[0], x[1], y[1]])

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, 4)`` person boxes of ``(T, H, W, 3)`` uint8 frames; NaN rows where none."""
        boxes = np.full((len(frames), 4), np.nan)
        for t in range(len(frames)):
            boxes[t] = self.detect(frames[t]) if t % self.every == 0 else boxes[t - 1]
        return boxes


def tailor_video(
    frames: np.ndarray,
    source: BoxSource | None = None,
    *,
    eta: float = DEFAULT_ETA,
    xi: float = DEFAULT_XI,
    band: int = DEFAULT_BAND,
) -> np.ndarray:
    """Find a box per frame with ``source`` (default :class:`MotionBoxSource`) and tailor.

    Args:
        frames: ``(T, H, W, 3)`` uint8 decoded frames.
        source: Box source.
        eta: Enhancement factor inside the box.
        xi: Decay factor per band outside.
        band: Band width in pixels.

    Returns:
        The tailored ``(T, H, W, 3)`` uint8 frames.
    """
    source = source if source is not None else MotionBoxSource()
    return tailor_frames(frames, source(frames), eta=eta, xi=xi, band=band)


# The box sources of tailor specs, one per (source, YOLO file): a YOLO session is made once.
_SOURCES: dict[str, BoxSource] = {}

#: ``VariantSpec.tailor`` keys and their defaults: ``boxes`` is ``"motion"`` (the built-in
#: :class:`MotionBoxSource`) or the path of a YOLO ONNX file (:class:`OnnxYoloBoxSource`).
TAILOR_DEFAULTS: dict[str, Any] = {
    "boxes": "motion",
    "eta": DEFAULT_ETA,
    "xi": DEFAULT_XI,
    "band": DEFAULT_BAND,
}


def tailor_settings(tailor: dict[str, Any]) -> dict[str, Any]:
    """A spec's ``tailor`` dict completed with :data:`TAILOR_DEFAULTS`.

    Raises:
        ValueError: An unknown key, or a factor or band out of range.
    """
    unknown = sorted(set(tailor) - set(TAILOR_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown tailor settings {unknown}; known: {sorted(TAILOR_DEFAULTS)}")
    out = {**TAILOR_DEFAULTS, **tailor}
    if not (out["eta"] >= 1.0 and 0.0 < out["xi"] <= 1.0 and int(out["band"]) >= 1):
        raise ValueError(f"tailor needs eta >= 1, 0 < xi <= 1 and band >= 1, got {tailor}")
    return out


def box_source(boxes: str) -> BoxSource:
    """The (cached) box source a tailor spec names."""
    source = _SOURCES.get(boxes)
    if source is None:
        source = MotionBoxSource() if boxes == "motion" else OnnxYoloBoxSource(boxes)
        _SOURCES[boxes] = source
    return source


def tailor_chunk(
    frames: np.ndarray, tailor: dict[str, Any], previous: np.ndarray | None = None
) -> np.ndarray:
    """Tailor ``(t, H, W, 3)`` uint8 frames of a video by a spec's ``tailor`` settings.

    A video read chunk by chunk gives each chunk with ``previous``, the frame before it, so
    that every frame's motion box is the one it has in the whole video (the box of frame
    ``t`` depends on frames ``t - 1`` and ``t`` only; the video's first frame, which has no
    predecessor, uses its successor): tailoring chunk by chunk equals tailoring the whole,
    provided the first chunk holds two frames or more (the video's first frame needs its
    successor in the same chunk; :mod:`models.stream` reads chunks of 64).
    """
    settings = tailor_settings(tailor)
    if len(frames) == 0:
        return frames.copy()
    source = box_source(str(settings["boxes"]))
    if previous is None:
        boxes = source(frames)
    else:
        boxes = source(np.concatenate([previous[None], frames]))[1:]
    return tailor_frames(
        frames, boxes, eta=settings["eta"], xi=settings["xi"], band=int(settings["band"])
    )
