"""MS3D class enrolment over HTTP: list, add (or refine) and remove the classes of a model's
repository of class centres (the MS3D paper, see :mod:`models.ms3d`). Each change persists in
the bundle; see ``docs/service.md``, "MS3D class enrolment".
"""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Request, Response

from service.api.admission import admitted
from service.api.deps import ReadyState
from service.auth import AdminAccess, KeyAccess
from service.errors import ERROR_RESPONSES, ApiError
from service.jobs import EmbedTask, embed_job
from service.schemas import ClassesResponse, ClassInfo, EnrolResponse
from service.store import LoadedModel
from service.uploads import multipart_body

__all__ = ["router", "valid_label"]

router = APIRouter(prefix="/models/{name}/classes", tags=["enrolment"])

# Labels travel in URL paths (DELETE) and JSON: printable, bounded, and addressable as one
# path segment. A slash would split it; a backslash is read as a slash by browsers; "." and
# ".." are removed from paths by clients (RFC 3986, 5.2.4) before they are sent.
_LABEL = re.compile(r"^[^/\\]{1,100}$")
_DOT_SEGMENTS = {".", ".."}

_BODY = multipart_body(
    required=["label", "file"],
    properties={
        "label": {
            "type": "string",
            "description": "class name: 1-100 printable characters, no '/' or '\\', "
            "not '.' or '..'",
        },
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "one or more example videos of the class",
        },
    },
)


def valid_label(label: str) -> str:
    """``label`` stripped, or 422 ``invalid_label``: a label must come back unchanged through
    ``DELETE /models/{name}/classes/{label}`` (percent-encoded as one path segment)."""
    label = label.strip()
    if not _LABEL.match(label) or label in _DOT_SEGMENTS or not label.isprintable():
        raise ApiError(
            422,
            "invalid_label",
            "a label is 1-100 printable characters, without '/' or '\\', and not '.' or "
            "'..' (it must be addressable in DELETE /models/{name}/classes/{label})",
        )
    return label


def _classes(model: LoadedModel) -> list[ClassInfo]:
    repo = model.require_repository()
    return [ClassInfo(label=n, count=int(c)) for n, c in zip(repo.names, repo.counts.tolist())]


@router.get(
    "",
    response_model=ClassesResponse,
    summary="Classes in an ms3d repository",
    responses={s: ERROR_RESPONSES[s] for s in (401, 404, 503)},
    dependencies=[KeyAccess],
)
async def list_classes(name: str, state: ReadyState) -> ClassesResponse:
    model = state.store.get(name)
    return ClassesResponse(model=model.name, gamma=model.gamma, classes=_classes(model))


@router.post(
    "",
    response_model=EnrolResponse,
    status_code=201,
    summary="Add a class from example videos, or refine its centre",
    responses={
        200: {"model": EnrolResponse, "description": "existing class updated"},
        **ERROR_RESPONSES,
    },
    openapi_extra=_BODY,
    dependencies=[AdminAccess],
)
async def enrol(
    name: str, request: Request, response: Response, state: ReadyState
) -> EnrolResponse:
    model = state.store.get(name)
    model.require_repository()
    model.require_writable()
    async with admitted(state, request) as work:
        async with work.deadline():
            form = await work.read_form(
                file_fields={"file"}, max_files=state.settings.max_enrol_videos
            )
            label = valid_label(form.fields.get("label", ""))
            files = form.files_of("file")
            if not files:
                raise ApiError(
                    422,
                    "missing_file",
                    "no example video: send one or more as multipart field 'file'",
                )
            task = EmbedTask([f.path for f in files], cancelled=work.cancelled)
            embeddings = await work.run(embed_job, model, task)
        # Outside the time budget: a persisted change is never answered as a failure. File
        # I/O under a lock, so off the event loop too.
        created, _ = await asyncio.to_thread(model.enrol, label, embeddings)
    response.status_code = 201 if created else 200
    return EnrolResponse(
        model=model.name,
        gamma=model.gamma,
        classes=_classes(model),
        label=label,
        created=created,
        videos=len(files),
    )


@router.delete(
    "/{label}",
    response_model=ClassesResponse,
    summary="Remove a class",
    responses={
        **{s: ERROR_RESPONSES[s] for s in (401, 403, 404, 503)},
        409: {"description": "the last class"},
    },
    dependencies=[AdminAccess],
)
async def remove(name: str, label: str, state: ReadyState) -> ClassesResponse:
    model = state.store.get(name)
    model.require_writable()
    await asyncio.to_thread(model.remove_class, label)
    return ClassesResponse(model=model.name, gamma=model.gamma, classes=_classes(model))
