"""Prometheus metrics of the HTTP labeling service, served at ``GET /metrics``.

Each app gets its own ``CollectorRegistry`` (never the process-global one), so tests and
multi-app processes can build as many apps as they like. Engine counters (cache hits, judge
errors, judge requests, retries) are read from ``engine.stats`` at scrape time, so they count the
same events the batch CLI reports, with no second bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "MetricsMiddleware", "ServiceMetrics"]

# Label jobs take from milliseconds (all cached) to minutes (a slow VLM over many segments).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineStatsCollector(Collector):
    """Counters of ``engine.stats`` as ``densepref_*_total``, read when Prometheus scrapes."""

    _COUNTERS = (
        ("cache_hits", "Judgments answered from the judgment cache."),
        ("judge_errors", "Judge calls that failed after the engine's retries."),
        ("requests", "Judge calls sent (each attempt counts)."),
        ("retries", "Judge calls retried after a transient failure."),
        ("pairs", "Pairs (or inline segment sets) labeled."),
        ("segments", "Segments labeled."),
    )

    def __init__(self, stats: Callable[[], Any]):
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self._stats()
        for field, doc in self._COUNTERS:
            name = "densepref_judge_requests" if field == "requests" else f"densepref_{field}"
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(getattr(stats, field, 0) if stats is not None else 0))
            yield family


class ServiceMetrics:
    """The service's metrics: HTTP requests by endpoint and status, their latency, the label jobs in
    flight, and the engine's counters."""

    def __init__(self, engine_stats: Callable[[], Any], in_flight: Callable[[], float]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "densepref_requests",
            "HTTP requests answered, by endpoint (route template) and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "densepref_request_seconds",
            "Time from request start to the last byte of the response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "densepref_in_flight",
            "Label jobs admitted and not finished (running or queued).",
            registry=self.registry,
        )
        self.in_flight.set_function(in_flight)
        self.registry.register(_EngineStatsCollector(engine_stats))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request until its last response byte (NDJSON streams
    included). The endpoint label is the matched route's template (``/label``), never the raw
    path, so unknown URLs cannot blow up the number of series."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before answering, uvicorn answers 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(endpoint, status, time.perf_counter() - start)
