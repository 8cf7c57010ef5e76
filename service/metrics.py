"""Prometheus metrics of one app, on its own registry (so several apps can live in one process).

Exposed at ``GET /metrics``; ``docs/service.md`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Seconds; covers a tiny clip on a GPU to a long video on a busy CPU.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The service's collectors, registered on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "actrec_requests_total",
            "Answered HTTP requests",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "actrec_request_seconds",
            "Whole-request latency",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "actrec_decode_seconds", "Video decode time", ["model"], buckets=_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "actrec_inference_seconds",
            "Sampling, network and aggregation time",
            ["model", "backend"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "actrec_batch_requests",
            "Requests joined in one network forward (batching across requests)",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
            registry=r,
        )
        self.batch_inputs = Histogram(
            "actrec_batch_inputs",
            "Network inputs (clips, segments, walks) in one forward",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_wait_seconds = Histogram(
            "actrec_batch_wait_seconds",
            "Wait of a network call from its submission to its forward's start",
            ["model"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.queue_depth = Gauge("actrec_queue_depth", "Admitted requests in progress", registry=r)
        self.queue_capacity = Gauge(
            "actrec_queue_capacity", "Most requests admitted at once", registry=r
        )
        self.rejected = Counter(
            "actrec_rejected_total", "Requests refused for load", ["reason"], registry=r
        )
        self.models_loaded = Gauge("actrec_models_loaded", "Models loaded and warm", registry=r)
        self.model_info = Gauge(
            "actrec_model_info", "One per loaded model", ["model", "family", "backend"], registry=r
        )

    def watch_queue(self, depth: Callable[[], int], capacity: int) -> None:
        """Read the queue depth at scrape time."""
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
