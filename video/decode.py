"""Video decoding with PyAV: the one front end of every recognizer family.

Training, evaluation and the service all turn a video into uint8 RGB frames ``(T, H, W, 3)``
here, so a model sees identical pixels in ``training.run`` and behind ``POST /recognize``.
Every family's paper starts from frames resized to a fixed size (e.g. 128x171 for C3D); the
resize happens in the same swscale pass as the YUV->RGB conversion.

* :func:`probe_video` reads container/stream metadata only.
* :func:`decode_video` returns every frame and :class:`VideoMeta` for what was decoded.
* :func:`iter_video_chunks` yields the same frames in chunks, so a long video never sits in
  memory whole.
* :func:`index_video` locates the frames from the packets alone (no decoding), and
  :func:`decode_frames_at` given that index decodes only the groups of pictures holding the
  frames it is asked for, returning exactly what a full decode returns.

Every problem with the input is a :class:`video.errors.VideoError` subclass, never a bare
FFmpeg error; a bad argument raises ``ValueError`` / ``TypeError`` and a path that cannot be
opened the usual ``OSError``. Limits, damaged streams, the demuxer whitelist and speed:
docs/decode.md.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol, cast

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from video.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NotAVideoError,
    NoVideoStreamError,
    TruncatedVideoError,
    VideoError,
    VideoLimitError,
)

__all__ = [
    "DecodeLimits",
    "FrameIndex",
    "VideoMeta",
    "decode_frames_at",
    "decode_sampled",
    "decode_video",
    "index_video",
    "iter_video_chunks",
    "probe_video",
]

_log = logging.getLogger(__name__)


class BinaryFile(Protocol):
    """A binary file object as decoding reads it (BytesIO, an open file, an upload, a pipe).

    ``seek``/``tell`` may raise for non-seekable objects; those are spooled first.
    """

    def read(self, size: int = -1, /) -> bytes | None: ...

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int: ...

    def tell(self) -> int: ...


Source = str | os.PathLike[str] | BinaryFile

# Decoder threads are capped: a request for more only adds contention on a shared host.
_MAX_THREADS = 16
# Refuse output with fewer than this fraction of the expected frames; see docs/decode.md.
_MIN_DECODED_FRACTION = 0.9
# swscale's bilinear widens its kernel with the downscale factor (antialiased), costs about
# half of bicubic and is what PyAV defaults to; FAST_BILINEAR aliases when shrinking.
_INTERPOLATION = "BILINEAR"
# The decoder threads carry the parallel work; swscale's default (0) starts one per core.
_SWS_THREADS = 1
# Non-seekable inputs are copied here first; above this size the copy moves to disk.
_SPOOL_IN_MEMORY = 32 << 20
_COPY_BLOCK = 1 << 20
# Upper bound on the up-front allocation made from (untrusted) declared frame counts.
_PREALLOC_BYTES = 256 << 20
_GROWTH = 1.5
# Frame rates outside (0, _MAX_FPS] are treated as absent metadata.
_MAX_FPS = 1000.0
# Tolerance for float comparisons of durations (seconds).
_EPS = 1e-6

# Codecs decoded sparsely: one packet holds one shown frame, and a frame needs only the
# packets since its keyframe (in an open GOP, since the keyframe before). Others decode in full.
_SPARSE_CODECS = frozenset({"h264", "hevc", "av1", "libdav1d", "vp9", "mpeg2video", "mjpeg"})
# Demuxers that seek through an index of keyframes; the others (MPEG-PS/TS, raw streams)
# search by bisection and land imprecisely, so the sparse decode demuxes through instead.
_INDEXED_DEMUXERS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})
# A sparse plan decoding more than this share of the packets decodes them all instead.
_SPARSE_MAX_SHARE = 0.8
# Gaps of more packets than this are crossed by seeking; shorter ones by demuxing through.
_SEEK_GAP = 32
# H.264 NAL unit types of coded slices (non-IDR, IDR); their header carries nal_ref_idc.
_H264_SLICES = frozenset({1, 5})
# Length-prefixed (MP4/MKV) H.264 and HEVC: where the decoder configuration record keeps the
# NAL length size (minus one, low two bits), and its least length.
_LENGTH_SIZE_AT = {"h264": (4, 7), "hevc": (21, 23)}

# Demuxers for video containers and raw video elementary streams. Anything else (playlists,
# concat lists, subtitles...) fails to open: playlist-like demuxers open further files or
# URLs named inside the input.
_VIDEO_DEMUXERS = frozenset(
    {
        "mov",
        "mp4",
        "matroska",
        "webm",
        "avi",
        "flv",
        "mpegts",
        "mpeg",
        "asf",
        "ogg",
        "nut",
        "mxf",
        "dv",
        "rm",
        "gif",
        "apng",
        "ivf",
        "obu",
        "yuv4mpegpipe",
        "h264",
        "hevc",
        "vvc",
        "m4v",
        "mpegvideo",
        "h261",
        "h263",
        "cavsvideo",
        "vc1",
        "dirac",
        "mjpeg",
    }
)
# Self-contained audio formats: allowed so they are refused as "no video stream" (415).
_AUDIO_DEMUXERS = frozenset(
    {
        "mp3",
        "wav",
        "w64",
        "flac",
        "aac",
        "aiff",
        "ac3",
        "eac3",
        "amr",
        "caf",
        "au",
    }
)
# Still-image demuxers are let through the whitelist only so they can be named in the error.
_IMAGE_DEMUXERS = frozenset(
    {"image2", "image2pipe", "webp", "jpegxl_anim"}
    | {name for name in av.formats_available if name.endswith("_pipe")}
)
_FORMAT_WHITELIST = ",".join(sorted(_VIDEO_DEMUXERS | _AUDIO_DEMUXERS | _IMAGE_DEMUXERS))
# Codecs that usually carry a single picture: one decoded frame of these is an image.
_IMAGE_CODECS = frozenset(
    {
        "png",
        "apng",
        "mjpeg",
        "jpegls",
        "jpeg2000",
        "jpegxl",
        "gif",
        "bmp",
        "tiff",
        "webp",
        "qoi",
        "pam",
        "pbm",
        "pgm",
        "ppm",
        "sgi",
        "targa",
        "exr",
        "dpx",
        "psd",
        "hdr",
    }
)
# ISO-BMFF major brands of still images (AVIF, HEIF) that open with the mov demuxer.
_IMAGE_BRANDS = frozenset({"avif", "heic", "heix", "heim", "heis", "mif1"})
# Leading bytes of containers whose open failure means "cut short", not "not a video".
_ISO_BOX_TYPES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})
_CONTAINER_MAGIC = (
    b"\x1a\x45\xdf\xa3",
    b"RIFF",
    b"FLV",
    b"OggS",
    b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",
)


@dataclass(frozen=True)
class VideoMeta:
    """What is known about a video stream.

    Attributes:
        fps: Average frame rate of the video stream (0.0 when unknown).
        frame_count: Frames actually decoded (:func:`decode_video`) or the container's
            estimate (:func:`probe_video`; 0 when the container does not say).
        duration_s: Seconds covered by the decoded frames, or the declared duration.
        width: Source width in pixels.
        height: Source height in pixels.
        codec: FFmpeg name of the video codec, e.g. ``"h264"``.
    """

    fps: float
    frame_count: int
    duration_s: float
    width: int
    height: int
    codec: str


@dataclass(frozen=True)
class DecodeLimits:
    """Caller-given bounds; ``None`` means unbounded. Exceeding one raises VideoLimitError.

    Attributes:
        max_frames: Most frames the video may have.
        max_duration_s: Longest the video may last, in seconds.
        max_pixels: Largest source frame, as ``width * height``.
        max_bytes: Largest input, in bytes (the file, or what the file object holds).
    """

    max_frames: int | None = None
    max_duration_s: float | None = None
    max_pixels: int | None = None
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_duration_s", "max_pixels", "max_bytes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"DecodeLimits.{name} must be positive or None, got {value!r}")


@dataclass(frozen=True)
class _Header:
    """Stream metadata as declared by the container (untrusted)."""

    fps: float
    declared_frames: int | None  # the container's own count (exact where present)
    expected_frames: int | None  # declared_frames, else duration * fps
    declared_duration_s: float | None
    width: int
    height: int
    codec: str


@dataclass(frozen=True, eq=False)
class _Packets:
    """A video stream's packets in decode order, as demuxing found them (never written)."""

    pts: np.ndarray  # int64 presentation timestamps, stream time base
    key: np.ndarray  # bool: decoding may start here
    shown: np.ndarray  # bool: gives an output frame (not an edit-list discard)
    nonref: np.ndarray  # bool: an H.264 non-reference picture, which no other frame needs
    duration: np.ndarray  # int64 durations, 0 when unknown
    display: np.ndarray  # positions of the shown packets in presentation order (frame i's)
    t_end: float  # the decoded time span a full decode measures (seconds)


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """A video stream's frames located from its packets, without decoding any.

    :func:`index_video` makes it; :func:`decode_frames_at` takes it to decode only the groups
    of pictures (GOPs) holding the frames it is asked for.

    Attributes:
        frame_count: Frames the packets hold: what a full decode returns when every packet
            decodes to one frame, as the sparse decode checks for each packet it decodes.
        keyframes: Packets decoding can start from.
        exact: Whether frames can be located from the packets; when false,
            :func:`decode_frames_at` decodes every frame.
        reason: Why not, when ``exact`` is false (``""`` otherwise).
        meta: The :class:`VideoMeta` a full decode reports, from the packets' timestamps.
    """

    frame_count: int
    keyframes: int
    exact: bool
    reason: str
    meta: VideoMeta
    packets: _Packets = field(repr=False)


@dataclass
class _Progress:
    """Running counts of one decode, read after the frames to judge and describe it."""

    packets: int = 0
    frames: int = 0
    bad_packets: int = 0
    corrupt_frames: int = 0
    first_error: str | None = None
    demux_error: av.FFmpegError | None = None
    t_first: float | None = None
    t_end: float = 0.0


def probe_video(src: Source, *, limits: DecodeLimits | None = None) -> VideoMeta:
    """Read a video's metadata without decoding frames.

    Args:
        src: A path, or a binary file object read from its current position.
        limits: Bounds checked against the size and the declared metadata.

    Returns:
        The declared :class:`VideoMeta`; ``frame_count`` is the container's count or an
        estimate from duration and frame rate (0 if neither is known).

    Raises:
        VideoError: A subclass naming what is wrong with the input or which limit it breaks.
    """
    limits = limits or DecodeLimits()
    with _open_video(src, limits, threads=1) as (_container, _stream, header):
        pass  # opening reads the header and checks it: all a probe does
    frames = header.expected_frames or 0
    duration = header.declared_duration_s
    if duration is None:
        duration = frames / header.fps if frames and header.fps else 0.0
    return VideoMeta(
        fps=header.fps,
        frame_count=frames,
        duration_s=duration,
        width=header.width,
        height=header.height,
        codec=header.codec,
    )


def index_video(src: Source, *, limits: DecodeLimits | None = None) -> FrameIndex:
    """Locate a video's frames by demuxing its packets, decoding none (it reads the file once).

    Args:
        src: A path, or a binary file object read from its current position; hand
            :func:`decode_frames_at` the object back at that same position.
        limits: Bounds checked against the size and the declared metadata, as for
            :func:`probe_video` (:func:`decode_sampled` checks the rest).

    Returns:
        The :class:`FrameIndex`. A stream whose frames the packets do not locate for certain
        (a codec outside the sparse set, missing or repeated timestamps, a damaged or cut
        container...) gives ``exact=False`` and the reason; such videos decode in full.

    Raises:
        VideoError: A subclass naming what is wrong with the input or which limit it breaks.
    """
    limits = limits or DecodeLimits()
    with _open_video(src, limits, threads=1) as (container, stream, header):
        return _index_packets(container, stream, header)


def decode_video(
    src: Source,
    *,
    size: tuple[int, int] | None = None,
    limits: DecodeLimits | None = None,
    threads: int = 2,
) -> tuple[np.ndarray, VideoMeta]:
    """Decode every frame of a video to uint8 RGB, resized in the same conversion pass.

    Args:
        src: A path, or a binary file object read from its current position (BytesIO, an
            open file, an upload; non-seekable objects are spooled to a temporary file).
        size: ``(height, width)`` of the output frames; ``None`` keeps the size of the
            first decoded frame.
        limits: Bounds enforced from metadata before decoding and on the decoded frames.
        threads: Decoder threads (FFmpeg frame/slice threading), capped at 16.

    Returns:
        ``(frames, meta)``: ``frames`` is ``(T, H, W, 3)`` uint8 RGB, C-contiguous, and
        ``meta.frame_count == T``.

    Raises:
        VideoError: A subclass naming what is wrong with the input or which limit it breaks.
    """
    limits = limits or DecodeLimits()
    size = _check_args(size, threads)
    with _open_video(src, limits, threads) as (container, stream, header):
        progress = _Progress()
        out: np.ndarray | None = None
        for i, rgb in enumerate(_decode_rgb(container, stream, header, size, limits, progress)):
            if out is None:
                shape = _frame_shape(rgb)
                capacity = _initial_capacity(header, limits, math.prod(shape))
                out = np.empty((capacity, *shape), dtype=np.uint8)
            elif i == len(out):
                grown = np.empty((max(i + 1, int(i * _GROWTH)), *out.shape[1:]), dtype=np.uint8)
                grown[:i] = out
                out = grown
            _write_rgb(rgb, out[i])
        _judge(progress, header)
    assert out is not None  # _judge raises when nothing decoded
    frames = out[: progress.frames]
    if 2 * len(frames) < len(out):
        frames = frames.copy()  # metadata over-declared: do not pin a mostly unused buffer
    return frames, _meta(progress, header)


def iter_video_chunks(
    src: Source,
    *,
    chunk_size: int = 64,
    size: tuple[int, int] | None = None,
    limits: DecodeLimits | None = None,
    threads: int = 2,
    on_meta: Callable[[VideoMeta], None] | None = None,
) -> Generator[np.ndarray, None, None]:
    """Decode a video chunk by chunk; the chunks concatenate to :func:`decode_video`'s frames.

    The input is opened at the first ``next()`` and closed when the iterator is exhausted,
    closed, or garbage-collected; wrap it in :func:`contextlib.closing` when stopping early.
    Limits and stream integrity are checked as frames arrive, so an error can be raised after
    some chunks were already yielded: treat the whole video as failed then.

    Args:
        src: A path or binary file object, as for :func:`decode_video`.
        chunk_size: Most frames per chunk; every chunk but the last has exactly this many.
        size: ``(height, width)`` of the output frames, as for :func:`decode_video`.
        limits: Bounds, as for :func:`decode_video`.
        threads: Decoder threads, as for :func:`decode_video`.
        on_meta: Called with the decoded video's :class:`VideoMeta` (what
            :func:`decode_video` returns) once every frame is decoded and judged, before the
            last chunk is yielded.

    Returns:
        An iterator of uint8 arrays ``(t, H, W, 3)`` with ``1 <= t <= chunk_size``; each
        chunk is a fresh array the caller may keep.

    Raises:
        ValueError: Bad arguments (raised at the call, before any decoding).
        VideoError: While iterating, as for :func:`decode_video`.
    """
    size = _check_args(size, threads)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return _iter_chunks(src, chunk_size, size, limits or DecodeLimits(), threads, on_meta)


def _iter_chunks(
    src: Source,
    chunk_size: int,
    size: tuple[int, int] | None,
    limits: DecodeLimits,
    threads: int,
    on_meta: Callable[[VideoMeta], None] | None = None,
) -> Generator[np.ndarray, None, None]:
    with _open_video(src, limits, threads) as (container, stream, header):
        progress = _Progress()
        chunk: np.ndarray | None = None
        filled = 0
        for rgb in _decode_rgb(container, stream, header, size, limits, progress):
            if chunk is None:
                chunk = np.empty((chunk_size, *_frame_shape(rgb)), dtype=np.uint8)
            _write_rgb(rgb, chunk[filled])
            filled += 1
            if filled == chunk_size:
                yield chunk
                chunk, filled = None, 0
        # Judge before handing over the tail, so a refused video yields as little as possible.
        _judge(progress, header)
        if on_meta is not None:
            on_meta(_meta(progress, header))
        if chunk is not None:
            yield chunk[:filled].copy() if filled < chunk_size // 2 else chunk[:filled]


def decode_frames_at(
    src: Source,
    indices: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    limits: DecodeLimits | None = None,
    threads: int = 2,
    on_progress: Callable[[int], None] | None = None,
    every: int = 64,
) -> tuple[np.ndarray, VideoMeta]:
    """Decode a whole video but convert only the frames at ``indices``.

    Every frame is decoded and checked as :func:`decode_video` does (so the same videos are
    refused), but only the wanted ones are resized and converted to RGB, which is most of a
    decode's cost at small output sizes. :func:`decode_sampled` decodes fewer frames.

    Args:
        src: A path or binary file object, as for :func:`decode_video`.
        indices: Wanted frame indices (any order, repeats allowed).
        size: ``(height, width)`` of the output frames, as for :func:`decode_video`.
        limits: Bounds, as for :func:`decode_video`.
        threads: Decoder threads, as for :func:`decode_video`.
        on_progress: Called with the number of frames decoded so far every ``every``
            frames (an exception it raises stops the decode, e.g. a cancellation).
        every: Frames between two ``on_progress`` calls.

    Returns:
        ``(frames, meta)``: ``frames[i]`` is frame ``np.unique(indices)[i]``, exactly as
        :func:`decode_video` decodes it; indices past the end are left out.
    """
    limits = limits or DecodeLimits()
    size = _check_args(size, threads)
    wanted = np.unique(np.asarray(indices, dtype=np.int64))
    picked: list[np.ndarray] = []
    with _open_video(src, limits, threads) as (container, stream, header):
        progress = _Progress()
        convert = _Converter(size)
        for frame in _decode_frames(container, stream, header, limits, progress):
            index = progress.frames - 1
            if on_progress is not None and progress.frames % every == 0:
                on_progress(progress.frames)
            if len(picked) < len(wanted) and index == wanted[len(picked)]:
                rgb = convert(frame, index)
                out = np.empty(_frame_shape(rgb), dtype=np.uint8)
                _write_rgb(rgb, out)
                picked.append(out)
        _judge(progress, header)
    if not picked:
        raise ValueError(f"no frame at {wanted[:5].tolist()}: the video has {progress.frames}")
    return np.stack(picked), _meta(progress, header)


def decode_sampled(
    src: Source,
    pick: Callable[[int], np.ndarray],
    *,
    size: tuple[int, int] | None = None,
    limits: DecodeLimits | None = None,
    threads: int = 2,
    on_progress: Callable[[int], None] | None = None,
    every: int = 64,
    frame_count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, VideoMeta] | None:
    """Decode only the frames ``pick(T)`` names, ``T`` being the video's frame count.

    The packets are demuxed first (cheap) to count the frames and find the keyframes, then
    only the groups of pictures (GOPs) holding wanted frames are decoded: from the keyframe
    before each (for a leading picture of an open GOP, the keyframe before that), forward,
    skipping H.264 non-reference pictures nobody asked for, dropping the rest, the decoder
    flushed between GOPs that do not touch. Every packet decoded is checked against the
    index; anything it did not predict, or a plan that would decode most packets anyway,
    falls back to decoding every frame (:func:`decode_frames_at`). The answer is always
    :func:`decode_video`'s frames at ``pick(T)`` with its ``T``. docs/decode.md#sparse-decoding.

    Args:
        src: A path or a seekable binary file object (read from its current position).
        pick: The sampler: frame count -> wanted indices in ``[0, T)``, any shape, repeats
            allowed. Called once, with the count a full decode gives.
        size: ``(height, width)`` of the output frames, as for :func:`decode_video`.
        limits: Bounds, as for :func:`decode_video`: bytes and the declared metadata when
            opening, frames and duration on the packets, pixels on the header and on every
            decoded frame.
        threads: Decoder threads, as for :func:`decode_video`.
        on_progress: Called with the number of frames decoded so far every ``every`` frames.
        every: Frames between two ``on_progress`` calls.
        frame_count: The count a full decode of ``src`` gave, when known (e.g. from a first
            pass): packets counting otherwise are not trusted.

    Returns:
        ``(frames, indices, meta)``: ``indices`` is ``pick(T)`` as int64, ``frames[i]`` is
        frame ``np.unique(indices)[i]`` and ``meta`` is :func:`decode_video`'s. ``None``
        when the packets do not locate the frames for certain (see :func:`index_video`),
        for a non-seekable file object, or when a full decode counts other than the
        packets: decode every frame then.

    Raises:
        VideoError: As for :func:`decode_video`.
        ValueError: Bad arguments, or ``pick`` naming a frame outside ``[0, T)``.
    """
    limits = limits or DecodeLimits()
    size = _check_args(size, threads)
    if not isinstance(src, (str, os.PathLike)) and not _is_seekable(src):
        return None
    mark = None if isinstance(src, (str, os.PathLike)) else src.tell()
    frames: np.ndarray | None = None
    with _open_video(src, limits, threads) as (container, stream, header):
        index = _index_packets(container, stream, header)
        if not index.exact or frame_count not in (None, index.frame_count):
            return None
        indices = np.asarray(pick(index.frame_count), dtype=np.int64)
        wanted = np.unique(indices)
        if not len(wanted) or wanted[0] < 0 or wanted[-1] >= index.frame_count:
            raise ValueError(f"pick({index.frame_count}) named frames outside the video")
        plan = _sparse_plan(index, wanted, limits)
        if plan is not None:
            try:
                decoder = _SpanDecoder(container, stream, header, index.packets, wanted, size)
                for first, last in plan:
                    decoder.span(first, last, on_progress, every)
                frames = decoder.frames()
            except _NotExact as why:
                _log.info("sparse decode falls back to decoding every frame: %s", why)
    if frames is not None:
        return frames, indices, index.meta
    if mark is not None:
        cast(BinaryFile, src).seek(mark)
    frames, meta = decode_frames_at(
        src, wanted, size=size, limits=limits, threads=threads, on_progress=on_progress, every=every
    )
    if meta.frame_count != index.frame_count:
        return None  # the picks were made for the packets' count, not the decoded one
    return frames, indices, meta


def _check_args(size: tuple[int, int] | None, threads: int) -> tuple[int, int] | None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if size is None:
        return None
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1 or (height, width) != tuple(size):
        raise ValueError(f"size must be two positive ints (height, width), got {size!r}")
    return height, width


# --------------------------------------------------------------------------- input handling


@contextlib.contextmanager
def _open_video(
    src: Source, limits: DecodeLimits, threads: int
) -> Iterator[tuple[av.container.InputContainer, av.VideoStream, _Header]]:
    """Open ``src`` with every check that needs no decoding (the declared metadata against
    ``limits`` included); closes everything it opened."""
    with contextlib.ExitStack() as stack:
        target, nbytes = _prepare_input(src, limits, stack)
        if nbytes == 0:
            raise EmptyVideoError("input is empty (0 bytes)")
        if limits.max_bytes is not None and nbytes > limits.max_bytes:
            raise VideoLimitError(
                f"input is {nbytes} bytes, above the limit max_bytes={limits.max_bytes}"
            )
        options = {"format_whitelist": _FORMAT_WHITELIST}
        if isinstance(target, str):
            options["protocol_whitelist"] = "file"
        try:
            container = av.open(
                target, mode="r", container_options=options, metadata_errors="replace"
            )
        except av.FFmpegError as exc:
            raise _open_failure(exc, target) from exc
        with container:
            stream = _select_stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = min(threads, _MAX_THREADS)
            header = _read_header(stream)
            _check_declared_limits(header, limits)
            yield container, stream, header


def _prepare_input(
    src: Source, limits: DecodeLimits, stack: contextlib.ExitStack
) -> tuple[str | BinaryFile, int]:
    """The object to hand to ``av.open`` and the number of bytes it holds."""
    if isinstance(src, (str, os.PathLike)):
        path = os.path.abspath(os.fsdecode(src))
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device could block or stream forever.
            raise NotAVideoError(f"{path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        # "file:" stops FFmpeg from reading a protocol (http:, concat:, pipe:) into the name.
        return "file:" + path, st.st_size
    if not callable(getattr(src, "read", None)):
        raise TypeError(f"src must be a path or a binary file object, got {type(src).__name__}")
    if _is_seekable(src):
        start = src.tell()
        end = src.seek(0, os.SEEK_END)
        src.seek(start)
        window = src if start == 0 else _Window(src, start)
        return window, max(0, end - start)
    spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY))
    nbytes = _copy_bounded(src, spool, limits.max_bytes)
    spool.seek(0)
    return spool, nbytes


def _is_seekable(fobj: BinaryFile) -> bool:
    try:
        seekable = getattr(fobj, "seekable", None)
        if callable(seekable) and not seekable():
            return False
        fobj.tell()
        return True
    except (OSError, ValueError, AttributeError):
        return False


def _copy_bounded(src: BinaryFile, dst: IO[bytes], max_bytes: int | None) -> int:
    """Copy a stream, stopping one block past ``max_bytes`` so endless input is bounded."""
    total = 0
    while True:
        block = src.read(_COPY_BLOCK)
        if block is None:
            raise ValueError("non-blocking file objects are not supported (read() gave None)")
        if not block:
            return total
        total += len(block)
        if max_bytes is not None and total > max_bytes:
            raise VideoLimitError(
                f"input is more than {max_bytes} bytes, above the limit max_bytes={max_bytes}"
            )
        dst.write(block)


class _Window(io.RawIOBase):
    """A seekable file object seen from its current position, which becomes offset 0.

    FFmpeg seeks to absolute offsets, so a caller's object positioned past a header of its
    own would otherwise be read from the wrong place.
    """

    def __init__(self, raw: BinaryFile, start: int) -> None:
        super().__init__()
        self._raw = raw
        self._start = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes | None:
        return self._raw.read(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            offset += self._start
        return self._raw.seek(offset, whence) - self._start

    def tell(self) -> int:
        return self._raw.tell() - self._start


def _open_failure(exc: av.FFmpegError, target: str | BinaryFile) -> VideoError:
    """Map a failed ``av.open`` to the most telling error class."""
    head = _head(target)
    if isinstance(exc, av.error.ArgumentError):
        # format_whitelist refused the demuxer FFmpeg recognised.
        return NotAVideoError("input is a media or text format that is not a video container")
    if head[4:8] in _ISO_BOX_TYPES or head.startswith(_CONTAINER_MAGIC):
        return TruncatedVideoError(
            "input starts like a video container but its header or index cannot be read "
            "(e.g. an MP4 without its moov atom): cut short or damaged"
        )
    return NotAVideoError("input is not a recognised video format")


def _head(target: str | BinaryFile, n: int = 16) -> bytes:
    try:
        if isinstance(target, str):
            with open(target.removeprefix("file:"), "rb") as fh:
                return fh.read(n)
        target.seek(0)
        return target.read(n) or b""
    except (OSError, ValueError):
        return b""


def _select_stream(container: av.container.InputContainer) -> av.VideoStream:
    """The first real video stream, refusing still images and streams we cannot decode."""
    fmt = container.format.name
    if fmt in _IMAGE_DEMUXERS:
        raise NotAVideoError(f"input is a still image ({fmt.removesuffix('_pipe')}), not a video")
    brand = str(container.metadata.get("major_brand", "")).strip().lower()
    if brand in _IMAGE_BRANDS:
        raise NotAVideoError(f"input is a still image (ISO-BMFF brand {brand!r}), not a video")
    kinds = sorted({s.type for s in container.streams})
    videos = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not kinds:
        raise EmptyVideoError("container holds no streams at all")
    if not videos:
        if container.streams.video:
            raise NoVideoStreamError("input has no video stream, only attached cover art")
        raise NoVideoStreamError(f"input has no video stream (found: {', '.join(kinds)})")
    stream = videos[0]
    if stream.codec_context is None:
        raise NoVideoStreamError("the video stream's codec is unknown or has no decoder here")
    return stream


# ----------------------------------------------------------------------------- metadata


def _read_header(stream: av.VideoStream) -> _Header:
    fps = 0.0
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and 0 < float(rate) <= _MAX_FPS:
            fps = float(rate)
            break
    duration = None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        duration = float(stream.duration * stream.time_base)
    declared = stream.frames if stream.frames > 0 else None
    expected = declared
    if expected is None and duration is not None and fps:
        expected = max(1, round(duration * fps))
    ctx = stream.codec_context
    return _Header(
        fps=fps,
        declared_frames=declared,
        expected_frames=expected,
        declared_duration_s=duration,
        width=int(ctx.width),
        height=int(ctx.height),
        codec=ctx.name,
    )


def _check_declared_limits(header: _Header, limits: DecodeLimits) -> None:
    """Refuse from metadata, before any frame is decoded."""
    if limits.max_pixels is not None:
        _check_pixels(header.width, header.height, limits.max_pixels, "declares")
    if limits.max_frames is not None and header.expected_frames is not None:
        # An estimate from duration * fps may be one frame high from rounding.
        slack = 0 if header.declared_frames is not None else 1
        if header.expected_frames > limits.max_frames + slack:
            raise VideoLimitError(
                f"video declares {header.expected_frames} frames, above the limit "
                f"max_frames={limits.max_frames}"
            )
    if limits.max_duration_s is not None and header.declared_duration_s is not None:
        if header.declared_duration_s > limits.max_duration_s + _EPS:
            raise VideoLimitError(
                f"video declares {header.declared_duration_s:.3f} s, above the limit "
                f"max_duration_s={limits.max_duration_s}"
            )


def _check_pixels(width: int, height: int, max_pixels: int, verb: str) -> None:
    if width * height > max_pixels:
        raise VideoLimitError(
            f"video {verb} {width}x{height} = {width * height} pixels per frame, above the "
            f"limit max_pixels={max_pixels}"
        )


def _initial_capacity(header: _Header, limits: DecodeLimits, frame_bytes: int) -> int:
    """Frames to allocate up front: the declared count, bounded since it may be a lie."""
    guess = header.expected_frames or 64
    if limits.max_frames is not None:
        guess = min(guess, limits.max_frames)
    return max(1, min(guess, _PREALLOC_BYTES // max(1, frame_bytes)))


# ----------------------------------------------------------------------------- decoding


def _decode_rgb(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    header: _Header,
    size: tuple[int, int] | None,
    limits: DecodeLimits,
    progress: _Progress,
) -> Iterator[av.VideoFrame]:
    """Yield each decoded frame converted to planar RGB (``gbrp``), enforcing the limits.

    Resize and colour conversion are one swscale pass; :func:`_write_rgb` then interleaves
    the planes into the caller's buffer. swscale's planar output path is vectorised where
    its packed ``rgb24`` path is not: about half the cost, the same pixels up to rounding
    (bit-identical for 640x480 -> 128x171, within 2 levels on flat colour elsewhere).
    """
    convert = _Converter(size)
    for frame in _decode_frames(container, stream, header, limits, progress):
        yield convert(frame, progress.frames - 1)


class _Converter:
    """Resize + colour conversion of decoded frames: one cached SwsContext per video."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        self.reformatter = VideoReformatter()
        self.size = size

    def __call__(self, frame: av.VideoFrame, index: int) -> av.VideoFrame:
        out_h, out_w = self.size if self.size is not None else (frame.height, frame.width)
        self.size = (out_h, out_w)
        try:
            return self.reformatter.reformat(
                frame,
                width=out_w,
                height=out_h,
                format="gbrp",
                interpolation=_INTERPOLATION,
                threads=_SWS_THREADS,
            )
        except av.FFmpegError as exc:
            raise CorruptVideoError(f"frame {index} cannot be converted to RGB: {exc}") from exc


def _decode_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    header: _Header,
    limits: DecodeLimits,
    progress: _Progress,
) -> Iterator[av.VideoFrame]:
    """Yield each decoded frame as FFmpeg gives it, counting and checking as it goes."""
    for packet in _demux(container, stream, progress):
        if packet.size:
            progress.packets += 1
        try:
            decoded = stream.decode(packet)
        except av.FFmpegError as exc:
            progress.bad_packets += 1
            _note_error(progress, exc)
            continue
        for frame in decoded:
            progress.frames += 1
            progress.corrupt_frames += frame.is_corrupt
            _check_frame_limits(frame, header, limits, progress)
            yield frame


def _demux(
    container: av.container.InputContainer, stream: av.VideoStream, progress: _Progress
) -> Iterator[av.Packet]:
    """The stream's packets, up to the end or to a demuxer error: the demuxer cannot go on,
    the error is noted in ``progress`` and what came before is judged afterwards."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            progress.demux_error = exc
            _note_error(progress, exc)
            return
        yield packet


def _write_rgb(frame: av.VideoFrame, dst: np.ndarray) -> None:
    """Interleave a ``gbrp`` frame's planes into ``dst`` (H, W, 3) as R, G, B."""
    height, width = dst.shape[:2]
    for channel, plane in zip((1, 2, 0), frame.planes):  # planes are G, B, R
        # A plane exposes the buffer protocol; av's stubs do not declare it.
        count = height * plane.line_size
        rows = np.frombuffer(plane, np.uint8, count=count)  # type: ignore[call-overload]
        rows = rows.reshape(height, plane.line_size)
        dst[:, :, channel] = rows[:, :width]


def _frame_shape(frame: av.VideoFrame) -> tuple[int, int, int]:
    return frame.height, frame.width, 3


def _note_error(progress: _Progress, exc: av.FFmpegError) -> None:
    if progress.first_error is None:
        progress.first_error = f"{type(exc).__name__}: {exc}"


def _check_frame_limits(
    frame: av.VideoFrame, header: _Header, limits: DecodeLimits, progress: _Progress
) -> None:
    """Limits on what actually decodes; metadata may understate any of them."""
    if limits.max_frames is not None and progress.frames > limits.max_frames:
        raise VideoLimitError(
            f"video has more than {limits.max_frames} frames (limit max_frames={limits.max_frames})"
        )
    if limits.max_pixels is not None:
        _check_pixels(frame.width, frame.height, limits.max_pixels, "has a frame of")
    step = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
    _extend_time(progress, frame.time, step, header, limits)


def _extend_time(
    progress: _Progress, start: float | None, step: float, header: _Header, limits: DecodeLimits
) -> None:
    """Stretch the decoded time span by the frame just counted (``start`` s, ``step`` s long)."""
    if start is None:
        start = (progress.frames - 1) / header.fps if header.fps else 0.0
    if progress.t_first is None:
        progress.t_first = start
    if step <= 0 and header.fps:
        step = 1.0 / header.fps
    progress.t_end = max(progress.t_end, start - progress.t_first + step)
    if limits.max_duration_s is not None and progress.t_end > limits.max_duration_s + _EPS:
        raise VideoLimitError(
            f"video lasts more than {progress.t_end:.3f} s, above the limit "
            f"max_duration_s={limits.max_duration_s}"
        )


def _judge(progress: _Progress, header: _Header) -> None:
    """Refuse output that is empty, an image, or grossly short of what the container holds."""
    detail = f"; first error: {progress.first_error}" if progress.first_error else ""
    if progress.frames == 0:
        if progress.packets == 0 and progress.demux_error is None:
            raise EmptyVideoError("video stream holds no frames")
        raise CorruptVideoError(
            f"no frame could be decoded from {progress.packets} packets{detail}"
        )
    if progress.frames == 1 and progress.packets <= 1 and header.codec in _IMAGE_CODECS:
        raise NotAVideoError(f"input is a single {header.codec} picture, not a video")
    declared = header.expected_frames
    expected = max(declared or 0, progress.packets)
    clean = progress.frames - progress.corrupt_frames
    if clean < _MIN_DECODED_FRACTION * expected:
        ended_early = declared is not None and progress.packets < _MIN_DECODED_FRACTION * declared
        if ended_early and not isinstance(progress.demux_error, av.error.InvalidDataError):
            raise TruncatedVideoError(
                f"container ends after {progress.packets} of {declared} declared frames "
                f"(decoded {progress.frames}): the file was cut short{detail}"
            )
        raise CorruptVideoError(
            f"decoded {clean} clean frames of {expected} expected "
            f"({progress.bad_packets} packets rejected){detail}"
        )
    if progress.first_error or progress.corrupt_frames:
        _log.warning(
            "video decoded with damage: %d clean frames of %d expected, %d packets rejected%s",
            clean,
            expected,
            progress.bad_packets,
            detail,
        )


def _meta(progress: _Progress, header: _Header) -> VideoMeta:
    duration = progress.t_end
    fps = header.fps
    if not fps and duration > 0:
        fps = progress.frames / duration
    if duration <= 0 and fps:
        duration = progress.frames / fps
    return VideoMeta(
        fps=fps,
        frame_count=progress.frames,
        duration_s=duration,
        width=header.width,
        height=header.height,
        codec=header.codec,
    )


# ----------------------------------------------------------------------------- sparse decoding

_NO_LIMITS = DecodeLimits()


class _NotExact(Exception):
    """The sparse decode met something its index did not predict: decode in full instead."""


def _index_packets(
    container: av.container.InputContainer, stream: av.VideoStream, header: _Header
) -> FrameIndex:
    """Demux every packet of ``stream`` (no decoding) into a :class:`FrameIndex`."""
    pts: list[int | None] = []
    key: list[bool] = []
    shown: list[bool] = []
    nonref: list[bool] = []
    duration: list[int] = []
    corrupt = False
    broken = 0  # packets whose NAL units do not fill them exactly
    scan = _Progress()
    length_size = _nal_length_size(stream, header.codec)
    for packet in _demux(container, stream, scan):
        if not packet.size:
            continue
        pts.append(packet.pts)
        key.append(packet.is_keyframe)
        shown.append(not packet.is_discard)
        heads = _nal_heads(packet, length_size) if length_size else []
        if heads is None:
            broken += 1
        nonref.append(header.codec == "h264" and heads is not None and _h264_nonref(heads))
        duration.append(packet.duration or 0)
        corrupt |= packet.is_corrupt
    known = np.array([p if p is not None else 0 for p in pts], dtype=np.int64)
    shown_at = np.flatnonzero(np.array(shown, dtype=bool))
    display = shown_at[np.argsort(known[shown_at], kind="stable")]
    time_base = stream.time_base
    progress = _Progress(packets=len(pts))
    for pos in display.tolist():
        progress.frames += 1
        p, d = pts[pos], duration[pos]
        start = None
        if p is not None and time_base is not None:
            start = float(p) * time_base.numerator / time_base.denominator
        step = float(d * time_base) if d and time_base is not None else 0.0
        _extend_time(progress, start, step, header, _NO_LIMITS)
    table = _Packets(
        pts=known,
        key=np.array(key, dtype=bool),
        shown=np.array(shown, dtype=bool),
        nonref=np.array(nonref, dtype=bool),
        duration=np.array(duration, dtype=np.int64),
        display=display,
        t_end=progress.t_end,
    )
    reason = _inexact_reason(table, pts, header, scan.demux_error, corrupt or bool(broken))
    return FrameIndex(
        frame_count=len(display),
        keyframes=int(table.key.sum()),
        exact=not reason,
        reason=reason,
        meta=_meta(progress, header),
        packets=table,
    )


def _inexact_reason(
    table: _Packets,
    pts: list[int | None],
    header: _Header,
    demux_error: av.FFmpegError | None,
    corrupt: bool,
) -> str:
    """Why the packets do not locate the frames a full decode returns ("" when they do)."""
    if demux_error is not None:
        return f"demuxing failed ({type(demux_error).__name__}: {demux_error})"
    if header.codec not in _SPARSE_CODECS:
        return f"{header.codec} is always decoded in full"
    frames = len(table.display)
    if frames < 2:
        return f"the stream holds {frames} frame(s)"
    if corrupt:
        return "a packet is damaged (flagged corrupt, or its NAL units do not fill it)"
    if any(p is None for p in pts):
        return "a packet has no timestamp"
    if len(np.unique(table.pts)) < len(table.pts):
        return "two packets share a timestamp"
    if not table.key[0] or table.pts[table.display[0]] < table.pts[0]:
        return "the stream does not start at a keyframe shown first"
    expected = max(header.expected_frames or 0, len(table.pts))
    if frames < _MIN_DECODED_FRACTION * expected:
        # A full decode refuses this; let it say why.
        return f"the packets hold {frames} frames of {expected} expected"
    return ""


def _nal_length_size(stream: av.VideoStream, codec: str) -> int | None:
    """Bytes of the NAL unit length prefix of length-framed (MP4/MKV) H.264 or HEVC, else
    ``None`` (other codecs, or Annex B start codes as in MPEG-TS)."""
    where = _LENGTH_SIZE_AT.get(codec)
    extra = stream.codec_context.extradata
    if where is None or extra is None or len(extra) < where[1] or extra[0] != 1:
        return None
    return (extra[where[0]] & 3) + 1


def _nal_heads(packet: av.Packet, length_size: int) -> list[int] | None:
    """The first header byte of each NAL unit of a length-framed packet, or ``None`` when the
    lengths do not add up to the packet (a damaged packet, which no decoder reads whole)."""
    data = memoryview(packet)
    heads: list[int] = []
    at, end = 0, len(data)
    while at < end:
        if at + length_size >= end:
            return None
        size = int.from_bytes(data[at : at + length_size], "big")
        if size == 0:
            return None
        heads.append(data[at + length_size])
        at += length_size + size
    return heads if at == end else None


def _h264_nonref(heads: list[int]) -> bool:
    """Whether an H.264 access unit (its NAL header bytes) is a non-reference picture: its
    first slice's ``nal_ref_idc`` is 0 (the same for every slice of a picture)."""
    for head in heads:
        if head & 0x1F in _H264_SLICES:
            return head & 0x60 == 0
    return False


def _sparse_plan(
    index: FrameIndex, wanted: np.ndarray, limits: DecodeLimits
) -> list[tuple[int, int]] | None:
    """The spans to decode for ``wanted``, or ``None`` when decoding every frame is the
    better plan, or the one that raises what the video breaks (a frame or duration limit)."""
    table = index.packets
    if limits.max_frames is not None and index.frame_count > limits.max_frames:
        return None
    if limits.max_duration_s is not None and table.t_end > limits.max_duration_s + _EPS:
        return None
    spans, cost = _plan(table, wanted)
    return spans if cost <= _SPARSE_MAX_SHARE * len(table.pts) else None


def _plan(table: _Packets, wanted: np.ndarray) -> tuple[list[tuple[int, int]], int]:
    """Spans ``(first, last)`` of packet positions (decode order) whose decoding gives the
    ``wanted`` frames, and the packets they decode.

    A span starts at the keyframe before its first wanted frame; a leading picture of an
    open GOP (shown before its keyframe, so it may reference the GOP before) starts one GOP
    earlier. Spans that touch are merged, so the decoder is flushed only between gaps.
    """
    target = table.display[wanted]
    keys = np.flatnonzero(table.key)
    gop = np.searchsorted(keys, target, side="right") - 1
    leading = table.pts[target] < table.pts[keys[gop]]
    gop = np.maximum(gop - leading.astype(np.int64), 0)
    spans: list[tuple[int, int]] = []
    for first, last in sorted(zip(keys[gop].tolist(), target.tolist())):
        if spans and first <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], last))
        else:
            spans.append((first, last))
    decoded = np.zeros(len(table.pts), dtype=bool)
    for first, last in spans:
        decoded[first : last + 1] = True
    decoded[_skipped(table, target)] = False
    return spans, int(decoded.sum())


def _skipped(table: _Packets, target: np.ndarray) -> np.ndarray:
    """Packets the decoder is told to skip: non-reference pictures nobody asked for."""
    skip = table.nonref.copy()
    skip[target] = False
    return skip


class _SpanDecoder:
    """Decodes the spans of a plan in order on one open container, checking every frame
    against the index; raises :class:`_NotExact` at the first surprise."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        header: _Header,
        table: _Packets,
        wanted: np.ndarray,
        size: tuple[int, int] | None,
    ) -> None:
        self.container, self.stream, self.header, self.table = container, stream, header, table
        target = table.display[wanted]
        self.slot = {int(table.pts[pos]): k for k, pos in enumerate(target.tolist())}
        self.skip = _skipped(table, target)
        self.position = {int(p): pos for pos, p in enumerate(table.pts.tolist())}
        self.keys = np.flatnonzero(table.key)
        self.convert = _Converter(size)
        self.wanted = wanted
        self.out: np.ndarray | None = None
        self.filled = 0
        self.decoded = 0
        self.packets = container.demux(stream)
        self.next_pos: int | None = None  # position of the next packet demuxed; None: unknown
        # Indexing read the stream to its end: go back by timestamp where the demuxer seeks
        # through an index (at each span), else to the first byte, to demux through.
        self.seeks = not _INDEXED_DEMUXERS.isdisjoint(container.format.name.split(","))
        if not self.seeks:
            self._seek(0, byte=True)

    def span(
        self, first: int, last: int, on_progress: Callable[[int], None] | None, every: int
    ) -> None:
        """Decode packets ``first..last`` (``first`` a keyframe), then drain the decoder."""
        table, codec = self.table, self.stream.codec_context
        if self.seeks and (self.next_pos is None or first - self.next_pos > _SEEK_GAP):
            # To the keyframe at or before the span's; where it landed is checked below.
            self._seek(int(table.pts[first]))
        codec.flush_buffers()
        # Frames that must come out: every shown packet of the span but the skipped ones and
        # the leading pictures of its first GOP (their references precede the span).
        after = self.keys[np.searchsorted(self.keys, first, side="right") :]
        gop_end = int(after[0]) if len(after) else len(table.pts)
        members = range(first, last + 1)
        required = {
            int(table.pts[pos])
            for pos in members
            if table.shown[pos]
            and not self.skip[pos]
            and not (pos < gop_end and table.pts[pos] < table.pts[first])
        }
        allowed = {int(table.pts[pos]) for pos in members if table.shown[pos]}
        seen: list[int] = []
        while self.next_pos is None or self.next_pos <= last:
            packet, pos = self._next_packet(first)
            if pos < first:
                continue  # the seek landed on an earlier keyframe: demux up to ours
            codec.skip_frame = "NONREF" if self.skip[pos] else "DEFAULT"
            for frame in self._decode(packet):
                self._take(frame, allowed, required, seen, on_progress, every)
        codec.skip_frame = "DEFAULT"
        for frame in self._decode(None):
            self._take(frame, allowed, required, seen, on_progress, every)
        missing = required.difference(seen)
        if missing:
            raise _NotExact(f"{len(missing)} packet(s) from pts {min(missing)} gave no frame")

    def frames(self) -> np.ndarray:
        if self.out is None or self.filled != len(self.wanted):
            raise _NotExact(f"{self.filled} of {len(self.wanted)} wanted frames decoded")
        return self.out

    def _seek(self, offset: int, *, byte: bool = False) -> None:
        try:
            if byte:
                self.container.seek(offset, unsupported_byte_offset=True)
            else:
                self.container.seek(offset, stream=self.stream)
        except av.FFmpegError as exc:
            raise _NotExact(f"seeking failed: {exc}") from exc
        self.packets = self.container.demux(self.stream)
        self.next_pos = None

    def _next_packet(self, first: int) -> tuple[av.Packet, int]:
        """The next packet and its position, checked against the index."""
        while True:
            try:
                packet = next(self.packets)
            except StopIteration:
                raise _NotExact("the stream ended before the index said") from None
            except av.FFmpegError as exc:
                raise _NotExact(f"demuxing failed: {exc}") from exc
            if packet.size:
                break
        pos = self.next_pos
        if pos is None:  # just after a seek: place the packet by its timestamp
            pos = self.position.get(packet.pts, -1) if packet.pts is not None else -1
            if pos < 0 or pos > first:
                raise _NotExact(f"seeking to packet {first} landed on an unknown or later one")
        if pos >= len(self.table.pts) or packet.pts != self.table.pts[pos]:
            raise _NotExact(f"packet {pos} has pts {packet.pts}, the index says otherwise")
        self.next_pos = pos + 1
        return packet, pos

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            return self.stream.codec_context.decode(packet)
        except av.FFmpegError as exc:
            raise _NotExact(f"the decoder refused a packet: {exc}") from exc

    def _take(
        self,
        frame: av.VideoFrame,
        allowed: set[int],
        required: set[int],
        seen: list[int],
        on_progress: Callable[[int], None] | None,
        every: int,
    ) -> None:
        """Check one decoded frame against the index; convert it when it is wanted."""
        self.decoded += 1
        if on_progress is not None and self.decoded % every == 0:
            on_progress(self.decoded)
        pts = frame.pts
        if pts is None or pts not in allowed:
            raise _NotExact(f"a frame with pts {pts} is not in the span decoded")
        if pts not in required:
            return  # a skipped or unreferenced leading picture that came out anyway
        if seen and pts <= seen[-1]:
            raise _NotExact(f"frames came out of presentation order (pts {pts})")
        seen.append(pts)
        # A damaged frame is concealed from whatever the decoder saw before it, which differs
        # from a full decode's; the frames after it depend on it.
        if frame.is_corrupt or (frame.width, frame.height) != (
            self.header.width,
            self.header.height,
        ):
            raise _NotExact(f"the frame at pts {pts} is damaged or not at the stream's size")
        slot = self.slot.get(pts)
        if slot is None:
            return
        pos = self.position[pts]
        if (frame.duration or 0) != self.table.duration[pos]:
            raise _NotExact(f"frame {self.wanted[slot]} lasts otherwise than its packet")
        rgb = self.convert(frame, int(self.wanted[slot]))
        if self.out is None:
            self.out = np.empty((len(self.wanted), *_frame_shape(rgb)), dtype=np.uint8)
        _write_rgb(rgb, self.out[slot])
        self.filled += 1
