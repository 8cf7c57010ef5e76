"""Streaming multipart uploads to temp files, with the byte cap enforced while reading.

Unlike FastAPI's ``UploadFile``, which takes the whole body first, :func:`read_form` stops at
the first byte over the cap (413). Every temp file belongs to the returned :class:`Form`
(or is removed before an error propagates); routes remove them with :meth:`Form.cleanup`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from service.errors import ApiError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = [
    "UPLOAD_PREFIX",
    "Form",
    "UploadPace",
    "UploadedFile",
    "multipart_body",
    "read_form",
]

UPLOAD_PREFIX = "actrec-upload-"
# Text fields are names and labels; anything longer is not a parameter of ours.
_MAX_FIELD_BYTES = 1024
_MAX_FIELDS = 16
# Multipart framing (boundaries, part headers) on top of the files themselves.
_FRAMING_ALLOWANCE = 64 * 1024


@dataclass
class UploadedFile:
    """One file part on disk.

    Attributes:
        field: The form field name.
        filename: The client's file name (informative only).
        path: The temp file.
        size: Bytes written.
    """

    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class Form:
    """A parsed form: text fields and file parts."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def files_of(self, name: str) -> list[UploadedFile]:
        return [f for f in self.files if f.field == name]

    def cleanup(self) -> None:
        """Remove every temp file (idempotent)."""
        for f in self.files:
            f.path.unlink(missing_ok=True)


class _Parser:
    """Callbacks for python-multipart's push parser, writing file parts to disk."""

    def __init__(
        self,
        form: Form,
        *,
        file_fields: set[str],
        max_file_bytes: int,
        max_files: int,
        tmp_dir: Path | None,
    ) -> None:
        self.form = form
        self.file_fields = file_fields
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.tmp_dir = tmp_dir
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file: UploadedFile | None = None
        self._fh: IO[bytes] | None = None
        self._text: bytearray | None = None
        self.error: ApiError | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_cb,
            "on_header_value": self._header_value_cb,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = ""
        self._file = None
        self._text = None

    def _header_field_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = self._header_value = b""

    def _fail(self, err: ApiError) -> None:
        # Raising inside a callback would leave the parser half-way; record and stop instead.
        if self.error is None:
            self.error = err

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None and self._name in self.file_fields:
            if len(self.form.files) >= self.max_files:
                self._fail(
                    ApiError(
                        422,
                        "too_many_files",
                        f"at most {self.max_files} files may be uploaded at once",
                    )
                )
                return
            fd, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, suffix=".upload", dir=self.tmp_dir)
            self._file = UploadedFile(self._name, filename.decode("utf-8", "replace"), Path(name))
            self.form.files.append(self._file)  # owned by the form from now on: cleanup sees it
            self._fh = os.fdopen(fd, "wb")
        elif filename is None:
            if len(self.form.fields) >= _MAX_FIELDS:
                self._fail(ApiError(422, "too_many_fields", f"at most {_MAX_FIELDS} form fields"))
                return
            self._text = bytearray()
        # File parts under names we do not use are read past and dropped.

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self._file is not None and self._fh is not None:
            self._file.size += end - start
            if self._file.size > self.max_file_bytes:
                self._fail(
                    ApiError(
                        413,
                        "upload_too_large",
                        f"file {self._file.filename!r} is larger than the limit of "
                        f"{self.max_file_bytes} bytes",
                    )
                )
                return
            self._fh.write(data[start:end])
        elif self._text is not None:
            self._text += data[start:end]
            if len(self._text) > _MAX_FIELD_BYTES:
                self._fail(
                    ApiError(
                        422,
                        "invalid_parameters",
                        f"form field {self._name!r} is longer than {_MAX_FIELD_BYTES} bytes",
                    )
                )

    def _part_end(self) -> None:
        self.close_file()
        if self._text is not None and self.error is None:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(
                    ApiError(
                        422, "invalid_parameters", f"form field {self._name!r} is not UTF-8 text"
                    )
                )
        self._text = None

    def close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._file = None


@dataclass(frozen=True)
class UploadPace:
    """How slowly a client may send its body.

    Attributes:
        idle_timeout_s: Longest wait for the next bytes (408 ``upload_timeout`` past it).
        min_rate_bps: Slowest average rate in bytes/s once ``grace_s`` have passed
            (408 ``upload_too_slow`` below it); 0: no minimum.
        grace_s: Seconds from the first byte asked for before the rate applies.
    """

    idle_timeout_s: float = 10.0
    min_rate_bps: int = 0
    grace_s: float = 10.0


# Answered with the connection closed: the rest of the body is never read.
_CLOSE = {"Connection": "close"}


async def _body_chunks(request: Request, pace: UploadPace) -> AsyncIterator[bytes]:
    """The request body as it arrives, under ``pace`` (ASGI ``receive`` read directly, so the
    wait for each message can be bounded)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), pace.idle_timeout_s)
        except TimeoutError:
            raise ApiError(
                408,
                "upload_timeout",
                f"no upload bytes for upload_idle_timeout_s={pace.idle_timeout_s} s",
                _CLOSE,
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        received += len(chunk)
        elapsed = loop.time() - started
        if pace.min_rate_bps and elapsed > pace.grace_s and received < pace.min_rate_bps * elapsed:
            raise ApiError(
                408,
                "upload_too_slow",
                f"the upload averaged {received / elapsed:.0f} bytes/s after {elapsed:.0f} s, "
                f"below upload_min_rate_bps={pace.min_rate_bps}",
                _CLOSE,
            )
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def read_form(
    request: Request,
    *,
    file_fields: set[str],
    max_file_bytes: int,
    max_files: int = 1,
    tmp_dir: Path | None = None,
    pace: UploadPace | None = None,
) -> Form:
    """Stream a ``multipart/form-data`` body into a :class:`Form`.

    Args:
        request: The incoming request (its body not yet read).
        file_fields: Field names whose file parts are kept.
        max_file_bytes: Largest file part; the body is read no further past it.
        max_files: Most file parts kept.
        tmp_dir: Directory of the temp files (system default when ``None``).
        pace: How slowly the client may send (default :class:`UploadPace`'s).

    Raises:
        ApiError: 413 over a byte cap, 422 for a body that is not usable multipart, 408 for
            a client that sends too slowly or stops sending, 400 when the client goes away
            mid-upload. Temp files are removed before it propagates.
    """
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(
            422,
            "invalid_parameters",
            "the body must be multipart/form-data with the video in field 'file'",
        )
    max_body = max_file_bytes * max_files + _FRAMING_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(
            413,
            "upload_too_large",
            f"request body of {declared} bytes is larger than the limit of "
            f"{max_file_bytes} bytes per file",
            _CLOSE,
        )
    form = Form()
    parser_state = _Parser(
        form,
        file_fields=file_fields,
        max_file_bytes=max_file_bytes,
        max_files=max_files,
        tmp_dir=tmp_dir,
    )
    parser = MultipartParser(boundary, parser_state.callbacks())
    total = 0
    try:
        try:
            async for chunk in _body_chunks(request, pace or UploadPace()):
                total += len(chunk)
                if total > max_body:
                    raise ApiError(
                        413,
                        "upload_too_large",
                        f"request body is larger than the limit of {max_file_bytes} bytes per file",
                        _CLOSE,
                    )
                parser.write(chunk)
                if parser_state.error is not None:
                    err = parser_state.error
                    raise ApiError(err.status, err.code, err.message, {**err.headers, **_CLOSE})
            parser.finalize()
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
        except ApiError:
            raise
        except ValueError as err:  # python-multipart's MultipartParseError and friends
            raise ApiError(422, "invalid_parameters", f"malformed multipart body: {err}") from None
        finally:
            parser_state.close_file()
    except BaseException:
        form.cleanup()
        raise
    return form


def multipart_body(*, required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route that reads its multipart form with
    :func:`read_form` (FastAPI cannot infer it: the route takes no ``UploadFile``)."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }
