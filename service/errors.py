"""Every error the service answers, as JSON ``{"error": {"code", "message"}}``.

Domain errors (:class:`service.domain.ServiceError`) get their HTTP status from
:data:`DOMAIN_STATUS`, the one table of them; :class:`ApiError` is the web layer's own
(bad form, overload, timeout). Video decode errors, FastAPI's validation errors and
Starlette's HTTP errors are answered in the same shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.backends import BackendUnavailable, InputTooLarge
from service.domain import ServiceError
from service.store import (
    EmptyRepository,
    LastClass,
    NoRepository,
    StoreReadOnly,
    UnknownClass,
    UnknownModel,
)
from video.errors import NoVideoStreamError, VideoError, VideoLimitError

__all__ = [
    "DOMAIN_STATUS",
    "ERROR_RESPONSES",
    "ApiError",
    "ErrorBody",
    "error_of",
    "error_response",
    "install_error_handlers",
    "status_of",
]

# The HTTP status of each domain error; the code is the error's own (``.code``). A class not
# listed takes the status of its nearest listed base class.
DOMAIN_STATUS: dict[type[Exception], int] = {
    UnknownModel: 404,
    UnknownClass: 404,
    NoRepository: 404,
    LastClass: 409,
    StoreReadOnly: 403,
    EmptyRepository: 409,
    InputTooLarge: 413,
    BackendUnavailable: 503,
    VideoError: 400,  # not a decodable video: empty, not a video, truncated, corrupt
    NoVideoStreamError: 415,
    VideoLimitError: 413,
}

# Codes for Starlette's own errors (wrong path, wrong method...).
_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media",
    422: "invalid_parameters",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered as JSON.

    Args:
        status: HTTP status.
        code: Short machine-readable reason.
        message: What went wrong, for a person.
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def status_of(err: ServiceError | VideoError) -> int:
    """The HTTP status of a domain or video error (500 for one not in :data:`DOMAIN_STATUS`)."""
    for cls in type(err).__mro__:
        if cls in DOMAIN_STATUS:
            return DOMAIN_STATUS[cls]
    return 500


def error_of(err: BaseException) -> tuple[int, str, str] | None:
    """``(status, code, message)`` of an error the service answers by its kind (its own,
    domain and video errors), as the handlers below answer it; ``None`` for any other
    exception (a bug: 500 ``internal``)."""
    if isinstance(err, ApiError):
        return err.status, err.code, err.message
    if isinstance(err, ServiceError):
        return status_of(err), err.code, err.message
    if isinstance(err, VideoError):
        return status_of(err), err.code, str(err) or err.code
    return None


class _ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: _ErrorDetail


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response for an error."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for item in err.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(
            f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid")
        )
    return "; ".join(parts) or "invalid parameters"


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.code, err.message, err.headers)

    @app.exception_handler(ServiceError)
    async def _domain_error(_: Request, err: ServiceError) -> JSONResponse:
        return error_response(status_of(err), err.code, err.message)

    @app.exception_handler(VideoError)
    async def _video_error(_: Request, err: VideoError) -> JSONResponse:
        return error_response(status_of(err), err.code, str(err) or err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_parameters", _validation_message(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(err.status_code, f"http_{err.status_code}")
        return error_response(err.status_code, code, str(err.detail), dict(err.headers or {}))


def _doc(what: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": what}


# OpenAPI documentation of the error answers, shared by the routes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("not a decodable video (empty, not a video, truncated, corrupt, a still image)"),
    401: _doc(
        "missing or wrong `Authorization: Bearer` credentials (API key, or admin token on "
        "the routes that change state); with `WWW-Authenticate`"
    ),
    403: _doc(
        "a route that changes state, and no admin token is configured (admin_disabled), or "
        "the store is read-only (store_read_only)"
    ),
    404: _doc("unknown model, or unknown class"),
    408: _doc(
        "the upload stalled (no bytes for upload_idle_timeout_s) or was slower than "
        "upload_min_rate_bps after upload_rate_grace_s"
    ),
    413: _doc(
        "upload larger than max_upload_bytes, or video over the duration, frame or resolution caps"
    ),
    415: _doc("the file holds no video stream (e.g. audio only)"),
    422: _doc(
        "bad parameters: no `file` field, not multipart/form-data, bad label, "
        "`timeline` not true/false, `window_s` not a number above 0"
    ),
    503: _doc(
        "not ready, upload pool or work queue full, the request timed out, or the server is "
        "shutting down; see Retry-After"
    ),
}
