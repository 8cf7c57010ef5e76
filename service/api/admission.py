"""The scaffolding of a route that uploads videos and runs a job: the upload (in its own
bounded pool, paced), admission to the work queue once the upload is whole, the request's time
budget, the job, the streamed answer, and the cleanup afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import CancelledError as FutureCancelled
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from fastapi import Request

from service.api.deps import ServiceState
from service.errors import ApiError, error_of
from service.metrics import Metrics
from service.queue import QueueFull, Ticket, UploadsFull, WorkQueue
from service.settings import Settings
from service.store import LoadedModel
from service.uploads import Form, UploadPace, read_form

__all__ = ["Admission", "Channel", "Lines", "admit", "admitted", "timed_out"]

log = logging.getLogger(__name__)

A = TypeVar("A")
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item a job pushes to its streamed answer

# A job of service.jobs: (model, what to work on, settings, queue, metrics) -> result.
Job = Callable[[LoadedModel, A, Settings, WorkQueue, Metrics], T]

# How often a streamed answer waiting for its next line checks the client and the job.
_POLL_S = 0.5


def admit(state: ServiceState) -> Ticket:
    """Reserve a place in the work queue, or answer 503 with Retry-After."""
    try:
        return state.queue.reserve()
    except QueueFull as err:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(
            503, "overloaded", f"server busy: {err}; retry later", state.retry_after()
        ) from None


def timed_out(state: ServiceState, message: str | None = None) -> ApiError:
    """The 503 answered when a request outlives its time budget."""
    state.metrics.rejected.labels("timeout").inc()
    return ApiError(
        503,
        "timeout",
        message
        or f"the request took longer than request_timeout_s={state.settings.request_timeout_s} s",
        state.retry_after(),
    )


class Admission:
    """One request that uploads and computes: its form once read, its work-queue ticket once
    the form is whole, and its stop flag.

    Made by :func:`admitted`, which closes it on the way out (:meth:`close`), unless a
    streamed answer took it over (:meth:`stream`), which closes it when the stream ends.
    """

    def __init__(self, state: ServiceState, request: Request) -> None:
        self.state = state
        self.request = request
        self.ticket: Ticket | None = None
        self.form: Form | None = None
        self._stop = threading.Event()
        self._deadline: asyncio.Timeout | None = None
        self.handed_over = False

    def deadline(self) -> asyncio.Timeout:
        """The request's time budget for its work, ``request_timeout_s`` (503 ``timeout``
        past it). It starts when the upload is whole: the upload is bounded by its pace
        (``upload_idle_timeout_s``, ``upload_min_rate_bps``) instead."""
        self._deadline = asyncio.timeout(None)
        return self._deadline

    def _start_clock(self) -> None:
        if self._deadline is not None:
            budget = self.state.settings.request_timeout_s
            self._deadline.reschedule(asyncio.get_running_loop().time() + budget)

    def cancelled(self) -> bool:
        """Whether the request gave up (finished, timed out, client gone): a job polls it
        between decoded chunks and stops. Thread-safe."""
        return self._stop.is_set()

    def close(self) -> None:
        """Stop the job at its next chunk, return the ticket (unless the job holds it: it
        returns it when it ends), then remove the form's temp files. Idempotent."""
        self._stop.set()
        if self.ticket is not None:
            self.ticket.release()
        if self.form is not None:
            self.form.cleanup()

    async def read_form(self, *, file_fields: set[str], max_files: int = 1) -> Form:
        """Stream the multipart body to temp files under the upload caps and pace, holding
        an upload slot meanwhile (503 ``overloaded`` when none comes free); then take a
        work-queue ticket (503 ``overloaded`` when the queue is full) and start the time
        budget. The form is kept here, so its files are removed whatever happens next."""
        state, s = self.state, self.state.settings
        try:
            async with state.uploads.slot():
                self.form = await read_form(
                    self.request,
                    file_fields=file_fields,
                    max_file_bytes=s.max_upload_bytes,
                    max_files=max_files,
                    tmp_dir=s.upload_dir,
                    pace=UploadPace(
                        idle_timeout_s=s.upload_idle_timeout_s,
                        min_rate_bps=s.upload_min_rate_bps,
                        grace_s=s.upload_rate_grace_s,
                    ),
                )
        except UploadsFull as err:
            state.metrics.rejected.labels("uploads_full").inc()
            raise ApiError(
                503,
                "overloaded",
                f"server busy: {err}; retry later",
                {**state.retry_after(), "Connection": "close"},
            ) from None
        except ApiError as err:
            if err.status == 408:
                state.metrics.rejected.labels(err.code).inc()
            raise
        self.ticket = admit(state)
        self._start_clock()
        return self.form

    def _submit(self, job: Job[A, T], model: LoadedModel, what: A) -> asyncio.Future[T]:
        state = self.state
        if self.ticket is None:  # a job without an upload: admitted now
            self.ticket = admit(state)
        self.request.state.model = model.name
        return state.queue.submit(
            self.ticket, job, model, what, state.settings, state.queue, state.metrics
        )

    async def run(self, job: Job[A, T], model: LoadedModel, what: A) -> T:
        """Run ``job`` for ``model`` on the work queue; the job holds the ticket from now on."""
        return await self._submit(job, model, what)

    def channel(self) -> Channel[Any]:
        """A channel from a job thread to this request's streamed answer (see :meth:`stream`);
        make it on the event loop, and give its :meth:`Channel.push`, :meth:`Channel.poll`
        and :meth:`Channel.waiting` to the job."""
        return Channel(asyncio.get_running_loop(), self._stop)

    async def stream(
        self,
        job: Job[A, T],
        model: LoadedModel,
        what: A,
        channel: Channel[I],
        *,
        item_line: Callable[[I], dict[str, Any]],
        result_line: Callable[[T], dict[str, Any]],
    ) -> Lines[I, T]:
        """Run ``job`` as :meth:`run` does, for a streamed answer.

        Waits (under the caller's budget, e.g. :meth:`deadline`) until the job has started
        on its input (its first :meth:`Channel.poll`): an error before that propagates, to be
        answered as a normal JSON error. From then on the answer is the returned
        :class:`Lines`, which owns this admission: it closes it when the stream ends, however
        it ends (client gone included), instead of :func:`admitted`.
        """
        future = self._submit(job, model, what)
        future.add_done_callback(channel.job_done)
        try:
            await channel.started()
        except BaseException:
            future.cancel()
            raise
        self.handed_over = True
        return Lines(self, channel, future, item_line, result_line)


class Channel(Generic[I]):
    """What a job thread tells its streamed answer on the event loop: items as they come
    (:meth:`push`), that it has started and whether the answer is still wanted
    (:meth:`poll`), when it waits for a network call (:meth:`waiting`), and its end
    (:meth:`job_done`, on the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        self._loop = loop
        self._stop = stop
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._started = False
        self._pending: tuple[str, Any] | None = None
        # Since when the job waits for a network call, or None (written by the job thread,
        # read on the loop: one reference, swapped whole).
        self.waiting_since: float | None = None

    # --- on the job thread

    def push(self, item: I) -> None:
        """Send ``item`` to the answer (thread-safe, never blocks)."""
        self._send("item", item)

    def poll(self) -> bool:
        """The job's poll between chunks: ``True`` when it should stop."""
        if not self._started:
            self._started = True
            self._send("started", None)
        return self._stop.is_set()

    def waiting(self, flag: bool) -> None:
        """The job starts (``True``) or ends (``False``) waiting for a network call."""
        self.waiting_since = time.monotonic() if flag else None

    def _send(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is gone, nobody reads
            pass

    # --- on the event loop

    def job_done(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # read here, so an answer that went away leaves no warning
        self._events.put_nowait(("done", future))

    async def started(self) -> None:
        """Wait until the job has begun on its input (its first poll or item); raises the
        job's error if it ends before."""
        event = await self._events.get()
        kind, value = event
        if kind == "done":
            value.result()  # raises the job's error
        if kind != "started":
            self._pending = event  # an item, or a result made without polling: streamed next

    async def next(self, timeout: float) -> tuple[str, Any]:
        """The next event, or ``("wait", None)`` after ``timeout`` seconds without one."""
        if self._pending is not None:
            event, self._pending = self._pending, None
            return event
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return "wait", None


class Lines(Generic[I, T]):
    """A streamed answer as NDJSON lines: one per item the job pushes, then one for its
    result, or a last ``{"error": {"code", "message"}}`` line when the job fails, or when it
    is stuck: held in one network call (waiting for an inference thread, or in the call)
    for ``segment_timeout_s`` without a line meanwhile (``timeout``). A job that is decoding
    is never cut, however long its passes over the video take.

    Iterating it owns the admission: when the iteration ends (the last line, or the
    response cancelled because the client went away) the job is told to stop and the
    admission is closed.
    """

    def __init__(
        self,
        admission: Admission,
        channel: Channel[I],
        future: asyncio.Future[T],
        item_line: Callable[[I], dict[str, Any]],
        result_line: Callable[[T], dict[str, Any]],
    ) -> None:
        self.admission = admission
        self.channel = channel
        self.future = future
        self.item_line = item_line
        self.result_line = result_line

    async def __aiter__(self) -> AsyncIterator[bytes]:
        state = self.admission.state
        limit = state.settings.segment_timeout_s
        last = time.monotonic()
        try:
            while True:
                kind, value = await self.channel.next(min(_POLL_S, limit))
                if kind == "item":
                    yield _line(self.item_line(value))
                    last = time.monotonic()
                elif kind == "done":
                    yield _line(self._end(value))
                    return
                elif kind == "wait":
                    if await self.admission.request.is_disconnected():
                        return
                    since = self.channel.waiting_since
                    if since is not None and time.monotonic() - max(last, since) > limit:
                        err = timed_out(
                            state,
                            f"the recognition waited for the network for longer than "
                            f"segment_timeout_s={limit} s without a line",
                        )
                        yield _line(_error(err.code, err.message))
                        return
        finally:
            self.future.cancel()
            self.admission.close()

    def _end(self, future: asyncio.Future[T]) -> dict[str, Any]:
        try:
            return self.result_line(future.result())
        except (asyncio.CancelledError, FutureCancelled):
            return _error("internal", "the job was cancelled")
        except Exception as err:
            known = error_of(err)
            if known is None:
                log.exception("streamed job failed")
                return _error("internal", "internal error; see the server log")
            _, code, message = known
            return _error(code, message)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + (
        b"\n"
    )


@asynccontextmanager
async def admitted(state: ServiceState, request: Request) -> AsyncIterator[Admission]:
    """An :class:`Admission` of ``request`` for the ``with`` block: the upload pool and the
    work queue are entered by its :meth:`~Admission.read_form` (each 503 ``overloaded`` when
    full), so a slow upload never holds a work-queue ticket.

    A :class:`TimeoutError` out of the block (from :meth:`Admission.deadline`) is answered as
    503 ``timeout``. On the way out, whatever happened, the admission is closed: the job
    told to stop (it stops at its next decoded chunk), the ticket released (a no-op once a
    job holds it: the job returns it when it ends) and then the form's temp files removed;
    unless a streamed answer took the admission over (:meth:`Admission.stream`), which
    closes it when the stream ends.
    """
    admission = Admission(state, request)
    try:
        yield admission
    except TimeoutError:
        raise timed_out(state) from None
    finally:
        if not admission.handed_over:
            admission.close()
