"""Prometheus metrics: request counts and latencies by route, plus queue depth and job durations.

Each app gets its own registry (tests build many apps in one process). Job durations are measured by
the workers, which may live on other machines, so they accumulate in Redis and are read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.admission import ModelGate
from app.fleet import FleetStatus
from core.store import JOB_DURATION_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Metric = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "atelier_http_requests",
            "HTTP requests by route, status and API key (a short hash of it; 'none' without one).",
            ["method", "route", "status", "key"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "atelier_http_request_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

        self.webhook_attempts = Counter(
            "atelier_webhook_attempts",
            "Webhook deliveries this API process tried, by outcome: delivered (2xx), retry (will be "
            "tried again) or failed (given up).",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/jobs/{job_id}``), so label cardinality stays bounded.

    The router records the matched route in the scope, which the middleware sees after the call.
    """
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})  # the auth dependency records the caller's key id here

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = route_template(scope)
            method = scope.get("method", "GET")
            key_id = state.get("api_key_id", "none")
            self.metrics.requests.labels(method, route, str(status), key_id).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


class CallbackCollector(Collector):
    """Adapts a function returning metric families into a prometheus collector."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def job_duration_family(raw: dict[bytes, bytes]) -> HistogramMetricFamily:
    """Build the job-duration histogram from the counters workers keep in a Redis hash."""
    family = HistogramMetricFamily(
        "atelier_job_duration_seconds", "Gatys job run time by final state.", labels=["state"]
    )
    states = sorted({k.decode().split(":", 1)[1] for k in raw if k.startswith(b"count:")})
    for state in states:
        buckets = []
        for bound in JOB_DURATION_BUCKETS:
            buckets.append((str(float(bound)), float(raw.get(f"le:{bound}:{state}".encode(), 0))))
        count = float(raw.get(f"count:{state}".encode(), 0))
        buckets.append(("+Inf", count))
        family.add_metric([state], buckets, float(raw.get(f"sum:{state}".encode(), 0.0)))
    return family


def gate_families(gates: Mapping[str, ModelGate]) -> list[Metric]:
    """The synchronous models' waiting lines: requests unanswered now, and requests shed so far."""
    pending = GaugeMetricFamily(
        "atelier_model_pending_requests", "Requests waiting for or running on a model.", labels=["model"]
    )
    shed = CounterMetricFamily(
        "atelier_model_shed_requests",
        "Requests refused (overloaded: 503) or cut off (deadline: 504) before the model answered.",
        labels=["model", "reason"],
    )
    for name, gate in gates.items():
        pending.add_metric([name], gate.pending)
        for reason, count in gate.shed.items():
            shed.add_metric([name, reason], count)
    return [pending, shed]


def fleet_families(fleet: FleetStatus) -> list[Metric]:
    """Live workers (fresh heartbeat) and, per supervisor, worker restarts and crash-looping slots."""
    alive = GaugeMetricFamily("atelier_workers_alive", "Workers of this queue with a fresh heartbeat.")
    alive.add_metric([], len(fleet.alive))
    restarts = CounterMetricFamily(
        "atelier_worker_restarts", "Dead workers restarted by a supervisor.", labels=["supervisor"]
    )
    looping = GaugeMetricFamily(
        "atelier_workers_crash_looping",
        "Worker slots whose process keeps dying soon after each restart.",
        labels=["supervisor"],
    )
    for report in fleet.reports:
        restarts.add_metric([report.id], report.worker_restarts)
        looping.add_metric([report.id], report.crash_looping)
    return [alive, restarts, looping]
