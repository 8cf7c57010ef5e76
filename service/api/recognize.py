"""``POST /recognize``: an uploaded video -> its top-5 labels, optionally with its timeline,
optionally streamed as NDJSON lines (``Accept: application/x-ndjson``).

The body is streamed by :func:`service.uploads.read_form`, not FastAPI's ``UploadFile``, so
the multipart schema is declared by hand for the OpenAPI document.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from service.api.admission import admitted
from service.api.deps import ReadyState
from service.auth import KeyAccess
from service.errors import ERROR_RESPONSES, ApiError
from service.jobs import RecognitionResult, RecognitionTask, recognize_job
from service.schemas import RecognizeResponse, Scored, TimelineSegment, Timing
from service.store import LoadedModel, detail_of
from service.uploads import Form, multipart_body

__all__ = ["NDJSON", "build_answer", "router"]

router = APIRouter(tags=["recognition"])

NDJSON = "application/x-ndjson"
DEFAULT_WINDOW_S = 10.0

_BODY = multipart_body(
    required=["file"],
    properties={
        "file": {
            "type": "string",
            "format": "binary",
            "description": "the video (any container/codec FFmpeg decodes)",
        },
        "model": {"type": "string", "description": "bundle name (default: the configured default)"},
        "timeline": {
            "type": "string",
            "enum": ["true", "false"],
            "default": "false",
            "description": "also answer `timeline`: the answer per segment of the video, in "
            "time order (one per clip for c3d_vll and attention_lstm, one per `window_s` "
            "window for ms3d and full_video); implied by a streamed answer",
        },
        "window_s": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": DEFAULT_WINDOW_S,
            "description": "seconds per timeline window for ms3d and full_video",
        },
    },
)

_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the answer; with `Accept: application/x-ndjson`, a stream of JSON "
        'lines instead: `{"segment": {start_s, end_s, top5, unknown}}` for each timeline '
        'segment as soon as it is known, then `{"result": {...}}` (this answer with its '
        '`timeline`), or a last `{"error": {code, message}}` line if the recognition fails '
        "after the stream started (e.g. a video damaged past its start); errors before the "
        "first line are the JSON errors below",
        "content": {
            NDJSON: {
                "schema": {"type": "string", "description": "one JSON object per line"},
            }
        },
    }
}


@router.post(
    "/recognize",
    response_model=RecognizeResponse,
    response_model_exclude_unset=True,
    summary="Recognise the action in an uploaded video",
    responses={**_STREAMED, **{k: v for k, v in ERROR_RESPONSES.items() if k != 403}},
    openapi_extra=_BODY,
    dependencies=[KeyAccess],
)
async def recognize(request: Request, state: ReadyState) -> Response | RecognizeResponse:
    started = time.perf_counter()
    streamed = wants_ndjson(request.headers.get("accept", ""))
    async with admitted(state, request) as work, work.deadline():
        form = await work.read_form(file_fields={"file"})
        files = form.files_of("file")
        if not files:
            raise ApiError(
                422, "missing_file", "no video: send it as the multipart form field 'file'"
            )
        timeline, window_s = _options(form)
        model = state.store.get(form.fields.get("model"))
        path = files[0].path
        if streamed:
            channel = work.channel()
            task = RecognitionTask(
                path,
                True,
                window_s,
                on_segment=channel.push,
                cancelled=channel.poll,
                waiting=channel.waiting,
            )

            def result_line(result: RecognitionResult) -> dict[str, Any]:
                answer = build_answer(model, result, started, timeline=True)
                return {"result": answer.model_dump(mode="json", exclude_unset=True)}

            lines = await work.stream(
                recognize_job,
                model,
                task,
                channel,
                item_line=_segment_line,
                result_line=result_line,
            )
            return StreamingResponse(
                lines,
                media_type=NDJSON,
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        task = RecognitionTask(path, timeline, window_s, cancelled=work.cancelled)
        result = await work.run(recognize_job, model, task)
    return build_answer(model, result, started, timeline=timeline)


def wants_ndjson(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the NDJSON stream."""
    return any(part.split(";")[0].strip().lower() == NDJSON for part in accept.split(","))


def _options(form: Form) -> tuple[bool, float]:
    """``(timeline, window_s)`` from the form, or 422."""
    raw = form.fields.get("timeline", "false").strip().lower()
    if raw not in ("true", "false"):
        raise ApiError(422, "invalid_parameters", "timeline: must be true or false")
    window_s = DEFAULT_WINDOW_S
    given = form.fields.get("window_s")
    if given is not None:
        try:
            window_s = float(given)
        except ValueError:
            window_s = math.nan
        if not (math.isfinite(window_s) and window_s > 0):
            raise ApiError(
                422, "invalid_parameters", "window_s: must be a number of seconds above 0"
            )
    return raw == "true", window_s


def _segment_line(segment: TimelineSegment) -> dict[str, Any]:
    return {"segment": segment.model_dump(mode="json")}


def build_answer(
    model: LoadedModel, result: RecognitionResult, started: float, *, timeline: bool
) -> RecognizeResponse:
    """The ``/recognize`` answer for ``result`` (``timing_ms.total`` counted from
    ``started``, a ``time.perf_counter()`` value); ``service.batch`` writes the same."""
    outcome = result.outcome
    answer = RecognizeResponse(
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
    if timeline:
        answer.timeline = outcome.timeline or []  # assigned: set, so it is answered
    return answer
