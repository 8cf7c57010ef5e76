"""What to recognise: the command line's inputs turned into video paths, or live sources.

* a file: a video (whatever its name; the decoder judges it), unless it is a list file;
* a folder: every file below it, recursively, whose extension is a video's
  (:data:`VIDEO_EXTENSIONS`, any case), in sorted order;
* a list file (``.txt``, ``.lst``, ``.list``, or any file named as ``@FILE``): one path per
  line, relative to the list's folder, each a video or a folder; blank lines and ``#``
  comments are skipped;
* ``-``: paths on standard input, one per line, relative to the current folder;
* a URL (``rtsp://``, ``rtmp://``, ``http(s)://``...): a live source.

A path is recognised once, however many inputs name it. A path that does not exist is still
a video to the run: its line says ``not_found``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from service.batch.live import is_url

__all__ = ["LIST_EXTENSIONS", "VIDEO_EXTENSIONS", "Inputs", "expand"]

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".avi",
        ".mkv",
        ".webm",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".asf",
        ".ogv",
        ".3gp",
        ".mxf",
        ".y4m",
    }
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})


@dataclass
class Inputs:
    """The expanded inputs.

    Attributes:
        videos: ``(key, path)`` per video: ``key`` as the output names it (the path as found,
            relative where the input was), ``path`` absolute.
        urls: Live sources, in the order given.
    """

    videos: list[tuple[str, str]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def _lines(fh: Iterable[str]) -> Iterator[str]:
    for raw in fh:
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line


def _walk(folder: str) -> Iterator[str]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                yield os.path.join(root, name)


def _is_list(arg: str) -> bool:
    return os.path.splitext(arg)[1].lower() in LIST_EXTENSIONS and os.path.isfile(arg)


def _paths(arg: str, stdin: TextIO, *, listed: bool = False) -> Iterator[str]:
    """The video paths ``arg`` names (``listed``: a line of a list, which nests no lists)."""
    if not listed and arg == "-":
        for line in _lines(stdin):
            yield from _paths(line, stdin, listed=True)
    elif not listed and (arg.startswith("@") or _is_list(arg)):
        name = arg.removeprefix("@")
        base = os.path.dirname(name)
        with open(name, encoding="utf-8") as fh:
            for line in _lines(fh):
                yield from _paths(os.path.join(base, line), stdin, listed=True)
    elif os.path.isdir(arg):
        yield from _walk(arg)
    else:
        yield arg


def expand(args: Iterable[str], stdin: TextIO) -> Inputs:
    """The videos and live sources ``args`` name (see the module docstring).

    Raises:
        OSError: A list file cannot be read.
    """
    out = Inputs()
    seen: set[str] = set()
    for arg in args:
        if is_url(arg):
            out.urls.append(arg)
            continue
        for path in _paths(arg, stdin):
            absolute = os.path.abspath(path)
            if absolute not in seen:
                seen.add(absolute)
                out.videos.append((os.path.normpath(path), absolute))
    return out
