"""The scaffolding of a route that uploads videos and runs a job: admission to the queue, the
request's time budget, the multipart form, the job, and the cleanup afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import Request

from service.api.deps import ServiceState
from service.errors import ApiError
from service.metrics import Metrics
from service.queue import QueueFull, Ticket, WorkQueue
from service.settings import Settings
from service.store import LoadedModel
from service.uploads import Form, read_form

__all__ = ["Admission", "admit", "admitted", "timed_out"]

A = TypeVar("A")
T = TypeVar("T")

# A job of service.jobs: (model, what to work on, settings, queue, metrics) -> result.
Job = Callable[[LoadedModel, A, Settings, WorkQueue, Metrics], T]


def admit(state: ServiceState) -> Ticket:
    """Reserve a place in the work queue, or answer 503 with Retry-After."""
    try:
        return state.queue.reserve()
    except QueueFull as err:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(
            503, "overloaded", f"server busy: {err}; retry later", state.retry_after()
        ) from None


def timed_out(state: ServiceState) -> ApiError:
    """The 503 answered when a request outlives ``request_timeout_s``."""
    state.metrics.rejected.labels("timeout").inc()
    return ApiError(
        503,
        "timeout",
        f"the request took longer than request_timeout_s={state.settings.request_timeout_s} s",
        state.retry_after(),
    )


class Admission:
    """One admitted request: its ticket and, once read, its form.

    Made by :func:`admitted`, which returns the ticket and removes the form's temp files.
    """

    def __init__(self, state: ServiceState, request: Request, ticket: Ticket) -> None:
        self.state = state
        self.request = request
        self.ticket = ticket
        self.form: Form | None = None

    def deadline(self) -> asyncio.Timeout:
        """The request's time budget, ``request_timeout_s`` (503 ``timeout`` past it)."""
        return asyncio.timeout(self.state.settings.request_timeout_s)

    async def read_form(self, *, file_fields: set[str], max_files: int = 1) -> Form:
        """Stream the multipart body to temp files under the upload caps (the form is kept
        here, so its files are removed whatever happens next)."""
        s = self.state.settings
        self.form = await read_form(
            self.request,
            file_fields=file_fields,
            max_file_bytes=s.max_upload_bytes,
            max_files=max_files,
            tmp_dir=s.upload_dir,
        )
        return self.form

    async def run(self, job: Job[A, T], model: LoadedModel, what: A) -> T:
        """Run ``job`` for ``model`` on the work queue; the job holds the ticket from now on."""
        state = self.state
        self.request.state.model = model.name
        return await state.queue.submit(
            self.ticket, job, model, what, state.settings, state.queue, state.metrics
        )


@asynccontextmanager
async def admitted(state: ServiceState, request: Request) -> AsyncIterator[Admission]:
    """Admit ``request`` (503 ``overloaded`` when the queue is full) for the ``with`` block.

    A :class:`TimeoutError` out of the block (from :meth:`Admission.deadline`) is answered as
    503 ``timeout``. On the way out, whatever happened, the ticket is released (a no-op once a
    job holds it: the job returns it) and then the form's temp files are removed.
    """
    admission = Admission(state, request, admit(state))
    try:
        yield admission
    except TimeoutError:
        raise timed_out(state) from None
    finally:
        admission.ticket.release()
        if admission.form is not None:
            admission.form.cleanup()
