"""Prometheus metrics (prometheus_client), in a registry of the app's own so two apps in one
process (the tests, the benchmark) never share counters."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("stratalm_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.tokens = Counter("stratalm_generated_tokens", "tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter("stratalm_prompt_tokens", "prompt tokens read", ["model"], registry=r)
        self.cancels = Counter("stratalm_cancelled_sequences", "sequences cancelled before they finished "
                               "(client gone, timeout, shutdown)", ["model"], registry=r)
        self.waiting = Gauge("stratalm_waiting_sequences", "sequences in the queue", ["model"], registry=r)
        self.running = Gauge("stratalm_running_sequences", "sequences in the decode batch", ["model"], registry=r)
        self.batch_size = Histogram("stratalm_decode_batch_size", "sequences fed per decode step", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.first_token = Histogram("stratalm_time_to_first_token_seconds", "from request to first token",
                                     ["model"], registry=r)

    def token(self, model: str) -> None:
        self.tokens.labels(model).inc()

    def cancelled(self, model: str) -> None:
        self.cancels.labels(model).inc()

    def queue(self, model: str, waiting: int, running: int) -> None:
        self.waiting.labels(model).set(waiting)
        self.running.labels(model).set(running)

    def batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
