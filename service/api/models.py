"""``GET /models``: the loaded bundles."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import State
from service.auth import KeyAccess
from service.errors import ERROR_RESPONSES
from service.schemas import ModelsResponse

__all__ = ["router"]

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="Loaded bundles with labels, family, backend and sampler",
    responses={401: ERROR_RESPONSES[401]},
    dependencies=[KeyAccess],
)
async def list_loaded(state: State) -> ModelsResponse:
    store = state.store
    default = store.default_name
    return ModelsResponse(
        default=default,
        models=[m.describe(name == default) for name, m in sorted(store.models.items())],
        failed=dict(store.failed),
    )
