"""The streamed path (models.stream) against the in-memory one, and its timeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
import torch
from media import write_video
from torch import Tensor

from models.aggregators import VideoScores
from models.bundle import ONNX_FILE, REPOSITORY_FILE, Bundle, load_bundle
from models.pipeline import Forward, decode_for, predict_frames
from models.repository import Repository
from models.stream import Cancelled, Segment, WholeVideoStages, recognize_video, stages_for
from service.quickstart import DEMO_BUNDLES, FAMILIES

NAMES = [f"{family}-move4digits" for family in FAMILIES]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short and long clips, one shorter than any clip or cluster count."""
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for name, n in (("tiny", 5), ("short", 32), ("odd", 77), ("long", 203)):
        out[name] = root / f"{name}.mp4"
        write_video(out[name], n=n, height=64, width=64)
    return out


class _Judge(TypedDict, total=False):
    centres: Tensor
    gamma: float


def _judge(bundle: Bundle) -> _Judge:
    if bundle.family != "ms3d":
        return {}
    repo = Repository.load(bundle.file(REPOSITORY_FILE))
    return {"centres": repo.centres_tensor(), "gamma": repo.gamma}


def _same(a: VideoScores, b: VideoScores) -> None:
    assert a.order[:5].tolist() == b.order[:5].tolist()
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    assert a.unknown == b.unknown


def _forwards(bundle: Bundle) -> dict[str, tuple[Forward, WholeVideoStages | None]]:
    model = bundle.build_model()

    @torch.no_grad()
    def torch_forward(x: Tensor) -> Tensor:
        return model(x)

    out: dict[str, tuple[Forward, WholeVideoStages | None]] = {
        "torch": (torch_forward, stages_for(model))
    }
    if bundle.has(ONNX_FILE):
        ort = pytest.importorskip("onnxruntime")
        del ort
        from export.onnx import OnnxForward

        # The whole-video family streams through stages (PyTorch ones here; the ONNX stage
        # graphs are tested in test_export_onnx); clip families need only the forward.
        out["onnxruntime"] = (OnnxForward(bundle.file(ONNX_FILE), threads=1), stages_for(model))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_streamed_answer_equals_the_in_memory_answer(name: str, videos: dict[str, Path]) -> None:
    bundle = load_bundle(DEMO_BUNDLES / name)
    judge = _judge(bundle)
    for backend, (forward, stages) in _forwards(bundle).items():
        for label, path in videos.items():
            frames, meta = decode_for(path, bundle.spec)
            want = predict_frames(forward, frames, bundle.spec, **judge)
            for chunk in (7, 64):  # several chunks, and the whole short video in one
                got = recognize_video(
                    path,
                    bundle.spec,
                    forward,
                    stages=stages,
                    chunk_frames=chunk,
                    **judge,
                )
                _same(got.prediction.scores, want.scores)
                assert got.prediction.inputs == want.inputs, (backend, label)
                assert got.meta.frame_count == meta.frame_count
                assert got.meta.duration_s == pytest.approx(meta.duration_s)


@pytest.mark.parametrize("name", ["c3d_vll-move4digits", "attention_lstm-move4digits"])
def test_clip_cap_keeps_the_in_memory_choice(name: str, videos: dict[str, Path]) -> None:
    # Every clip is computed; the evenly spaced subset that votes is the in-memory one.
    bundle = load_bundle(DEMO_BUNDLES / name)
    forward, _ = _forwards(bundle)["torch"]
    frames, _ = decode_for(videos["long"], bundle.spec)
    want = predict_frames(forward, frames, bundle.spec, max_inputs=3)
    got = recognize_video(videos["long"], bundle.spec, forward, max_inputs=3, chunk_frames=16)
    _same(got.prediction.scores, want.scores)
    assert got.prediction.inputs == want.inputs == 3


@pytest.mark.parametrize("name", NAMES)
def test_timeline_covers_the_video_and_each_window_answers_alone(
    name: str, videos: dict[str, Path]
) -> None:
    bundle = load_bundle(DEMO_BUNDLES / name)
    judge = _judge(bundle)
    forward, stages = _forwards(bundle)["torch"]
    seen: list[Segment] = []
    got = recognize_video(
        videos["long"],
        bundle.spec,
        forward,
        stages=stages,
        timeline=True,
        window_s=2.0,
        chunk_frames=16,
        on_segment=seen.append,
        **judge,
    )
    timeline = got.timeline
    assert seen == timeline and len(timeline) >= 2
    assert timeline[0].start_s == 0.0
    assert timeline[-1].end_s == pytest.approx(got.meta.duration_s)
    for a, b in zip(timeline, timeline[1:]):
        assert a.start_s < a.end_s == b.start_s
    frames, _ = decode_for(videos["long"], bundle.spec)
    fps = got.meta.frame_count / got.meta.duration_s
    for seg in timeline:
        first = round(seg.start_s * fps)
        if bundle.spec.sampler == "consecutive":
            # One segment per clip: its answer is that clip's alone.
            span = bundle.spec.sampler_args().get("frame_step", 1) * (bundle.spec.clip_len - 1) + 1
            window = frames[first : first + span]
        else:
            last = min(len(frames), round(seg.end_s * fps))
            window = frames[first:last]
        alone = predict_frames(forward, window, bundle.spec, **judge)
        _same(seg.scores, alone.scores)


def test_ms3d_window_rule_uses_the_window_seconds(videos: dict[str, Path]) -> None:
    bundle = load_bundle(DEMO_BUNDLES / "ms3d-move4digits")
    forward, _ = _forwards(bundle)["torch"]
    got = recognize_video(
        videos["long"], bundle.spec, forward, timeline=True, window_s=3.0, **_judge(bundle)
    )
    # 203 frames at 25 fps, windows of 75 frames: 75 + 75 + 53.
    assert [round(s.end_s - s.start_s, 2) for s in got.timeline] == [3.0, 3.0, 2.12]
    assert math.isclose(got.timeline[-1].end_s, 203 / 25)


def test_cancel_stops_between_chunks(videos: dict[str, Path]) -> None:
    bundle = load_bundle(DEMO_BUNDLES / "c3d_vll-move4digits")
    forward, _ = _forwards(bundle)["torch"]
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        recognize_video(videos["long"], bundle.spec, forward, chunk_frames=16, cancelled=cancelled)
    assert len(calls) == 3


def test_cancel_reaches_the_second_pass(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ms3d's second pass (a video past the kept-frames budget) decodes without yielding
    # chunks; it still polls between chunks.
    import models.stream

    monkeypatch.setattr(models.stream, "KEEP_BYTES", 0)
    bundle = load_bundle(DEMO_BUNDLES / "ms3d-move4digits")
    forward, _ = _forwards(bundle)["torch"]
    polls = []
    first_pass = math.ceil(203 / 16)

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > first_pass + 1

    with pytest.raises(Cancelled):
        recognize_video(
            videos["long"],
            bundle.spec,
            forward,
            chunk_frames=16,
            cancelled=cancelled,
            **_judge(bundle),
        )
    assert len(polls) == first_pass + 2


def test_frame_differences_in_chunks_equal_the_whole_video() -> None:
    from video.sampling import (
        distribution_from_differences,
        frame_difference_distribution,
        frame_differences,
    )

    frames = np.random.default_rng(0).integers(0, 256, size=(23, 5, 4, 3), dtype=np.uint8)
    parts, previous = [], None
    for i in range(0, 23, 6):
        chunk = frames[i : i + 6]
        parts.append(frame_differences(chunk, previous))
        previous = chunk[-1]
    diffs = np.concatenate(parts)
    assert diffs.shape == (22,)
    np.testing.assert_array_equal(
        distribution_from_differences(diffs), frame_difference_distribution(frames)
    )


@pytest.mark.parametrize("keep", [0, None])
def test_ms3d_second_pass_and_kept_frames_agree(
    keep: int | None, videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the budget the first pass keeps no frame and a second pass decodes the picked ones.
    import models.stream

    if keep is not None:
        monkeypatch.setattr(models.stream, "KEEP_BYTES", keep)
    bundle = load_bundle(DEMO_BUNDLES / "ms3d-move4digits")
    forward, _ = _forwards(bundle)["torch"]
    frames, _ = decode_for(videos["long"], bundle.spec)
    want = predict_frames(forward, frames, bundle.spec, **_judge(bundle))
    got = recognize_video(videos["long"], bundle.spec, forward, chunk_frames=16, **_judge(bundle))
    _same(got.prediction.scores, want.scores)
    torch.testing.assert_close(got.prediction.outputs, want.outputs, rtol=0, atol=0)
