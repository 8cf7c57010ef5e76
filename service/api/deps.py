"""What routes depend on: the app's :class:`ServiceState`, and readiness."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.auth import AccessControl
from service.errors import ApiError
from service.lifecycle import Drain
from service.metrics import Metrics
from service.queue import UploadSlots, WorkQueue
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
    access: AccessControl
    uploads: UploadSlots
    drain: Drain

    def readiness(self) -> tuple[bool, str]:
        """``(ready, why not)``: models loaded and warm, and not shutting down."""
        if self.drain.draining:
            return False, "shutting down"
        return self.store.readiness()

    def retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}


def not_ready(state: ServiceState, why: str) -> ApiError:
    """The 503 answered while the models are not ready, with Retry-After."""
    return ApiError(503, "not_ready", why, state.retry_after())


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _ready_state(request: Request) -> ServiceState:
    state = _state(request)
    ready, why = state.readiness()
    if not ready:
        raise not_ready(state, why)
    return state


State = Annotated[ServiceState, Depends(_state)]
ReadyState = Annotated[ServiceState, Depends(_ready_state)]
