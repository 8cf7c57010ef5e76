"""Batching across requests: the network calls of concurrent recognitions of one model are
joined into one forward.

Every recognition of a model works inside a :meth:`ForwardBatcher.session`; its network calls
go through the batcher. The first caller of a quiet moment becomes the *leader*: it waits, at
most ``max_delay_s`` after its own call, for the calls of the other sessions of the model (it
stops waiting as soon as every open session has a call in, so a lone request waits for
nothing), takes the waiting calls whose inputs have its own shape, up to ``max_rows`` input
rows (its own call always, whatever its size), runs one forward on their concatenation through
``run`` (the work queue's inference threads), and hands every caller its rows of the output.
The next waiting caller then leads the next batch.

Rows are independent in every family's network in evaluation (no batch statistics), so each
caller gets the rows the network would give it alone, up to the floating-point effects of a
larger batch (tested against unbatched answers under concurrency).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BatchObserver", "ForwardBatcher"]

# Called once per forward: (calls joined, input rows, each call's wait in seconds).
BatchObserver = Callable[[int, int, list[float]], None]


@dataclass(eq=False)
class _Call:
    inputs: Tensor
    enqueued: float
    output: Tensor | None = None
    error: BaseException | None = None
    done: bool = False


class ForwardBatcher:
    """Joins the forward calls of a model's concurrent sessions (see the module docstring).

    Args:
        run: Runs the network on a batch and returns its output (first dimension: rows).
        max_rows: Most input rows in one joined forward (a single larger call runs alone).
        max_delay_s: Longest a leader waits for other sessions' calls after its own.
        observe: Told about every forward (for the metrics).
    """

    def __init__(
        self,
        run: Callable[[Tensor], Tensor],
        *,
        max_rows: int,
        max_delay_s: float,
        observe: BatchObserver | None = None,
    ) -> None:
        if max_rows < 1 or max_delay_s < 0:
            raise ValueError("max_rows must be >= 1 and max_delay_s >= 0")
        self._run = run
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._observe = observe
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._sessions = 0
        self._leading = False

    @contextmanager
    def session(self) -> Iterator[None]:
        """Mark one recognition in progress: a leader waits for calls of open sessions only."""
        with self._cond:
            self._sessions += 1
        try:
            yield
        finally:
            with self._cond:
                self._sessions -= 1
                self._cond.notify_all()

    def __call__(self, inputs: Tensor) -> Tensor:
        """The network's output for ``inputs``, computed in a batch with other sessions' calls."""
        call = _Call(inputs, time.perf_counter())
        with self._cond:
            self._pending.append(call)
            self._cond.notify_all()
            while not call.done and (self._leading or self._pending[0] is not call):
                self._cond.wait()
            if call.done:
                return _result(call)
            self._leading = True
        batch: list[_Call] = [call]
        try:
            batch = self._gather(call)
            started = time.perf_counter()
            joined = batch[0].inputs if len(batch) == 1 else torch.cat([c.inputs for c in batch])
            output = self._run(joined)
            if output.shape[0] != joined.shape[0]:
                raise RuntimeError(
                    f"the network gave {output.shape[0]} rows for {joined.shape[0]} inputs"
                )
            start = 0
            for c in batch:
                rows = c.inputs.shape[0]
                c.output = output[start : start + rows]
                start += rows
            if self._observe is not None:
                waits = [started - c.enqueued for c in batch]
                self._observe(len(batch), int(joined.shape[0]), waits)
        except BaseException as err:  # every caller of the batch gets the error
            for c in batch:
                c.error = err
        finally:
            with self._cond:
                for c in batch:
                    c.done = True
                    if c in self._pending:
                        self._pending.remove(c)
                self._leading = False
                self._cond.notify_all()
        return _result(call)

    def _gather(self, leader: _Call) -> list[_Call]:
        """The calls joining ``leader``'s forward, taken out of the waiting list."""
        deadline = leader.enqueued + self.max_delay_s
        with self._cond:
            while True:
                fitting = self._fitting(leader)
                rows = sum(c.inputs.shape[0] for c in fitting)
                everyone_in = len(self._pending) >= self._sessions
                left = deadline - time.perf_counter()
                if rows >= self.max_rows or everyone_in or left <= 0:
                    break
                self._cond.wait(left)
            for c in fitting:
                self._pending.remove(c)
            return fitting

    def _fitting(self, leader: _Call) -> list[_Call]:
        """Waiting calls of the leader's input shape and type, in arrival order, within
        ``max_rows`` rows; the leader's own first."""
        shape, dtype = leader.inputs.shape[1:], leader.inputs.dtype
        chosen = [leader]
        rows = leader.inputs.shape[0]
        for c in self._pending:
            if c is leader or c.inputs.shape[1:] != shape or c.inputs.dtype != dtype:
                continue
            if rows + c.inputs.shape[0] > self.max_rows:
                break
            chosen.append(c)
            rows += c.inputs.shape[0]
        return chosen


def _result(call: _Call) -> Tensor:
    if call.error is not None:
        raise call.error
    assert call.output is not None
    return call.output
