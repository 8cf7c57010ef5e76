"""``GET /``: the web page, a static page over the JSON API (no build step, nothing external).

The page (``service/static/index.html``) and its two assets (``/static/app.js``,
``/static/app.css``) ship as package data. They are read once, answered with an ``ETag``
(so a browser revalidates cheaply) and with headers that confine the page to this origin: a
Content-Security-Policy that allows only this origin's scripts, styles and requests (plus
``blob:`` media, for the preview of the video the user picked), no framing, no MIME sniffing,
no referrer. The page itself is described in ``docs/service.md``, "Web page".
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request, Response

from service.errors import ApiError

__all__ = ["CONTENT_SECURITY_POLICY", "router"]

router = APIRouter(tags=["web"])

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Unversioned file names: always revalidate (the ETag makes that a 304).
    "Cache-Control": "no-cache",
}

# The files that may be served, with their media types: nothing else under static/ is reachable.
_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


@functools.cache
def _asset(name: str) -> _Asset:
    body = (resources.files("service") / "static" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _Asset(body, _MEDIA_TYPES[name], etag)


def _serve(name: str, request: Request) -> Response:
    asset = _asset(name)
    headers = {**_SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _etags(header: str) -> set[str]:
    """The entity tags of an ``If-None-Match`` header (weak ones compared as strong)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@router.get("/", include_in_schema=False)
async def page(request: Request) -> Response:
    return _serve("index.html", request)


@router.get("/static/{name}", include_in_schema=False)
async def asset(name: str, request: Request) -> Response:
    if name not in _MEDIA_TYPES or name == "index.html":
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return _serve(name, request)
