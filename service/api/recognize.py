"""``POST /recognize``: an uploaded video -> its top-5 labels.

The body is streamed by :func:`service.uploads.read_form`, not FastAPI's ``UploadFile``, so
the multipart schema is declared by hand for the OpenAPI document.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from service.api.admission import admitted
from service.api.deps import ReadyState
from service.errors import ERROR_RESPONSES, ApiError
from service.jobs import RecognitionResult, recognize_job
from service.schemas import RecognizeResponse, Scored, Timing
from service.store import LoadedModel, detail_of
from service.uploads import multipart_body

__all__ = ["router"]

router = APIRouter(tags=["recognition"])

_BODY = multipart_body(
    required=["file"],
    properties={
        "file": {
            "type": "string",
            "format": "binary",
            "description": "the video (any container/codec FFmpeg decodes)",
        },
        "model": {"type": "string", "description": "bundle name (default: the configured default)"},
    },
)


@router.post(
    "/recognize",
    response_model=RecognizeResponse,
    response_model_exclude_unset=True,
    summary="Recognise the action in an uploaded video",
    responses=ERROR_RESPONSES,
    openapi_extra=_BODY,
)
async def recognize(request: Request, state: ReadyState) -> RecognizeResponse:
    started = time.perf_counter()
    async with admitted(state, request) as work, work.deadline():
        form = await work.read_form(file_fields={"file"})
        files = form.files_of("file")
        if not files:
            raise ApiError(
                422, "missing_file", "no video: send it as the multipart form field 'file'"
            )
        model = state.store.get(form.fields.get("model"))
        result = await work.run(recognize_job, model, files[0].path)
    return _answer(model, result, started)


def _answer(model: LoadedModel, result: RecognitionResult, started: float) -> RecognizeResponse:
    outcome = result.outcome
    return RecognizeResponse(
        model=model.name,
        family=model.family,
        backend=model.backend.name,
        top5=[Scored(label=label, score=score) for label, score in outcome.top()],
        unknown=outcome.prediction.scores.unknown,
        frames=result.meta.frame_count,
        clips=outcome.prediction.inputs,
        duration_s=result.meta.duration_s,
        timing_ms=Timing(
            decode=result.decode_ms,
            infer=result.infer_ms,
            total=(time.perf_counter() - started) * 1000.0,
        ),
        detail=detail_of(outcome, model.spec),
    )
