"""Tests for video.decode: content, inputs, streaming, limits, bad input, no fd leaks.

Every video is written by the test itself (tests/media.py plus the helpers below).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest
from media import write_audio_only, write_video

from video.decode import (
    DecodeLimits,
    VideoMeta,
    decode_frames_at,
    decode_video,
    iter_video_chunks,
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

# A decoder hang must fail the test, not stall the suite.
pytestmark = pytest.mark.timeout(60)

N, H, W, FPS = 20, 48, 64, 25


# ------------------------------------------------------------------------------ helpers


class _NonSeekable(io.RawIOBase):
    """A pipe-like reader: no seek, no tell (like a socket or an HTTP body)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def _textured_frames(n: int, seed: int = 0) -> np.ndarray:
    """A panning noise texture: every frame costs real bits, so damage hits many frames."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (H + n, W + n, 3), dtype=np.uint8)
    return np.stack([big[i : i + H, i : i + W] for i in range(n)])


def _write_mp4(path: Path, frames: np.ndarray, *, faststart: bool) -> None:
    """H.264 MP4; ``faststart`` puts the moov index before the sample data."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _mdat_span(data: bytes) -> tuple[int, int]:
    """Byte range of the sample data inside an MP4 (after the mdat box header)."""
    start = data.index(b"mdat") + 4
    size = int.from_bytes(data[start - 8 : start - 4], "big")
    return start, start - 8 + size


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    av.VideoFrame.from_ndarray(np.full((H, W, 3), 90, np.uint8), format="rgb24").to_image().save(
        buf, format="PNG"
    )
    return buf.getvalue()


@pytest.fixture
def clip(make_video) -> tuple[Path, np.ndarray]:
    """The standard 20-frame 64x48 25 fps H.264 MP4 and the frames written into it."""
    path = make_video("clip.mp4", n=N, height=H, width=W, fps=FPS)
    return path, write_video(path, n=N, height=H, width=W, fps=FPS)


# ------------------------------------------------------------------------------ decoding


def test_decode_returns_written_frames_in_order(clip):
    path, written = clip
    frames, meta = decode_video(path)
    assert frames.dtype == np.uint8 and frames.shape == (N, H, W, 3)
    assert frames.flags.c_contiguous
    assert meta == VideoMeta(
        fps=25.0,
        frame_count=N,
        duration_s=cast(float, pytest.approx(N / FPS)),  # approx compares equal to the float
        width=W,
        height=H,
        codec="h264",
    )
    err = np.abs(frames[:, None].astype(np.int16) - written[None].astype(np.int16))
    mae = err.mean(axis=(2, 3, 4))  # mae[i, j]: decoded frame i against written frame j
    assert mae.diagonal().max() < 3.0  # crf 18 + 4:2:0 chroma: close, not exact
    assert (mae.argmin(axis=1) == np.arange(N)).all()  # no frame dropped, shifted or reordered


def test_resize_in_same_pass_matches_downscaled_source(clip):
    path, written = clip
    frames, meta = decode_video(path, size=(H // 2, W // 2))
    assert frames.shape == (N, H // 2, W // 2, 3)
    assert (meta.width, meta.height) == (W, H)  # meta reports the source size
    # Halving: a bilinear (antialiased) shrink is close to the 2x2 block mean.
    expected = written.reshape(N, H // 2, 2, W // 2, 2, 3).mean(axis=(2, 4))
    assert np.abs(frames - expected).mean(axis=(1, 2, 3)).max() < 5.0


def test_resize_to_odd_and_larger_sizes(clip):
    path, _ = clip
    assert decode_video(path, size=(31, 47))[0].shape == (N, 31, 47, 3)
    big, _ = decode_video(path, size=(97, 130))
    assert big.shape == (N, 97, 130, 3)
    # Frame 0: white 12x12 square at the top-left corner, black elsewhere; scale ~2x.
    assert big[0, :20, :20].mean() > 230 and big[0, 40:, 50:].mean() < 30


def test_probe_reads_metadata_without_decoding(clip):
    path, _ = clip
    meta = probe_video(path)
    assert meta.fps == 25.0 and meta.frame_count == N
    assert meta.duration_s == pytest.approx(N / FPS)
    assert (meta.width, meta.height, meta.codec) == (W, H, "h264")


def test_file_objects_give_the_same_frames_as_the_path(clip, tmp_path):
    path, _ = clip
    expected, _ = decode_video(path)
    data = path.read_bytes()

    buf = io.BytesIO(data)
    assert np.array_equal(decode_video(buf)[0], expected)
    assert not buf.closed  # the caller's object stays the caller's

    with open(path, "rb") as fh:
        assert np.array_equal(decode_video(fh)[0], expected)

    # Read from the current position: the bytes before it are not part of the video.
    prefixed = io.BytesIO(b"X" * 1000 + data)
    prefixed.seek(1000)
    assert np.array_equal(decode_video(prefixed)[0], expected)

    # moov at the end needs seeking: non-seekable input is spooled first.
    assert data.find(b"moov") > data.find(b"mdat")
    assert np.array_equal(decode_video(_NonSeekable(data))[0], expected)


def test_chunks_concatenate_to_the_full_decode(clip):
    path, _ = clip
    full, _ = decode_video(path, size=(24, 32))
    chunks = list(iter_video_chunks(path, chunk_size=7, size=(24, 32)))
    assert [len(c) for c in chunks] == [7, 7, 6]
    assert all(c.dtype == np.uint8 and c.shape[1:] == (24, 32, 3) for c in chunks)
    assert np.array_equal(np.concatenate(chunks), full)
    # Chunks are independent arrays, not one buffer reused.
    assert not np.shares_memory(chunks[0], chunks[1])


def test_frames_at_equal_the_full_decode_and_are_refused_alike(clip):
    path, _ = clip
    full, meta = decode_video(path, size=(24, 30))
    picked, picked_meta = decode_frames_at(path, np.array([7, 0, 7, N - 1]), size=(24, 30))
    np.testing.assert_array_equal(picked, full[[0, 7, N - 1]])
    assert picked_meta == meta
    with pytest.raises(VideoLimitError):
        decode_frames_at(path, np.array([0]), limits=DecodeLimits(max_frames=N - 1))


def test_chunks_from_file_object_and_single_chunk(clip):
    path, _ = clip
    full, _ = decode_video(path)
    chunks = list(iter_video_chunks(io.BytesIO(path.read_bytes()), chunk_size=64))
    assert len(chunks) == 1 and np.array_equal(chunks[0], full)


def test_other_containers_decode(make_video):
    for name in ("clip.mkv", "clip.h264"):
        frames, meta = decode_video(make_video(name, n=12, height=H, width=W))
        assert frames.shape == (12, H, W, 3) and meta.frame_count == 12


def test_resolution_change_mid_stream_keeps_first_size(tmp_path):
    first, second = tmp_path / "a.h264", tmp_path / "b.h264"
    write_video(first, n=10, height=H, width=W)
    write_video(second, n=5, height=2 * H, width=2 * W)
    joined = tmp_path / "joined.h264"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    frames, _ = decode_video(joined)
    assert frames.shape == (15, H, W, 3)


def test_bad_arguments_raise_value_error(clip):
    path, _ = clip
    for kwargs in ({"threads": 0}, {"size": (0, 10)}, {"size": (10,)}, {"size": "big"}):
        with pytest.raises(ValueError):
            decode_video(path, **kwargs)
    with pytest.raises(ValueError):
        iter_video_chunks(path, chunk_size=0)  # at the call, not at the first next()
    with pytest.raises(ValueError):
        DecodeLimits(max_frames=0)
    with pytest.raises(TypeError):
        decode_video(12345)  # type: ignore[arg-type]  # a wrong argument on purpose


# ------------------------------------------------------------------------------ limits


def test_limits_at_the_exact_value_pass(clip):
    path, _ = clip
    exact = DecodeLimits(
        max_frames=N, max_duration_s=N / FPS, max_pixels=W * H, max_bytes=path.stat().st_size
    )
    assert decode_video(path, limits=exact)[0].shape[0] == N
    assert sum(len(c) for c in iter_video_chunks(path, limits=exact)) == N


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        (DecodeLimits(max_frames=N - 1), "max_frames=19"),
        (DecodeLimits(max_duration_s=0.5), "max_duration_s=0.5"),
        (DecodeLimits(max_pixels=W * H - 1), "max_pixels=3071"),
        (DecodeLimits(max_bytes=100), "max_bytes=100"),
    ],
)
def test_each_limit_refuses_from_metadata(clip, limits, needle):
    path, _ = clip
    for call in (
        lambda: decode_video(path, limits=limits),
        lambda: probe_video(path, limits=limits),
        lambda: list(iter_video_chunks(path, limits=limits)),
    ):
        with pytest.raises(VideoLimitError, match=needle) as info:
            call()
        assert info.value.code == "video_too_large"


def test_frame_and_duration_limits_enforced_while_decoding(make_video):
    # A raw H.264 stream declares neither frame count nor duration: only counting works.
    path = make_video("raw.h264", n=N, height=H, width=W)
    assert probe_video(path).frame_count == 0
    with pytest.raises(VideoLimitError, match=r"more than 10 frames.*max_frames=10"):
        decode_video(path, limits=DecodeLimits(max_frames=10))
    with pytest.raises(VideoLimitError, match="max_duration_s=0.5"):
        decode_video(path, limits=DecodeLimits(max_duration_s=0.5))
    chunks = iter_video_chunks(path, chunk_size=4, limits=DecodeLimits(max_frames=10))
    with pytest.raises(VideoLimitError):
        list(chunks)


def test_pixel_limit_enforced_on_frames_not_just_header(tmp_path):
    # The header describes the first (small) part; a later part is four times larger.
    small, large = tmp_path / "a.h264", tmp_path / "b.h264"
    write_video(small, n=5, height=H, width=W)
    write_video(large, n=5, height=2 * H, width=2 * W)
    joined = tmp_path / "joined.h264"
    joined.write_bytes(small.read_bytes() + large.read_bytes())
    assert probe_video(joined).width == W
    with pytest.raises(VideoLimitError, match=r"128x96 = 12288 .*max_pixels=5000"):
        decode_video(joined, limits=DecodeLimits(max_pixels=5000))


def test_byte_limit_on_file_objects(clip):
    path, _ = clip
    data = path.read_bytes()
    limit = DecodeLimits(max_bytes=len(data) - 1)
    with pytest.raises(VideoLimitError, match=f"max_bytes={len(data) - 1}"):
        decode_video(io.BytesIO(data), limits=limit)
    # Non-seekable: the size is unknown up front, so the copy itself stops at the limit.
    with pytest.raises(VideoLimitError, match="max_bytes"):
        decode_video(_NonSeekable(data), limits=limit)
    assert len(decode_video(_NonSeekable(data), limits=DecodeLimits(max_bytes=len(data)))[0]) == N


def test_absurd_declared_frame_count(clip, tmp_path):
    path, _ = clip
    data = bytearray(path.read_bytes())
    stts = data.index(b"stts")  # box type, version/flags, entry count, (count, delta)...
    data[stts + 12 : stts + 16] = (2**31 - 16).to_bytes(4, "big")
    liar = tmp_path / "liar.mp4"
    liar.write_bytes(bytes(data))
    assert probe_video(liar).frame_count == 2**31 - 16
    with pytest.raises(VideoLimitError, match="declares 2147483632 frames"):
        decode_video(liar, limits=DecodeLimits(max_frames=1000))
    # Without limits: no giant allocation, no hang; 20 of 2**31 frames is grossly short.
    with pytest.raises(TruncatedVideoError, match="20 of 2147483632"):
        decode_video(liar)


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def bad_inputs(tmp_path, clip) -> dict[str, tuple[Path, type[VideoError]]]:
    """Files that must each raise one specific VideoError subclass."""
    path, _ = clip
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    cases: dict[str, tuple[bytes, type[VideoError]]] = {
        "empty.mp4": (b"", EmptyVideoError),
        "random.mp4": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), NotAVideoError),
        "text.mp4": (b"hello, this is not a video\n" * 50, NotAVideoError),
        "no_moov.mp4": (data[: data.index(b"moov") - 8], TruncatedVideoError),
        "image.png": (_png_bytes(), NotAVideoError),
    }
    out = {}
    for name, (payload, error) in cases.items():
        (tmp_path / name).write_bytes(payload)
        out[name] = (tmp_path / name, error)
    jpeg = tmp_path / "image.jpg"
    av.VideoFrame.from_ndarray(np.full((H, W, 3), 90, np.uint8), format="rgb24").to_image().save(
        jpeg
    )
    out["image.jpg"] = (jpeg, NotAVideoError)
    write_audio_only(tmp_path / "audio.m4a")
    out["audio.m4a"] = (tmp_path / "audio.m4a", NoVideoStreamError)
    # A playlist naming a real video: FFmpeg's hls demuxer would open it. Refused.
    (tmp_path / "list.m3u8").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{path}\n#EXT-X-ENDLIST\n"
    )
    out["list.m3u8"] = (tmp_path / "list.m3u8", NotAVideoError)
    # A video stream without a single frame in it.
    with av.open(str(tmp_path / "zero.avi"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        container.start_encoding()
    out["zero.avi"] = (tmp_path / "zero.avi", EmptyVideoError)
    return out


def test_each_bad_input_raises_its_video_error(bad_inputs):
    for name, (path, error) in bad_inputs.items():
        for src in (path, io.BytesIO(path.read_bytes())):
            with pytest.raises(VideoError) as info:
                decode_video(src)
            assert type(info.value) is error, (name, src, info.value)
            assert not isinstance(info.value, av.FFmpegError)
            assert len(str(info.value)) > 10  # a message a person can act on


def test_unknown_codec_is_no_decodable_video_stream(clip, tmp_path):
    path, _ = clip
    data = path.read_bytes()
    assert data.count(b"avc1") >= 1
    unknown = tmp_path / "unknown.mp4"
    unknown.write_bytes(data.replace(b"avc1", b"zzzz"))  # the sample entry's codec fourcc
    with pytest.raises(NoVideoStreamError, match="codec is unknown"):
        decode_video(unknown)


def test_image_and_audio_messages_say_why(bad_inputs):
    with pytest.raises(NotAVideoError, match="still image"):
        decode_video(bad_inputs["image.png"][0])
    with pytest.raises(NotAVideoError, match="still image"):
        probe_video(io.BytesIO(bad_inputs["image.jpg"][0].read_bytes()))
    with pytest.raises(NoVideoStreamError, match="found: audio") as info:
        probe_video(bad_inputs["audio.m4a"][0])
    assert info.value.code == "no_video_stream"
    with pytest.raises(TruncatedVideoError, match="moov"):
        decode_video(bad_inputs["no_moov.mp4"][0])


def _write_gif(path: Path, n: int) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb8"
        for i in range(n):
            img = np.full((H, W, 3), 40 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="rgb8")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_single_frame_gif_is_an_image_animated_gif_is_a_video(tmp_path):
    _write_gif(tmp_path / "still.gif", 1)
    with pytest.raises(NotAVideoError, match="single gif picture"):
        decode_video(tmp_path / "still.gif")
    _write_gif(tmp_path / "moving.gif", 5)
    frames, meta = decode_video(tmp_path / "moving.gif")
    assert frames.shape == (5, H, W, 3) and meta.fps == 10.0
    assert frames[4].mean() == pytest.approx(160, abs=8)  # palette quantisation


@pytest.mark.skipif("libsvtav1" not in av.codecs_available, reason="needs an AV1 encoder")
def test_avif_still_image_is_refused(tmp_path):
    # AVIF opens with the MP4 demuxer as an AV1 "video": only the brand says it is an image.
    path = tmp_path / "still.avif"
    with av.open(str(path), mode="w", format="avif") as container:
        stream = container.add_stream("libsvtav1", rate=1)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        img = av.VideoFrame.from_ndarray(np.full((H, W, 3), 90, np.uint8), format="rgb24")
        for packet in [*stream.encode(img), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(NotAVideoError, match="brand 'avif'"):
        decode_video(path)


def test_fifo_and_missing_paths_do_not_hang(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)  # opening it for reading would block until a writer shows up
    with pytest.raises(NotAVideoError, match="not a regular file"):
        decode_video(fifo)
    with pytest.raises(FileNotFoundError):
        decode_video(tmp_path / "missing.mp4")


@pytest.fixture
def textured_mp4(tmp_path) -> bytes:
    """60 textured frames, moov first, so a cut leaves a readable index and partial data."""
    path = tmp_path / "textured.mp4"
    _write_mp4(path, _textured_frames(60), faststart=True)
    return path.read_bytes()


def test_file_cut_midway_is_truncated(textured_mp4, tmp_path):
    start, end = _mdat_span(textured_mp4)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(textured_mp4[: start + (end - start) * 4 // 10])
    with pytest.raises(TruncatedVideoError, match="of 60 declared frames"):
        decode_video(cut)
    with pytest.raises(TruncatedVideoError):
        list(iter_video_chunks(cut, chunk_size=8))


def test_garbage_over_most_of_the_data_is_corrupt(textured_mp4, tmp_path):
    start, end = _mdat_span(textured_mp4)
    rng = np.random.default_rng(1)
    for lo, hi in ((0.0, 1.0), (0.1, 0.9)):  # nothing decodes / most frames lost
        data = bytearray(textured_mp4)
        a, b = start + int((end - start) * lo), start + int((end - start) * hi)
        data[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()
        bad = tmp_path / "garbage.mp4"
        bad.write_bytes(bytes(data))
        with pytest.raises(CorruptVideoError):
            decode_video(bad)


def test_small_damage_is_tolerated(textured_mp4, tmp_path):
    # Documented policy: a loss under 10% of the frames is returned, not refused.
    start, end = _mdat_span(textured_mp4)
    data = bytearray(textured_mp4)
    mid = (start + end) // 2
    data[mid : mid + 64] = bytes(64)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    frames, meta = decode_video(damaged)
    assert 54 <= len(frames) <= 60 and meta.frame_count == len(frames)


# ------------------------------------------------------------------------------ resources


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_file_descriptor_leak(bad_inputs, clip):
    path, _ = clip
    decode_video(path)  # warm up: lazy library loading may open files once
    before = _open_fds()
    for _ in range(5):
        for bad, _error in bad_inputs.values():
            for src in (bad, io.BytesIO(bad.read_bytes())):
                with pytest.raises(VideoError):
                    decode_video(src)
                with pytest.raises(VideoError):
                    list(iter_video_chunks(src))
        with pytest.raises(VideoLimitError):
            decode_video(path, limits=DecodeLimits(max_frames=3))
        # A stream abandoned after one chunk, and one closed explicitly.
        next(iter_video_chunks(path, chunk_size=4))
        with contextlib.closing(iter_video_chunks(path, chunk_size=4)) as chunks:
            next(chunks)
        decode_video(_NonSeekable(path.read_bytes()))
    assert _open_fds() == before
