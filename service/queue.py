"""The bounded work queue: admission tickets, a job pool, decode slots and inference threads.

At most ``capacity`` requests hold a :class:`Ticket` at once; a job runs on the pool, holding
one of ``decode_slots`` while it decodes and running each network call on one of
``infer_slots`` dedicated threads; the network calls of concurrent jobs for one model can be
joined into one forward (:meth:`WorkQueue.batcher`, :mod:`service.batching`). A ticket is
returned when its job finishes (or never starts), not when the request gives up (see
``docs/service.md``, "How a request flows, and why").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from enum import Enum
from typing import Any, TypeVar

from torch import Tensor

from service.batching import BatchObserver, ForwardBatcher

__all__ = ["QueueFull", "Ticket", "UploadSlots", "UploadsFull", "WorkQueue"]

T = TypeVar("T")


class QueueFull(Exception):
    """Every admission ticket is taken."""


class Ticket:
    """A handle on one admitted request; its state is kept by the queue that issued it."""

    def __init__(self, queue: WorkQueue) -> None:
        self._queue = queue

    def release(self) -> None:
        """Give the ticket back, unless a submitted job holds it (see :meth:`WorkQueue.release`)."""
        self._queue.release(self)


class _Holder(Enum):
    REQUEST = "request"
    JOB = "job"


class WorkQueue:
    """Bounded admission plus decode and inference slots.

    Args:
        capacity: Requests admitted at once.
        decode_slots: Decodes running at once.
        infer_slots: Inferences running at once.
        batch_rows: Batching across requests: most network inputs per joined forward.
        batch_delay_s: Batching across requests: the longest a call waits for others to join
            it (0: no batching; :meth:`batcher` then gives ``None``).
    """

    def __init__(
        self,
        capacity: int,
        decode_slots: int,
        infer_slots: int,
        *,
        batch_rows: int = 32,
        batch_delay_s: float = 0.0,
    ) -> None:
        if min(capacity, decode_slots, infer_slots) < 1:
            raise ValueError("capacity and slots must be >= 1")
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="actrec-job")
        self._decode = threading.BoundedSemaphore(decode_slots)
        self._infer = ThreadPoolExecutor(max_workers=infer_slots, thread_name_prefix="actrec-infer")
        self._lock = threading.Lock()
        # Tickets out now, and who holds each; a returned ticket is no longer here.
        self._tickets: dict[Ticket, _Holder] = {}
        self._batch_rows = batch_rows
        self._batch_delay_s = batch_delay_s
        # Per model name: the network whose calls the batcher joins, and the batcher.
        self._batchers: dict[str, tuple[object, ForwardBatcher]] = {}

    @property
    def depth(self) -> int:
        """Tickets taken now (requests uploading, waiting, decoding or inferring)."""
        with self._lock:
            return len(self._tickets)

    def reserve(self) -> Ticket:
        """Admit one request.

        Raises:
            QueueFull: ``capacity`` tickets are already taken.
        """
        with self._lock:
            taken = len(self._tickets)
            if taken >= self.capacity:
                raise QueueFull(f"{taken} requests in progress, the limit is {self.capacity}")
            ticket = Ticket(self)
            self._tickets[ticket] = _Holder.REQUEST
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The request is done with ``ticket``: return it, unless a submitted job holds it.

        A job's ticket comes back when the job finishes; releasing twice is harmless.
        """
        with self._lock:
            if self._tickets.get(ticket) is _Holder.REQUEST:
                del self._tickets[ticket]

    def _job_done(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.pop(ticket, None)

    def submit(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the pool; ``ticket`` is returned when it finishes or is cancelled.

        Must be called from the event loop; the returned future belongs to it.

        Raises:
            ValueError: ``ticket`` is not held by a request (returned, or already submitted).
        """
        with self._lock:
            if self._tickets.get(ticket) is not _Holder.REQUEST:
                raise ValueError("the ticket is not held by a request")
            self._tickets[ticket] = _Holder.JOB
        try:
            future: Future[T] = self._executor.submit(fn, *args)
        except BaseException:
            self._job_done(ticket)
            raise
        future.add_done_callback(lambda _: self._job_done(ticket))
        return asyncio.wrap_future(future)

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Hold a decode slot (call from a job thread)."""
        with self._decode:
            yield

    @contextmanager
    def decode_paused(self) -> Iterator[None]:
        """Give the decode slot back for the block and take one again after (call from a job
        thread inside :meth:`decoding`): a streamed recognition waits for its network calls
        without keeping another video from decoding."""
        self._decode.release()
        try:
            yield
        finally:
            self._decode.acquire()

    def infer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on an inference thread and wait for it (call from a job thread)."""
        return self._infer.submit(fn, *args).result()

    def batcher(
        self,
        name: str,
        network: object,
        forward: Callable[[Tensor], Tensor],
        observe: BatchObserver | None = None,
        max_rows: int | None = None,
    ) -> ForwardBatcher | None:
        """The batcher joining the calls of ``forward`` (model ``name``'s network ``network``)
        from concurrent jobs, run on the inference threads; ``None`` when batching is off. A
        reloaded model (another ``network``) gets a new one. ``max_rows`` lowers the queue's
        cap on inputs per forward (a TensorRT profile's bound)."""
        if self._batch_delay_s <= 0:
            return None
        with self._lock:
            held = self._batchers.get(name)
            if held is None or held[0] is not network:

                def run(inputs: Tensor) -> Tensor:
                    return self.infer(forward, inputs)

                batcher = ForwardBatcher(
                    run,
                    max_rows=min(self._batch_rows, max_rows or self._batch_rows),
                    max_delay_s=self._batch_delay_s,
                    observe=observe,
                )
                held = (network, batcher)
                self._batchers[name] = held
            return held[1]

    def shutdown(self) -> None:
        """Stop taking jobs; queued jobs that have not started are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._infer.shutdown(wait=False, cancel_futures=True)


class UploadsFull(Exception):
    """Every upload slot stayed taken for the whole wait."""


class UploadSlots:
    """The bounded pool of uploads being received, apart from the work queue's tickets: a slow
    client holds a slot (a socket and a temp file), never compute.

    Waiters are served first come, first served (:class:`asyncio.Semaphore`), for at most
    ``wait_s``. The semaphore is made per event loop, on first use, so one app can be served
    by successive loops (as tests do).

    Args:
        capacity: Uploads received at once.
        wait_s: Longest wait for a slot before :class:`UploadsFull`.
    """

    def __init__(self, capacity: int, wait_s: float) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.wait_s = wait_s
        self.active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.capacity)
        return self._semaphore

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one upload slot for the block.

        Raises:
            UploadsFull: none came free within ``wait_s``.
        """
        sem = self._sem()
        if not sem.locked():
            await sem.acquire()
        elif self.wait_s <= 0:
            raise UploadsFull(f"all {self.capacity} upload slots are taken")
        else:
            try:
                await asyncio.wait_for(sem.acquire(), self.wait_s)
            except TimeoutError:
                raise UploadsFull(
                    f"all {self.capacity} upload slots stayed taken for {self.wait_s} s"
                ) from None
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            sem.release()
