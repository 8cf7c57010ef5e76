"""The app factory: routers, JSON errors, request ids, metrics, and model loading in the lifespan.

``create_app(settings)`` builds an independent app (its own store, queue and metrics
registry). Models load in the lifespan, in a background thread by default, so ``/healthz``
answers at once and ``/readyz`` is 503 until every bundle is loaded and warm.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import classes, health, models, recognize, web
from service.api.deps import ServiceState
from service.auth import AccessControl
from service.errors import error_response, install_error_handlers
from service.lifecycle import PROBE_PATHS, Drain
from service.metrics import Metrics
from service.queue import UploadSlots, WorkQueue
from service.settings import Settings
from service.store import ModelStore

__all__ = ["REQUEST_ID_HEADER", "create_app"]

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
# Client ids are echoed into headers and logs: only short, plain tokens are taken as given.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

_DESCRIPTION = """\
Action recognition over HTTP. `POST /recognize` takes a video (multipart field `file`, optional
`model`, `timeline`, `window_s`) and answers its top-5 labels, with `timeline=true` also per
clip or window; with `Accept: application/x-ndjson` as JSON lines while the video is read
(`{"segment"}`... then `{"result"}` or `{"error"}`). Errors are JSON
`{"error": {"code", "message"}}`:
400 not a decodable video, 404 unknown model, 413 too large/long, 415 no video stream,
422 bad parameters, 503 overloaded/not ready/timed out (with Retry-After).
"""


class RequestContext:
    """ASGI middleware: request id, access log line, request count and latency metrics, and
    the shutdown drain (requests other than the probes are counted in flight; during a drain
    they are answered 503 ``shutting_down``).

    Unhandled exceptions become a JSON 500 here, inside the middleware, so even they carry the
    request id and are counted.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, drain: Drain, retry_after_s: int) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False
        counted = scope["path"] not in PROBE_PATHS
        if counted and not self.drain.enter():
            self.metrics.rejected.labels("shutting_down").inc()
            await error_response(
                503,
                "shutting_down",
                "the server is shutting down; retry (another replica will answer)",
                {
                    REQUEST_ID_HEADER: request_id,
                    "Retry-After": str(self.retry_after_s),
                    "Connection": "close",
                },
            )(scope, receive, send)
            self.metrics.requests.labels("<draining>", scope["method"], "503").inc()
            return

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            status = 500
            if not response_started:
                await error_response(
                    500,
                    "internal",
                    "internal error; see the server log",
                    {REQUEST_ID_HEADER: request_id},
                )(scope, receive, send)
        finally:
            if counted:
                self.drain.leave()
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            model = scope["state"].get("model", "-")
            access_log.info(
                "%s %s %s %d %.1fms model=%s",
                request_id,
                scope["method"],
                scope["path"],
                status,
                seconds * 1000.0,
                model,
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service app.

    Args:
        settings: Service settings; ``None`` reads them from the environment.
    """
    settings = settings or Settings()
    metrics = Metrics()
    queue = WorkQueue(
        settings.queue_size,
        settings.decode_workers,
        settings.inference_workers,
        batch_rows=settings.max_batch_inputs,
        batch_delay_s=settings.max_batch_delay_ms / 1e3,
    )
    metrics.watch_queue(lambda: queue.depth, settings.queue_size)
    state = ServiceState(
        settings=settings,
        store=ModelStore(settings),
        queue=queue,
        metrics=metrics,
        access=AccessControl(settings),
        uploads=UploadSlots(settings.max_concurrent_uploads, settings.upload_slot_wait_s),
        drain=Drain(),
    )
    if settings.upload_dir is not None:
        settings.upload_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(asyncio.to_thread(_load, state))
        if not settings.load_in_background:
            await loading
        try:
            yield
        finally:
            queue.shutdown()
            if not loading.done():
                log.info("shutting down while models are still loading")

    app = FastAPI(title="actrec", description=_DESCRIPTION, version="1.0", lifespan=lifespan)
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(
        RequestContext, metrics=metrics, drain=state.drain, retry_after_s=settings.retry_after_s
    )
    for module in (health, models, recognize, classes, web):
        app.include_router(module.router)
    return app


def _load(state: ServiceState) -> None:
    state.store.load_all()
    state.metrics.models_loaded.set(len(state.store.models))
    for model in state.store.models.values():
        state.metrics.model_info.labels(model.name, model.family, model.backend.name).set(1)
