"""The one exception family raised for unusable video input.

Every decode failure surfaces as a :class:`VideoError` subclass with a machine-readable
``code``; the service maps each class to an HTTP status (``service/errors.py``), the dataset
code reports it with the path.
"""

from __future__ import annotations

__all__ = [
    "VideoError",
    "EmptyVideoError",
    "NotAVideoError",
    "NoVideoStreamError",
    "TruncatedVideoError",
    "CorruptVideoError",
    "VideoLimitError",
]


class VideoError(Exception):
    """Base class: the input cannot be decoded into frames.

    Attributes:
        code: Short machine-readable reason, used in the service's JSON errors.
    """

    code = "invalid_video"


class EmptyVideoError(VideoError):
    """Zero-byte input, or a container that holds no decodable frame."""

    code = "empty_video"


class NotAVideoError(VideoError):
    """Bytes that no demuxer recognises, or a still image."""

    code = "not_a_video"


class NoVideoStreamError(VideoError):
    """A media container without a video stream (e.g. audio only)."""

    code = "no_video_stream"


class TruncatedVideoError(VideoError):
    """A container cut short (e.g. an MP4 without its moov atom)."""

    code = "truncated_video"


class CorruptVideoError(VideoError):
    """The stream opened but decoding failed part-way."""

    code = "corrupt_video"


class VideoLimitError(VideoError):
    """The video exceeds a caller-given limit (frames, duration, source pixels, bytes)."""

    code = "video_too_large"
