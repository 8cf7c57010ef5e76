"""``POST /recognize``: an uploaded video -> its top-5 labels.

The body is read by :func:`service.uploads.read_form` rather than FastAPI's ``UploadFile``
so the byte cap stops the upload part-way; the multipart schema is therefore declared by hand
for the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from service.api.deps import ReadyState, ServiceState, admit
from service.errors import ERROR_RESPONSES, ApiError
from service.jobs import RecognitionResult, recognize_job
from service.schemas import Detail, RecognizeResponse, Scored, Timing
from service.store import LoadedModel, detail_of
from service.uploads import Form, multipart_body, read_form

__all__ = ["router", "timed_out"]

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


def timed_out(state: ServiceState) -> ApiError:
    """The 503 answered when a request outlives ``request_timeout_s``."""
    state.metrics.rejected.labels("timeout").inc()
    return ApiError(
        503,
        "timeout",
        f"the request took longer than request_timeout_s={state.settings.request_timeout_s} s",
        state.retry_after(),
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
    s = state.settings
    ticket = admit(state)
    form: Form | None = None
    try:
        async with asyncio.timeout(s.request_timeout_s):
            form = await read_form(
                request,
                file_fields={"file"},
                max_file_bytes=s.max_upload_bytes,
                tmp_dir=s.upload_dir,
            )
            files = form.files_of("file")
            if not files:
                raise ApiError(
                    422, "missing_file", "no video: send it as the multipart form field 'file'"
                )
            model = state.store.get(form.fields.get("model"))
            request.state.model = model.name
            result = await state.queue.submit(
                ticket, recognize_job, model, files[0].path, s, state.queue, state.metrics
            )
    except TimeoutError:
        raise timed_out(state) from None
    finally:
        ticket.release()
        if form is not None:
            form.cleanup()
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
        detail=Detail(**detail_of(outcome, model.spec)),
    )
