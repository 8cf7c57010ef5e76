"""Graceful shutdown: the drain of in-flight requests, and the uvicorn server that runs it.

On SIGTERM (or the first SIGINT) :class:`DrainingServer` does not stop at once, as uvicorn
does: it starts the app's :class:`Drain` (``/readyz`` answers 503, a new request 503
``shutting_down`` with Retry-After), waits until the requests in flight have finished or
``shutdown_grace_s`` has passed, and only then lets uvicorn close the listener and exit, with
status 0. A second signal stops it at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

__all__ = ["PROBE_PATHS", "Drain", "DrainingServer"]

log = logging.getLogger(__name__)

# Answered during a drain as always (an orchestrator polls them), and not waited for.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Drain:
    """Requests in flight, and whether new ones are still taken. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._draining = False
        self._in_flight = 0
        self._idle = threading.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def begin(self) -> None:
        """Take no new requests from now on."""
        with self._lock:
            self._draining = True

    def enter(self) -> bool:
        """Count one request in; ``False`` (not counted) once draining."""
        with self._lock:
            if self._draining:
                return False
            self._in_flight += 1
            self._idle.clear()
            return True

    def leave(self) -> None:
        """Count one request (that :meth:`enter` took) out."""
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; ``False`` if ``timeout`` passed first."""
        return self._idle.wait(timeout)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before it stops (see the module docstring).

    Args:
        config: The uvicorn config.
        drain: The app's drain.
        grace_s: Longest wait for the requests in flight.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s
        self._drainer: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it records the signal to raise it again after the shutdown, which
        # would end the process by SIGTERM (status 143) instead of exiting 0.
        if self._drainer is not None:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = True
            return
        log.info(
            "%s: draining (%d requests in flight, up to %.0f s)",
            signal.Signals(sig).name,
            self.drain.in_flight,
            self.grace_s,
        )
        self.drain.begin()
        self._drainer = threading.Thread(target=self._drain, name="actrec-drain", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        started = time.monotonic()
        if self.drain.wait_idle(self.grace_s):
            log.info("drained in %.1f s; stopping", time.monotonic() - started)
        else:
            log.warning(
                "shutdown_grace_s=%.0f s passed with %d requests in flight; stopping",
                self.grace_s,
                self.drain.in_flight,
            )
        self.should_exit = True
