"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.api.deps import State, not_ready
from service.auth import MetricsAccess
from service.errors import ERROR_RESPONSES, ApiError
from service.metrics import CONTENT_TYPE_LATEST
from service.schemas import Health, Ready

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Models are loaded and warm",
    responses={503: ERROR_RESPONSES[503]},
)
async def readyz(state: State) -> Ready:
    if state.drain.draining:
        raise ApiError(503, "shutting_down", "the server is shutting down", state.retry_after())
    ready, why = state.readiness()
    if not ready:
        raise not_ready(state, why)
    return Ready(status="ready", models=sorted(state.store.models))


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    dependencies=[MetricsAccess],
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
