"""What routes depend on: the app's :class:`ServiceState`, and readiness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import ApiError
from service.metrics import Metrics
from service.queue import WorkQueue
from service.settings import Settings
from service.store import ModelStore

__all__ = ["ReadyState", "ServiceState", "State", "not_ready"]


@dataclass
class ServiceState:
    """Everything one app instance owns."""

    settings: Settings
    store: ModelStore
    queue: WorkQueue
    metrics: Metrics

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}


def not_ready(state: ServiceState, why: str) -> ApiError:
    """The 503 answered while the models are not ready, with Retry-After."""
    return ApiError(503, "not_ready", why, state.retry_after())


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _ready_state(request: Request) -> ServiceState:
    state = _state(request)
    ready, why = state.store.readiness()
    if not ready:
        raise not_ready(state, why)
    return state


State = Annotated[ServiceState, Depends(_state)]
ReadyState = Annotated[ServiceState, Depends(_ready_state)]
