"""Video-level evaluation through the service's own path (decode -> sampler -> network ->
aggregator), so the figures here are the figures a deployed bundle gives."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.aggregators import VideoScores
from models.pipeline import Forward
from models.spec import VariantSpec
from models.stream import WholeVideoStages, recognize_video
from training.metrics import summarize
from video.errors import VideoError

__all__ = ["evaluate_videos", "VideoOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VideoOutcome:
    """One evaluated video: its ranking, rejection flag, and per-input correctness."""

    path: Path
    label: int
    order: list[int]
    unknown: bool
    input_correct: int
    inputs: int
    nearest: float


def _input_correct(outputs: Tensor, scores: VideoScores, label: int) -> int:
    pred = scores.input_pred
    if pred is None and outputs.dim() == 2 and scores.distances is None:
        pred = outputs.argmax(dim=1)
    if pred is None:
        return 0
    return int((pred == label).sum())


@torch.no_grad()
def evaluate_videos(
    forward: Forward,
    videos: Sequence[tuple[Path, int]],
    spec: VariantSpec,
    num_classes: int,
    *,
    batch_size: int = 16,
    max_inputs: int = 0,
    centres: Tensor | None = None,
    gamma: float | None = None,
    stages: WholeVideoStages | None = None,
    progress: bool = False,
) -> tuple[dict[str, object], list[VideoOutcome]]:
    """Evaluate ``videos`` (path, label) and return the summary and per-video outcomes.

    Each video goes through :func:`models.stream.recognize_video`, the service's streamed
    path (``stages``: a full_video network's split, see there). Undecodable videos are logged
    by path, counted in ``skipped`` and left out of the figures.
    """
    outcomes: list[VideoOutcome] = []
    skipped: list[str] = []
    iterator: Iterable[tuple[Path, int]] = videos
    if progress:
        from tqdm import tqdm

        iterator = tqdm(videos, desc="eval", leave=False, unit="video")
    for path, label in iterator:
        try:
            pred = recognize_video(
                path,
                spec,
                forward,
                stages=stages,
                batch_size=batch_size,
                max_inputs=max_inputs,
                centres=centres,
                gamma=gamma,
            ).prediction
        except VideoError as err:
            log.warning("evaluation skips %s: %s", path, err)
            skipped.append(str(path))
            continue
        s = pred.scores
        nearest = float(s.distances[s.order[0]]) if s.distances is not None else float("nan")
        outcomes.append(
            VideoOutcome(
                Path(path),
                int(label),
                s.order.tolist(),
                s.unknown,
                _input_correct(pred.outputs, s, int(label)),
                pred.inputs,
                nearest,
            )
        )
    clip_total = sum(o.inputs for o in outcomes) if spec.output == "logits" else 0
    summary = summarize(
        [o.order for o in outcomes],
        [o.label for o in outcomes],
        num_classes,
        clip_correct=sum(o.input_correct for o in outcomes),
        clip_total=clip_total,
    )
    summary["skipped"] = skipped
    if any(o.unknown for o in outcomes) or gamma is not None:
        summary["unknown_rate"] = (
            float(np.mean([o.unknown for o in outcomes])) if outcomes else float("nan")
        )
    return summary, outcomes
