"""Live and piped sources: a byte stream that arrives while it is recognised.

:class:`LiveSource` holds what a stream (standard input, or a URL remuxed by PyAV) has sent so
far and presents it to :mod:`video.decode` as a seekable file object that grows: a read past
the received bytes waits for more, and end of file is the end of the stream. The streaming core
(:func:`models.stream.recognize_video`) opens its source more than once (a probe, then one or
two decoding passes), and :mod:`video.decode` reads a file object from its current position,
so each open starts again from byte 0: the decoder asks ``seekable()`` first at every open, and
that call rewinds. The bytes are kept for those re-reads: all of them, in an unlinked temporary
file, for families that read the video twice (ms3d, full_video); for one-pass families only the
head (what the probe reads) and a short backlog behind the decoder, in memory, so an endless
camera stream costs bounded memory.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import av

from video.errors import NoVideoStreamError

__all__ = [
    "NETWORK_PROTOCOLS",
    "LiveSource",
    "StreamBroken",
    "SourceUnavailable",
    "is_url",
    "open_stdin",
    "open_url",
]

# FFmpeg protocols a URL source may use, nested opens included (an HLS playlist's segments);
# never ``file`` or ``pipe``: a remote playlist must not name local files.
NETWORK_PROTOCOLS = "http,https,tls,tcp,udp,rtp,srtp,rtsp,rtsps,rtmp,rtmps,rtmpt,rtmpts,srt,crypto"
_URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtmpt", "rtmpts", "http", "https", "udp", "srt")

# What the probe of a stream may read (FFmpeg's probesize is 5 MB): always kept.
_HEAD_BYTES = 16 << 20
# Kept behind the decoder's position for FFmpeg's small backward seeks.
_BACKLOG_BYTES = 4 << 20
# Most bytes a one-pass stream is let run ahead of the decoder before its reader waits.
_AHEAD_BYTES = 64 << 20
_READ_BLOCK = 1 << 16


class SourceUnavailable(Exception):
    """The source could not be opened (connection refused, no such stream...)."""

    code = "source_unavailable"


class StreamBroken(Exception):
    """The source failed after it had started sending (connection lost, read error)."""

    code = "stream_broken"


def is_url(text: str) -> bool:
    """Whether ``text`` names a network source (``rtsp://``, ``http(s)://``...)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in _URL_SCHEMES


class _KeptBytes:
    """Every byte received, in an unlinked temporary file (read at any offset, any number of
    times)."""

    def __init__(self, directory: Path | None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)
        self.end = 0

    def append(self, data: bytes) -> None:
        os.pwrite(self._file.fileno(), data, self.end)
        self.end += len(data)

    def read(self, pos: int, size: int) -> bytes:
        return os.pread(self._file.fileno(), min(size, self.end - pos), pos)

    def release(self, pos: int) -> None:
        """Nothing is released: a second pass reads everything again."""

    def close(self) -> None:
        self._file.close()


class _RollingBytes:
    """The head of the stream and a backlog behind the reader, in memory; what lies between
    is dropped once read (a one-pass family never reads it again)."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self._base = _HEAD_BYTES  # stream offset of _tail[0]
        self.end = 0

    def append(self, data: bytes) -> None:
        self.end += len(data)
        room = _HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        self._tail += data

    def read(self, pos: int, size: int) -> bytes:
        if pos < _HEAD_BYTES:
            return bytes(self._head[pos : min(pos + size, len(self._head))])
        if pos < self._base:
            raise OSError(f"live stream bytes at {pos} were already released (read once only)")
        start = pos - self._base
        return bytes(self._tail[start : start + size])

    def release(self, pos: int) -> None:
        drop = pos - _BACKLOG_BYTES - self._base
        if drop > _BACKLOG_BYTES:  # in large steps: deleting from a bytearray's front copies
            del self._tail[:drop]
            self._base += drop

    def close(self) -> None:
        self._head, self._tail = bytearray(), bytearray()


class LiveSource:
    """A growing byte stream read by :mod:`video.decode` as a file object.

    A producer (a thread started by :func:`open_stdin` or :func:`open_url`) calls :meth:`feed`
    and then :meth:`finish`; the decoder calls :meth:`read`, :meth:`seek` and :meth:`tell`.

    Args:
        name: The source as the output names it (``-`` for standard input, or the URL).
        keep_all: Keep every byte for a second pass (two-pass families), on disk.
        spool_dir: Where that temporary file goes (default: the system's temp directory).
    """

    def __init__(self, name: str, *, keep_all: bool, spool_dir: Path | None = None) -> None:
        self.name = name
        self._bytes: _KeptBytes | _RollingBytes = (
            _KeptBytes(spool_dir) if keep_all else _RollingBytes()
        )
        self._keep_all = keep_all
        self._pos = 0
        self._done = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    # ------------------------------------------------------------------ producer side

    def feed(self, data: bytes) -> None:
        """Append ``data``; a one-pass stream far ahead of the decoder waits here first."""
        with self._changed:
            while (
                not self._keep_all and not self._done and self._bytes.end - self._pos > _AHEAD_BYTES
            ):
                self._changed.wait(0.5)
            if self._done:
                return
            self._bytes.append(data)
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """The stream ended (``error``: it failed); readers see end of file from here on."""
        with self._changed:
            if not self._done:
                self._done, self._error = True, error
            self._changed.notify_all()

    def abort(self) -> None:
        """Stop now (the run is interrupted): readers see end of file."""
        self.finish()

    @property
    def received(self) -> int:
        """Bytes received so far."""
        return self._bytes.end

    @property
    def failure(self) -> SourceUnavailable | StreamBroken | NoVideoStreamError | None:
        """Why the stream ended early, or ``None`` for a clean end (or none yet)."""
        err = self._error
        if err is None or isinstance(err, SourceUnavailable | StreamBroken | NoVideoStreamError):
            return err
        if self._bytes.end == 0:
            return SourceUnavailable(f"{self.name}: {_describe(err)}")
        return StreamBroken(f"{self.name}: the stream broke: {_describe(err)}")

    # ------------------------------------------------------------------ decoder side

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        """True; and a new open starts here (see the module docstring): back to byte 0."""
        with self._changed:
            self._pos = 0
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with self._changed:
            if whence == os.SEEK_SET:
                self._pos = offset
            elif whence == os.SEEK_CUR:
                self._pos += offset
            elif whence == os.SEEK_END:
                if offset and not self._done:
                    # FFmpeg's avio_size() asks so for the size; while the stream runs it is
                    # unknown (-1), else FFmpeg would read the bytes so far as the whole file.
                    return -1
                # video.decode measures its input so (0 bytes: an empty video): what has
                # arrived, once something has.
                self._changed.wait_for(lambda: self._bytes.end > 0 or self._done)
                self._pos = self._bytes.end + offset
            else:
                raise ValueError(f"bad whence {whence!r}")
            return self._pos

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the position, waiting for them to arrive; ``b""`` at the
        end of the stream."""
        want = _READ_BLOCK if size is None or size < 0 else size
        with self._changed:
            self._changed.wait_for(lambda: self._bytes.end > self._pos or self._done)
            if self._pos >= self._bytes.end:
                return b""
            data = self._bytes.read(self._pos, want)
            self._pos += len(data)
            self._bytes.release(self._pos)
            self._changed.notify_all()
            return data

    def close(self) -> None:
        """Release the kept bytes (the temporary file)."""
        self.finish()
        with self._changed:
            self._bytes.close()


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


def _produce(source: LiveSource, feed: Callable[[LiveSource], None]) -> LiveSource:
    """``source``, fed by ``feed`` on a thread of its own; whatever stops ``feed`` ends the
    stream, with the reason."""

    def run() -> None:
        try:
            feed(source)
        except Exception as err:
            source.finish(err)
        else:
            source.finish()

    threading.Thread(target=run, name=f"actrec-live {source.name}", daemon=True).start()
    return source


def open_stdin(stream: BinaryIO, *, keep_all: bool, spool_dir: Path | None = None) -> LiveSource:
    """A :class:`LiveSource` fed from ``stream`` (standard input: an MPEG-TS or Matroska byte
    stream) by a reader thread."""

    def pump(source: LiveSource) -> None:
        while block := os.read(stream.fileno(), _READ_BLOCK):
            source.feed(block)

    return _produce(LiveSource("-", keep_all=keep_all, spool_dir=spool_dir), pump)


class _Sink:
    """The write end PyAV's muxer writes into: appends to a :class:`LiveSource` (no seek, so
    the muxer writes a live, append-only stream)."""

    def __init__(self, source: LiveSource) -> None:
        self.source = source

    def write(self, data: bytes) -> int:
        self.source.feed(bytes(data))
        return len(data)


def open_url(
    url: str, *, keep_all: bool, timeout_s: float = 30.0, spool_dir: Path | None = None
) -> LiveSource:
    """A :class:`LiveSource` of a URL PyAV opens (RTSP, RTMP, HTTP(S), HLS...).

    A thread demuxes the URL's first video stream and remuxes its packets, unchanged, into a
    Matroska stream fed to the source: no decoding happens there, so the frames are decoded
    once, by :mod:`video.decode`, as for any video. Only :data:`NETWORK_PROTOCOLS` are allowed.

    Args:
        url: The source.
        keep_all: As for :class:`LiveSource`.
        timeout_s: Longest wait to connect and for each read; past it the stream is broken.
        spool_dir: As for :class:`LiveSource`.
    """
    source = LiveSource(url, keep_all=keep_all, spool_dir=spool_dir)
    return _produce(source, lambda s: _remux(url, s, timeout_s))


def _remux(url: str, source: LiveSource, timeout_s: float) -> None:
    options = {"protocol_whitelist": NETWORK_PROTOCOLS}
    if url.lower().startswith("rtsp"):
        options["rtsp_transport"] = "tcp"  # no losses to UDP reordering on a busy network
    try:
        src = av.open(url, mode="r", container_options=options, timeout=timeout_s)
    except av.FFmpegError as err:
        raise SourceUnavailable(f"{url}: cannot open: {_describe(err)}") from err
    with src:
        videos = [
            s for s in src.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not videos:
            raise NoVideoStreamError(f"{url} has no video stream")
        with av.open(_Sink(source), mode="w", format="matroska") as dst:
            out = dst.add_stream_from_template(videos[0])
            for packet in src.demux(videos[0]):
                if not packet.size:  # the demuxer's flush packet (a dts may be missing
                    continue  # on real ones: Matroska stores only pts)
                packet.stream = out
                dst.mux(packet)
