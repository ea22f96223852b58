"""The server's Prometheus metrics (GET /metrics, text format), in a registry of the app's own.

- rapidpose_requests_total{endpoint, code}: answered requests by endpoint and HTTP status (413s and
  500s included: they are counted where the answer leaves);
- rapidpose_request_seconds: POST /predict, from the request's arrival to its answer;
- rapidpose_batch_size: images per model call: above 1, requests of several clients shared a call;
- rapidpose_batch_seconds: the time of one model call (detect and pose of a batch);
- rapidpose_batch_failures_total: model calls that raised (their requests got 500);
- rapidpose_queue_depth: requests waiting for a worker, read when scraped.
"""
from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/predict", "/info", "/health", "/metrics")  # others are counted as "other": a label per
# mistyped path would grow the registry without end
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The metrics of one app. queue_depth: a function that tells the number of waiting requests."""

    def __init__(self, queue_depth: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.requests = Counter("rapidpose_requests", "Answered requests by endpoint and HTTP status code",
                                ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("rapidpose_request_seconds", "POST /predict: seconds from arrival to answer",
                                 buckets=SECONDS, registry=self.registry)
        self.batch_size = Histogram("rapidpose_batch_size", "Images per model call (dynamic batching)",
                                    buckets=BATCH_SIZES, registry=self.registry)
        self.batch_seconds = Histogram("rapidpose_batch_seconds", "Seconds per model call (detect and pose)",
                                       buckets=SECONDS, registry=self.registry)
        self.batch_failures = Counter("rapidpose_batch_failures", "Model calls that raised",
                                      registry=self.registry)
        depth = Gauge("rapidpose_queue_depth", "Requests waiting for a worker", registry=self.registry)
        depth.set_function(queue_depth)

    def batch(self, size: int, seconds: float, failed: bool) -> None:
        """Batcher's on_batch: one model call done."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        if failed:
            self.batch_failures.inc()

    def answered(self, path: str, code: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, str(code)).inc()
        if endpoint == "/predict":
            self.latency.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountAnswers:
    """ASGI middleware, outermost: each HTTP answer's status and time go to `metrics` (an exception that
    escapes every handler is counted as the 500 the server then sends)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self.metrics.answered(scope["path"], status, time.perf_counter() - start)
