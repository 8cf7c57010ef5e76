"""Access control: the admin token of the routes that change state, and the optional API keys
of the recognition routes, both as ``Authorization: Bearer <secret>``.

Secrets are compared in constant time (:func:`hmac.compare_digest`, against every key, so the
time taken says nothing about which key came close). The two schemes are declared in the
OpenAPI document through FastAPI's :class:`~fastapi.security.HTTPBearer`.

- Admin routes (``POST /models/{name}/classes``, ``DELETE /models/{name}/classes/{label}``):
  no ``admin_token`` configured is 403 ``admin_disabled`` whatever is sent; a missing or wrong
  token is 401 ``unauthorized`` with ``WWW-Authenticate``.
- Key routes (``/recognize``, ``/models...`` reads, and ``/metrics`` when
  ``metrics_require_key``): open unless ``api_keys`` is set; then a missing or wrong key is
  401 ``unauthorized``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ApiError
from service.settings import Settings

__all__ = ["AccessControl", "AdminAccess", "KeyAccess", "MetricsAccess", "parse_keys"]

log = logging.getLogger(__name__)

_REALM = "actrec"

_admin_scheme = HTTPBearer(
    scheme_name="adminToken",
    description="`ACTREC_ADMIN_TOKEN`: required by the routes that change state",
    auto_error=False,
)
_key_scheme = HTTPBearer(
    scheme_name="apiKey",
    description="one of `ACTREC_API_KEYS`: required by /recognize and /models when keys are set",
    auto_error=False,
)


def parse_keys(value: str) -> list[str]:
    """The keys in a comma-separated list (blank entries dropped)."""
    return [k.strip() for k in value.split(",") if k.strip()]


def _read_key_file(path: Path) -> list[str]:
    """One key per line; blank lines and ``#`` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


class _Keys:
    """The API keys, from the setting's value or from the file it names (re-read when the
    file changes, so a rotated Kubernetes Secret takes effect without a restart)."""

    def __init__(self, value: str) -> None:
        self._lock = threading.Lock()
        self._file: Path | None = None
        self._stamp: tuple[int, int] | None = None
        candidate = Path(value).expanduser()
        if candidate.is_file():
            self._file = candidate
            self._keys = self._load_file()
        elif _looks_like_path(value):
            raise ValueError(f"api_keys names {value!r}, which is not a readable file")
        else:
            self._keys = [k.encode() for k in parse_keys(value)]
        if not self._keys:
            where = f"the file {self._file}" if self._file else "the value"
            raise ValueError(f"api_keys is set but {where} holds no key")

    def _load_file(self) -> list[bytes]:
        assert self._file is not None
        stat = os.stat(self._file)
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return [k.encode() for k in _read_key_file(self._file)]

    def current(self) -> list[bytes]:
        if self._file is None:
            return self._keys
        with self._lock:
            try:
                stat = os.stat(self._file)
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._keys = self._load_file()
                    log.info("API keys re-read from %s: %d keys", self._file, len(self._keys))
            except OSError as err:  # keep the last good keys rather than open or lock out
                log.warning("cannot re-read API keys from %s: %s", self._file, err)
            return self._keys


def _matches(given: str, allowed: list[bytes]) -> bool:
    """Whether ``given`` equals one of ``allowed``, comparing against all of them."""
    secret = given.encode("utf-8", "surrogateescape")
    found = False
    for key in allowed:
        found |= hmac.compare_digest(secret, key)
    return found


class AccessControl:
    """The configured secrets of one app.

    Raises:
        ValueError: ``api_keys`` names a missing file, or holds no key.
    """

    def __init__(self, settings: Settings) -> None:
        token = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._admin = [token.encode()] if token else []
        raw = settings.api_keys.get_secret_value().strip() if settings.api_keys else ""
        self._keys = _Keys(raw) if raw else None
        self.metrics_require_key = settings.metrics_require_key

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin)

    @property
    def keys_required(self) -> bool:
        return self._keys is not None

    def check_admin(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """Raise the 403/401 an admin route answers, or return."""
        if not self._admin:
            raise ApiError(
                403,
                "admin_disabled",
                "this route changes the server's models and needs an admin token; the server "
                "has none configured (set ACTREC_ADMIN_TOKEN)",
            )
        _check(credentials, self._admin, "admin token")

    def check_key(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        """Raise the 401 a key route answers, or return (no keys configured: open)."""
        if self._keys is not None:
            _check(credentials, self._keys.current(), "API key")


def _check(
    credentials: HTTPAuthorizationCredentials | None, allowed: list[bytes], what: str
) -> None:
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            f"this route needs an {what}: send 'Authorization: Bearer <{what}>'",
            {"WWW-Authenticate": f'Bearer realm="{_REALM}"'},
        )
    if not _matches(credentials.credentials, allowed):
        raise ApiError(
            401,
            "unauthorized",
            f"the {what} is not valid",
            {"WWW-Authenticate": f'Bearer realm="{_REALM}", error="invalid_token"'},
        )


def _access(request: Request) -> AccessControl:
    return request.app.state.service.access


def _require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_scheme)],
) -> None:
    _access(request).check_admin(credentials)


def _require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_key_scheme)],
) -> None:
    _access(request).check_key(credentials)


def _require_metrics_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_key_scheme)],
) -> None:
    access = _access(request)
    if access.metrics_require_key:
        access.check_key(credentials)


# Route dependencies: ``dependencies=[AdminAccess]`` and so on.
AdminAccess = Depends(_require_admin)
KeyAccess = Depends(_require_key)
MetricsAccess = Depends(_require_metrics_key)
