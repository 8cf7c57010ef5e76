"""The output file: one line per video, JSON Lines or CSV, each line appended whole.

A line is written with one ``write`` on a file opened for appending, so a run killed at any
moment leaves whole lines, at most one of them cut short by the kill itself; reopening the file
drops such a cut last line (it belonged to no finished video) before appending again. The
lines already there tell a rerun which videos are answered (:attr:`Output.answered`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CSV_COLUMNS", "FORMATS", "Output", "OutputError", "format_for", "kind_of"]

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")

# CSV has one row per JSON line; nested values (top5, detail, timeline, a segment's top5) are
# JSON in their cell.
CSV_COLUMNS = (
    "path",
    "kind",
    "model",
    "family",
    "backend",
    "label",
    "score",
    "unknown",
    "frames",
    "clips",
    "duration_s",
    "start_s",
    "end_s",
    "decode_ms",
    "infer_ms",
    "total_ms",
    "top5",
    "detail",
    "timeline",
    "error_code",
    "error_message",
)


class OutputError(Exception):
    """The output file cannot be resumed (another format, not written by this tool)."""


def format_for(path: Path | None, given: str | None) -> str:
    """``given``, else ``csv`` for a ``.csv`` output and ``jsonl`` otherwise."""
    if given:
        return given
    return "csv" if path is not None and path.suffix.lower() == ".csv" else "jsonl"


def kind_of(record: dict[str, Any]) -> str:
    """``result``, ``segment`` (a live source's timeline) or ``error``."""
    if "error" in record:
        return "error"
    return "segment" if "segment" in record else "result"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _csv_row(record: dict[str, Any]) -> dict[str, Any]:
    kind = kind_of(record)
    row: dict[str, Any] = {"path": record["path"], "kind": kind}
    if kind == "error":
        row["error_code"] = record["error"]["code"]
        row["error_message"] = record["error"]["message"]
        return row
    answer = record["segment"] if kind == "segment" else record
    top5 = answer.get("top5") or []
    if top5:
        row["label"], row["score"] = top5[0]["label"], top5[0]["score"]
    for key in CSV_COLUMNS[2:]:
        if key in answer:
            row[key] = answer[key]
    timing = answer.get("timing_ms") or {}
    for key in ("decode", "infer", "total"):
        row[f"{key}_ms"] = timing.get(key)
    return row


def _encode(record: dict[str, Any], fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps(record, ensure_ascii=False) + "\n"
    buf = io.StringIO()
    row = _csv_row(record)
    csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
    return buf.getvalue()


def _header() -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(CSV_COLUMNS)
    return buf.getvalue()


@dataclass
class _Previous:
    """What the lines already in the file say."""

    answered: set[str] = field(default_factory=set)  # absolute paths with a final line
    models: set[str] = field(default_factory=set)


def _drop_cut_line(path: Path) -> None:
    """Truncate a last line without its newline (a killed run's write)."""
    with open(path, "rb+") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        back = min(end, 1 << 20)
        fh.seek(end - back)
        tail = fh.read(back)
        cut = tail.rfind(b"\n")
        keep = end - back + cut + 1 if cut >= 0 else 0
        log.warning("%s: dropping a cut last line of %d bytes (a killed run)", path, end - keep)
        fh.truncate(keep)


def _records(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as fh:
        if fmt == "jsonl":
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise OutputError(f"{path}:{number} is not a JSON line") from None
                if not isinstance(record, dict) or "path" not in record:
                    raise OutputError(f"{path}:{number} is not a line of python -m service.batch")
                yield record
            return
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            return
        if tuple(reader.fieldnames) != CSV_COLUMNS:
            raise OutputError(f"{path} is not a CSV of python -m service.batch (its header)")
        for row in reader:
            short: dict[str, Any] = {"path": row["path"], "model": row["model"]}
            if row["kind"] == "error":
                short["error"] = {"code": row["error_code"]}
            elif row["kind"] == "segment":
                short["segment"] = {}
            yield short


def _read_previous(path: Path, fmt: str) -> _Previous:
    previous = _Previous()
    for record in _records(path, fmt):
        kind = kind_of(record)
        if kind == "segment":
            continue
        previous.answered.add(os.path.abspath(record["path"]))
        if kind == "result" and record.get("model"):
            previous.models.add(record["model"])
    return previous


class Output:
    """Where the lines go: a file (appended, resumable) or standard output.

    Args:
        path: The output file; ``None`` writes to standard output.
        fmt: ``jsonl`` or ``csv``.

    Raises:
        OutputError: ``path`` holds lines this run cannot append to.
    """

    def __init__(self, path: Path | None, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.path = path
        self.fmt = fmt
        self._lock = threading.Lock()
        previous = _Previous()
        self._fd: int | None = None
        if path is not None:
            if path.exists():
                _drop_cut_line(path)
                previous = _read_previous(path, fmt)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if fmt == "csv" and os.fstat(self._fd).st_size == 0:
                self._append(_header())
        elif fmt == "csv":
            self._append(_header())
        self.answered = previous.answered
        self.models = previous.models

    def is_answered(self, path: str) -> bool:
        """Whether a line already in the file is the final one of ``path``."""
        return os.path.abspath(path) in self.answered

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record``'s line, whole, and flush it (thread-safe)."""
        self._append(_encode(record, self.fmt))

    def _append(self, text: str) -> None:
        data = text.encode("utf-8")
        with self._lock:
            if self._fd is None:
                sys.stdout.write(text)
                sys.stdout.flush()
                return
            view = memoryview(data)
            while view:  # one write for a line in practice; a short write goes on after it
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        """Flush the file to disk and close it."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
