"""The bounded work queue: admission, decode slots and inference slots.

A request reserves a :class:`Ticket` before its upload is read; at most ``capacity`` tickets
exist at once and one more is refused (503 with Retry-After), so load never piles up without
bound. The request's job (decode, then inference) runs on a thread pool of ``capacity``
threads, off the event loop; the threads wait for one of ``decode_slots`` decode slots and
one of ``infer_slots`` inference threads, so concurrent requests never oversubscribe the
cores. Inference runs on those few dedicated threads rather than on the job threads: the
runtimes keep per-thread scratch memory, which would otherwise grow with every job thread.
A ticket is returned when its job finishes (or never starts), not when the request gives up,
so a timed-out request still counts against capacity until its thread is free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["QueueFull", "Ticket", "WorkQueue"]

T = TypeVar("T")


class QueueFull(Exception):
    """Every admission ticket is taken."""


class Ticket:
    """One admitted request; released exactly once."""

    def __init__(self, queue: WorkQueue) -> None:
        self._queue = queue
        self._released = False
        self._owned_by_job = False
        self._lock = threading.Lock()

    def release(self) -> None:
        """Give the ticket back unless a submitted job owns it (the job gives it back)."""
        if not self._owned_by_job:
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._queue._returned()


class WorkQueue:
    """Bounded admission plus decode and inference slots.

    Args:
        capacity: Requests admitted at once.
        decode_slots: Decodes running at once.
        infer_slots: Inferences running at once.
    """

    def __init__(self, capacity: int, decode_slots: int, infer_slots: int) -> None:
        if min(capacity, decode_slots, infer_slots) < 1:
            raise ValueError("capacity and slots must be >= 1")
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="actrec-job")
        self._decode = threading.BoundedSemaphore(decode_slots)
        self._infer = ThreadPoolExecutor(max_workers=infer_slots, thread_name_prefix="actrec-infer")
        self._lock = threading.Lock()
        self._taken = 0

    @property
    def depth(self) -> int:
        """Tickets taken now (requests uploading, waiting, decoding or inferring)."""
        return self._taken

    def reserve(self) -> Ticket:
        """Admit one request.

        Raises:
            QueueFull: ``capacity`` tickets are already taken.
        """
        with self._lock:
            if self._taken >= self.capacity:
                raise QueueFull(f"{self._taken} requests in progress, the limit is {self.capacity}")
            self._taken += 1
        return Ticket(self)

    def _returned(self) -> None:
        with self._lock:
            self._taken -= 1

    def submit(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the pool; ``ticket`` is returned when it finishes or is cancelled.

        Must be called from the event loop; the returned future belongs to it.
        """
        ticket._owned_by_job = True
        try:
            future: Future[T] = self._executor.submit(fn, *args)
        except BaseException:
            ticket._release()
            raise
        future.add_done_callback(lambda _: ticket._release())
        return asyncio.wrap_future(future)

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Hold a decode slot (call from a job thread)."""
        with self._decode:
            yield

    def infer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on an inference thread and wait for it (call from a job thread)."""
        return self._infer.submit(fn, *args).result()

    def shutdown(self) -> None:
        """Stop taking jobs; queued jobs that have not started are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._infer.shutdown(wait=False, cancel_futures=True)
