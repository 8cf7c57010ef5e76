"""Sparse decoding (video.decode.decode_sampled) against the full decode, and its use by the
shared recognition path (models.pipeline.decode_sample, models.stream).

Every answer is compared bit for bit with what decode_video returns for the same indices;
the number of frames decoded (``on_progress`` with ``every=1``) shows the decode was sparse.
Every video is written here, with the GOP structure under test.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from media import write_audio_only

import models.stream
from models.bundle import load_bundle
from models.pipeline import decode_for, decode_sample, predict_frames, sample_video
from models.stream import recognize_video
from service.quickstart import DEMO_BUNDLES
from video.decode import (
    DecodeLimits,
    decode_sampled,
    decode_video,
    index_video,
    probe_video,
)
from video.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    VideoError,
    VideoLimitError,
)
from video.sampling import sample_indices, uniform_segments

pytestmark = pytest.mark.timeout(60)

N, H, W, FPS = 60, 48, 64, 25
SIZE = (24, 32)
FALLBACK = "sparse decode falls back"


# ------------------------------------------------------------------------------ helpers


def _textured(n: int, seed: int = 0) -> np.ndarray:
    """A noise texture panning 2 px a frame: every frame costs bits, motion is real."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (H + n, W + 2 * n, 3), dtype=np.uint8)
    return np.stack([big[i : i + H, 2 * i : 2 * i + W] for i in range(n)])


def _encode(
    path: Path,
    *,
    n: int = N,
    codec: str = "libx264",
    options: dict[str, object] | None = None,
    pts_ms: list[int] | None = None,
    faststart: bool = False,
) -> Path:
    """``n`` textured frames; ``pts_ms`` gives each frame its own timestamp (1/1000 s)."""
    container_options: dict[str, str] = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        stream = container.add_stream(codec, rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options = options or {}
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i, img in enumerate(_textured(n)):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _x264(params: str) -> dict[str, object]:
    return {"crf": "18", "preset": "veryfast", "x264-params": params}


def _given(indices: np.ndarray) -> Callable[[int], np.ndarray]:
    """A sampler that picks ``indices`` whatever the frame count."""
    return lambda _count: indices


def _sampled(
    path: Path | io.BytesIO, pick: Callable[[int], np.ndarray], **kwargs
) -> tuple[np.ndarray, np.ndarray, int]:
    """decode_sampled's frames and indices, and how many frames it decoded."""
    counts = [0]
    got = decode_sampled(path, pick, size=SIZE, on_progress=counts.append, every=1, **kwargs)
    assert got is not None
    frames, indices, _ = got
    return frames, indices, counts[-1]


# x264 settings: keyframe interval (keyint), B-frames, open GOPs; scenecut=0 keeps GOPs regular.
STRUCTURES: dict[str, tuple[str, str, dict[str, object]]] = {
    "all_intra": ("clip.mp4", "libx264", _x264("keyint=1")),
    "long_gop": ("clip.mp4", "libx264", _x264("keyint=30:min-keyint=30:scenecut=0:bframes=0")),
    "bframes_pyramid": (
        "clip.mp4",
        "libx264",
        _x264("keyint=12:min-keyint=12:scenecut=0:bframes=3:b-pyramid=normal"),
    ),
    "open_gop_mp4": (
        "clip.mp4",
        "libx264",
        _x264("keyint=12:min-keyint=12:scenecut=0:bframes=3:open-gop=1"),
    ),
    "open_gop_mkv": (
        "clip.mkv",
        "libx264",
        _x264("keyint=12:min-keyint=12:scenecut=0:bframes=3:open-gop=1"),
    ),
    "hevc_open_gop": (
        "clip.mp4",
        "libx265",
        {"x265-params": "keyint=12:min-keyint=12:scenecut=0:bframes=3:open-gop=1:log-level=error"},
    ),
    "vp9_webm": ("clip.webm", "libvpx-vp9", {"g": "12", "deadline": "realtime", "cpu-used": "8"}),
    # Demuxers without a keyframe index: read through from the start, never seeking.
    "mpeg2_program_stream": (
        "clip.mpg",
        "mpeg2video",
        {"g": "12", "bf": "2", "sc_threshold": "1000000000"},
    ),
    "h264_transport_stream": ("clip.ts", "libx264", _x264("keyint=12:scenecut=0:bframes=2")),
    "mjpeg_avi": ("clip.avi", "mjpeg", {}),
}


@pytest.fixture(scope="module", params=sorted(STRUCTURES))
def structured(request, tmp_path_factory) -> tuple[str, Path]:
    name, codec, options = STRUCTURES[request.param]
    if codec not in av.codecs_available:
        pytest.skip(f"no {codec} encoder")
    path = tmp_path_factory.mktemp(request.param) / name
    return request.param, _encode(path, codec=codec, options=options)


# ------------------------------------------------------------------------------ exactness


def test_sparse_frames_are_the_full_decode_bit_for_bit(structured, caplog) -> None:
    name, path = structured
    full, meta = decode_video(path, size=SIZE)
    assert len(full) == N
    picks = [
        uniform_segments(N, 8),  # TSM-8 segment centres
        np.array([[N - 1, 0], [0, 31]]),  # (N, L) rows, repeats, out of order
        np.array([11, 12, 13, 35, 36]),  # across GOP boundaries (keyint 12)
    ]
    with caplog.at_level(logging.INFO, logger="video.decode"):
        for pick in picks:
            got = decode_sampled(path, _given(pick), size=SIZE)
            assert got is not None, name
            frames, indices, got_meta = got
            np.testing.assert_array_equal(indices, pick)
            np.testing.assert_array_equal(frames, full[np.unique(pick)], err_msg=name)
            assert got_meta == meta
    assert FALLBACK not in caplog.text  # every frame came from the sparse decode itself


def test_each_single_frame_of_an_open_gop_stream(tmp_path, caplog) -> None:
    # Leading B-frames of an open GOP are shown before their keyframe and reference the GOP
    # before it: each is decoded from that earlier keyframe.
    options = _x264("keyint=12:min-keyint=12:scenecut=0:bframes=3:open-gop=1")
    path = _encode(tmp_path / "open.mp4", options=options)
    table = index_video(path).packets
    keys = np.flatnonzero(table.key)  # packet positions, decode order
    at = table.display  # frame i is packet at[i]
    own = keys[np.searchsorted(keys, at, side="right") - 1]  # each frame's keyframe packet
    leading = np.flatnonzero(table.pts[at] < table.pts[own])
    assert len(leading) >= 3  # the encoder did make open GOPs
    full, _ = decode_video(path, size=SIZE)
    with caplog.at_level(logging.INFO, logger="video.decode"):
        for i in range(N):
            frames, _, decoded = _sampled(path, _given(np.array([i])))
            np.testing.assert_array_equal(frames[0], full[i], err_msg=f"frame {i}")
            assert decoded < N
            if i in leading:  # more than its own keyframe up to it could give
                assert decoded > at[i] - own[i] + 1
    assert FALLBACK not in caplog.text


def test_frames_decoded_are_only_the_gops_needed(tmp_path) -> None:
    intra = _encode(tmp_path / "intra.mp4", options=_x264("keyint=1"))
    # Every frame is a keyframe: three wanted frames, three decoded.
    assert _sampled(intra, _given(np.array([5, 40, 41])))[2] == 3
    long_gop = _encode(
        tmp_path / "long.mp4", options=_x264("keyint=30:min-keyint=30:scenecut=0:bframes=0")
    )
    assert index_video(long_gop).keyframes == 2  # frames 0 and 30
    # Frame 35: from keyframe 30, six frames; frame 3 as well: two spans, ten frames.
    assert _sampled(long_gop, _given(np.array([35])))[2] == 6
    assert _sampled(long_gop, _given(np.array([3, 35])))[2] == 10


def test_h264_non_reference_pictures_are_skipped(tmp_path) -> None:
    # Fixed pattern, GOPs of 15: I B B P B B P B B P B B P B P (B-frames never referenced).
    params = "keyint=15:min-keyint=15:scenecut=0:bframes=2:b-adapt=0:b-pyramid=none"
    path = _encode(tmp_path / "b.mp4", n=45, options=_x264(params))
    index = index_video(path)
    assert index.exact and index.frame_count == 45 and index.keyframes == 3
    assert int(index.packets.nonref.sum()) == 3 * 9  # nine B-frames a GOP
    full, _ = decode_video(path, size=SIZE)
    # Frame 9 (a P-frame): I0 P3 P6 P9. Frame 10 (a B-frame): those, P12 and B10.
    # Frame 16 (a B-frame after keyframe 15): I15 P18 B16.
    for frame, decoded in ((9, 4), (10, 6), (16, 3), (0, 1)):
        frames, _, count = _sampled(path, _given(np.array([frame])))
        assert count == decoded, frame
        np.testing.assert_array_equal(frames[0], full[frame])


def test_variable_frame_rate(tmp_path) -> None:
    # Irregular timestamps: 20 to 80 ms apart, B-frames reordering them.
    pts = np.cumsum(np.random.default_rng(3).integers(20, 80, N)).tolist()
    options = _x264("keyint=10:min-keyint=10:scenecut=0:bframes=2")
    for name in ("vfr.mp4", "vfr.mkv"):
        path = _encode(tmp_path / name, options=options, pts_ms=pts)
        full, meta = decode_video(path, size=SIZE)
        assert meta.duration_s == pytest.approx((pts[-1] - pts[0]) / 1000, abs=0.1)
        pick = np.array([0, 7, 33, 34, N - 1])
        got = decode_sampled(path, _given(pick), size=SIZE)
        assert got is not None
        np.testing.assert_array_equal(got[0], full[pick])
        assert got[2] == meta  # duration from the timestamps, as the full decode measures


def test_file_objects_and_what_is_decoded_in_full(tmp_path) -> None:
    path = _encode(tmp_path / "g.mp4", options=_x264("keyint=10"))
    full, _ = decode_video(path, size=SIZE)
    data = path.read_bytes()
    frames, _, _ = _sampled(io.BytesIO(data), _given(np.array([3, 44])))
    np.testing.assert_array_equal(frames, full[[3, 44]])

    class Pipe(io.RawIOBase):  # no seek: cannot be read twice
        def readable(self) -> bool:
            return True

    assert decode_sampled(Pipe(), _given(np.array([0]))) is None
    # A raw H.264 stream has no timestamps; an MPEG-4 part 2 one is not in the sparse set.
    raw = _encode(tmp_path / "raw.h264", options=_x264("keyint=10"))
    assert index_video(raw).reason == "a packet has no timestamp"
    assert decode_sampled(raw, _given(np.array([0]))) is None
    mpeg4 = _encode(tmp_path / "part2.mp4", codec="mpeg4")
    assert not index_video(mpeg4).exact
    assert decode_sampled(mpeg4, _given(np.array([0]))) is None
    # The sampler must stay inside the video.
    with pytest.raises(ValueError, match="outside"):
        decode_sampled(path, lambda count: np.array([count]))


# ------------------------------------------------------------------------------ limits


def test_limits_are_enforced_as_by_the_full_decode(tmp_path) -> None:
    path = _encode(tmp_path / "g.mp4", options=_x264("keyint=10"))
    exact = DecodeLimits(
        max_frames=N, max_duration_s=N / FPS, max_pixels=W * H, max_bytes=path.stat().st_size
    )
    assert _sampled(path, _given(np.array([5])), limits=exact)[2] < N
    for limits in (
        DecodeLimits(max_frames=N - 1),
        DecodeLimits(max_duration_s=1.0),
        DecodeLimits(max_pixels=W * H - 1),
        DecodeLimits(max_bytes=100),
    ):
        with pytest.raises(VideoLimitError) as full:
            decode_video(path, limits=limits)
        with pytest.raises(VideoLimitError) as sparse:
            decode_sampled(path, _given(np.array([5])), limits=limits)
        assert str(sparse.value) == str(full.value)
    # MKV declares neither frame count nor duration here: the packets are checked.
    mkv = _encode(tmp_path / "g.mkv", options=_x264("keyint=10"))
    assert probe_video(mkv).frame_count == 0
    for limits in (DecodeLimits(max_frames=N - 1), DecodeLimits(max_duration_s=1.0)):
        with pytest.raises(VideoLimitError) as full:
            decode_video(mkv, limits=limits)
        with pytest.raises(VideoLimitError) as sparse:
            decode_sampled(mkv, _given(np.array([5])), limits=limits)
        assert str(sparse.value) == str(full.value)


# ------------------------------------------------------------------------------ bad input


def _mdat_span(data: bytes) -> tuple[int, int]:
    start = data.index(b"mdat") + 4
    return start, start - 8 + int.from_bytes(data[start - 8 : start - 4], "big")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, tuple[Path, type[VideoError]]]:
    """Bad files and the error the full decode raises for each."""
    root = tmp_path_factory.mktemp("damaged")
    good = _encode(root / "good.mp4", options=_x264("keyint=10"), faststart=True)
    data = good.read_bytes()
    start, end = _mdat_span(data)
    rng = np.random.default_rng(1)
    garbage = bytearray(data)
    a, b = start + (end - start) // 10, start + (end - start) * 9 // 10
    garbage[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()
    payloads = {
        "empty.mp4": b"",
        "random.mp4": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "cut.mp4": data[: start + (end - start) * 4 // 10],
        "garbage.mp4": bytes(garbage),
    }
    out = {}
    for name, payload in payloads.items():
        (root / name).write_bytes(payload)
        with pytest.raises(VideoError) as info:
            decode_video(root / name)
        out[name] = (root / name, type(info.value))
    write_audio_only(root / "audio.m4a")
    out["audio.m4a"] = (root / "audio.m4a", NoVideoStreamError)
    expected = {
        "empty.mp4": EmptyVideoError,
        "random.mp4": NotAVideoError,
        "cut.mp4": TruncatedVideoError,
        "garbage.mp4": CorruptVideoError,
    }
    assert {name: error for name, (_, error) in out.items() if name in expected} == expected
    return out


def test_damaged_input_raises_what_the_full_decode_raises(damaged) -> None:
    bundle = load_bundle(DEMO_BUNDLES / "full_video-move4digits")
    spec = bundle.spec.replace(sampler="uniform")  # TSM-k: 8 segment centres
    model = bundle.build_model()
    for name, (path, error) in damaged.items():
        # decode_sample says "decode in full" (None) or raises; the shared path raises it.
        try:
            decode_sample(path, spec)
        except VideoError as err:
            assert type(err) is error, name
        with pytest.raises(VideoError) as info:
            recognize_video(path, spec, model)
        assert type(info.value) is error, name


# ------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory) -> Path:
    """200 frames in GOPs of 10: a sampler's few frames are a small part of them."""
    path = tmp_path_factory.mktemp("pipeline") / "v.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = _x264("keyint=10:min-keyint=10:scenecut=0")
        rng = np.random.default_rng(5)
        big = rng.integers(0, 256, (64 + 200, 64 + 200, 3), dtype=np.uint8)
        for i in range(200):
            img = big[i : i + 64, i : i + 64]
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_count_samplers_pick_from_the_count_alone() -> None:
    video = np.zeros((40, 2, 2, 3), dtype=np.uint8)
    cases: tuple[tuple[str, dict[str, Any]], ...] = (
        ("uniform", {"num_segments": 4}),
        ("consecutive", {"clip_len": 4, "stride": 6}),
        ("all", {"min_frames": 45}),
    )
    for name, kwargs in cases:
        by_count = sample_indices(name, 40, max_inputs=3, **kwargs)
        np.testing.assert_array_equal(by_count, sample_indices(name, video, max_inputs=3, **kwargs))
    assert sample_indices("uniform", 40, num_segments=4).tolist() == [[5, 15, 25, 35]]
    with pytest.raises(ValueError, match="reads the pixels"):
        sample_indices("pz", 40, sizes=(2, 3))


def test_decode_sample_is_decode_for_then_sample_video(gop_video) -> None:
    bundle = load_bundle(DEMO_BUNDLES / "c3d_vll-move4digits")
    frames, _ = decode_for(gop_video, bundle.spec)
    for train, cap in ((False, 3), (True, 2)):
        rng_full, rng_sparse = np.random.default_rng(7), np.random.default_rng(7)
        want = sample_video(frames, bundle.spec, train=train, rng=rng_full, max_inputs=cap)
        got = decode_sample(gop_video, bundle.spec, train=train, rng=rng_sparse, max_inputs=cap)
        assert got is not None
        kept, indices, meta = got
        assert meta.frame_count == len(frames) == 200
        assert len(kept) == len(np.unique(want)) < 200
        np.testing.assert_array_equal(kept[indices], frames[want])
        assert rng_sparse.integers(1 << 30) == rng_full.integers(1 << 30)  # same draws used
    # pz reads the pixels: no sparse decode for ms3d's first pass.
    assert decode_sample(gop_video, load_bundle(DEMO_BUNDLES / "ms3d-move4digits").spec) is None


def _no_streaming(*args, **kwargs):
    raise AssertionError("the sparse path decoded every frame")


@pytest.mark.parametrize(
    ("name", "sampler", "max_inputs"),
    [("full_video-move4digits", "uniform", 0), ("c3d_vll-move4digits", None, 2)],
)
def test_recognition_is_identical_with_sparse_decode_on_and_off(
    name: str, sampler: str | None, max_inputs: int, gop_video, monkeypatch
) -> None:
    bundle = load_bundle(DEMO_BUNDLES / name)
    spec = bundle.spec.replace(sampler=sampler) if sampler else bundle.spec
    model = bundle.build_model()

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    off = recognize_video(gop_video, spec, forward, max_inputs=max_inputs, sparse=False)
    with monkeypatch.context() as patch:
        patch.setattr(models.stream, "iter_video_chunks", _no_streaming)
        on = recognize_video(gop_video, spec, forward, max_inputs=max_inputs)
    frames, meta = decode_for(gop_video, spec)
    in_memory = predict_frames(forward, frames, spec, max_inputs=max_inputs)
    assert on.meta == off.meta == meta
    assert on.prediction.inputs == off.prediction.inputs == in_memory.inputs
    # Same frames, same batches as in memory: the same numbers exactly.
    assert torch.equal(on.prediction.outputs, in_memory.outputs)
    torch.testing.assert_close(on.prediction.outputs, off.prediction.outputs, rtol=0, atol=1e-5)
    assert on.prediction.scores.order.tolist() == off.prediction.scores.order.tolist()


def test_second_pass_decodes_only_the_frames_picked(gop_video, monkeypatch) -> None:
    # ms3d's (and a long TSM-k video's) second pass, past the first pass's keep budget.
    spec = load_bundle(DEMO_BUNDLES / "ms3d-move4digits").spec
    reader = models.stream._Reader(gop_video, spec, None, 1, 16, None)
    rows = np.array([[3, 3, 77, 150], [0, 42, 150, 199]])
    full, _ = models.stream._keep_frames(reader, rows)  # the total unknown: decode it all
    with monkeypatch.context() as patch:
        patch.setattr(models.stream, "decode_frames_at", _no_streaming)
        kept, local = models.stream._keep_frames(reader, rows, total=200)
    np.testing.assert_array_equal(kept, full)
    np.testing.assert_array_equal(kept[local], decode_for(gop_video, spec)[0][rows])
    # A first pass that counted otherwise than the packets: not trusted, decoded in full.
    assert decode_sampled(gop_video, _given(rows), frame_count=199) is None
    miscounted, _ = models.stream._keep_frames(reader, rows, total=199)
    np.testing.assert_array_equal(miscounted, full)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_no_file_descriptor_leak(damaged, gop_video) -> None:
    decode_sampled(gop_video, _given(np.array([5])))  # warm up lazy library loading
    before = len(list(Path("/proc/self/fd").iterdir()))
    for _ in range(3):
        for path, _error in damaged.values():
            with pytest.raises(VideoError):
                got = decode_sampled(path, _given(np.array([0])))
                if got is None:  # not indexable: the full decode raises
                    decode_video(path)
        decode_sampled(io.BytesIO(gop_video.read_bytes()), _given(np.array([5, 150])))
        with pytest.raises(VideoLimitError):
            decode_sampled(gop_video, _given(np.array([5])), limits=DecodeLimits(max_frames=3))
    assert len(list(Path("/proc/self/fd").iterdir())) == before


def test_a_damaged_keyframe_falls_back_to_the_full_decode(tmp_path, caplog) -> None:
    # Zeros inside keyframe 20's data: a full decode conceals it from frame 19, which a
    # decode starting at that keyframe never saw; frames 20-29 depend on it.
    path = _encode(tmp_path / "g.mp4", options=_x264("keyint=10:min-keyint=10:scenecut=0"))
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    shown_at = sorted(p.pts for p in packets if p.pts is not None)
    key = next(p for p in packets if p.pts == shown_at[20])
    assert key.is_keyframe and key.pos is not None
    data = bytearray(path.read_bytes())
    middle = key.pos + key.size // 2
    data[middle : middle + 64] = bytes(64)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    full, meta = decode_video(damaged, size=SIZE)
    assert meta.frame_count == N  # concealed, not dropped
    with caplog.at_level(logging.INFO, logger="video.decode"):
        got = decode_sampled(damaged, _given(np.array([25])), size=SIZE)
    assert got is not None
    np.testing.assert_array_equal(got[0], full[[25]])
    assert "damaged" in caplog.text and FALLBACK in caplog.text
