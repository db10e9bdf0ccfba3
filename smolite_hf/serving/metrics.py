"""`GET /metrics` of `smolite serve`: Prometheus metrics through `prometheus_client`, one registry per app."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

ROUTES = ("/", "/health", "/metrics", "/api/chat", "/v1/models", "/v1/chat/completions")


def route_label(path: str) -> str:
    """The route a path belongs to (a bounded set of label values, whatever clients ask for)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return "other"


class _GeneratedTokens:
    """`smolite_generated_tokens_total`, read from the worker's own count."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        family = CounterMetricFamily("smolite_generated_tokens", "Tokens generated, over all requests.")
        family.add_metric([], self.worker.stats["generated_tokens"])
        yield family


class ServerMetrics:
    """Requests by route and status, generated tokens, running and waiting requests, time to first token and
    request duration."""

    def __init__(self, worker):
        self.registry = CollectorRegistry()
        self.requests = Counter("smolite_requests", "HTTP requests by route and status code.", ["route", "status"],
                                registry=self.registry)
        self.registry.register(_GeneratedTokens(worker))
        Gauge("smolite_running_requests", "Requests being decoded now.",
              registry=self.registry).set_function(lambda: worker.running)
        Gauge("smolite_waiting_requests", "Requests queued for a running slot.",
              registry=self.registry).set_function(lambda: worker.waiting)
        self.time_to_first_token = Histogram(
            "smolite_time_to_first_token_seconds", "From a request's admission to its first generated token.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.request_duration = Histogram(
            "smolite_request_duration_seconds", "From a request's arrival to the end of its response, by route.",
            ["route"], buckets=(0.005, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def first_token(self, job) -> None:
        self.time_to_first_token.observe(job.first_token_at - job.submitted_at)

    def middleware(self, app):
        """An ASGI middleware that counts each response by route and status and times it to its last byte."""

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            started, status = time.perf_counter(), [500]

            async def send_and_note(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                route = route_label(scope["path"])
                self.requests.labels(route, str(status[0])).inc()
                self.request_duration.labels(route).observe(time.perf_counter() - started)

        return counted


__all__ = ["ServerMetrics", "route_label"]
