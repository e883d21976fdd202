"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

fastft_requests_total{route,code}            answered requests
fastft_errors_total{route,code}              answered with an error status (4xx/5xx)
fastft_request_duration_seconds{route}       handler time, request read to response built
fastft_queue_duration_seconds                submit -> a worker picks the request up
fastft_inference_duration_seconds            one ONNX Runtime call
fastft_batch_size                            texts per ONNX Runtime call
fastft_batch_tokens                          padded tokens per ONNX Runtime call
fastft_requests_per_batch                    requests merged into one worker round
fastft_real_tokens_total / fastft_padded_tokens_total, fastft_padding_efficiency
fastft_in_flight_requests, fastft_queue_requests, fastft_ready, fastft_truncated_texts_total
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401 - re-exported for the routes
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServeMetrics:
    def __init__(self, model: str = "model"):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("fastft_requests", "Answered HTTP requests", ["route", "code"], registry=r)
        self.errors = Counter("fastft_errors", "Requests answered with an error status", ["route", "code"], registry=r)
        self.request_seconds = Histogram(
            "fastft_request_duration_seconds", "Time in the request handler", ["route"], buckets=_LATENCY, registry=r
        )
        self.queue_seconds = Histogram(
            "fastft_queue_duration_seconds", "Time a request waits for a worker", buckets=_LATENCY, registry=r
        )
        self.inference_seconds = Histogram(
            "fastft_inference_duration_seconds", "One ONNX Runtime call", buckets=_LATENCY, registry=r
        )
        self.batch_size = Histogram("fastft_batch_size", "Texts per ONNX Runtime call", buckets=_SIZES, registry=r)
        self.batch_tokens = Histogram(
            "fastft_batch_tokens", "Padded tokens per ONNX Runtime call", buckets=_TOKENS, registry=r
        )
        self.requests_per_batch = Histogram(
            "fastft_requests_per_batch", "Requests merged into one worker round", buckets=_SIZES, registry=r
        )
        self.real_tokens = Counter("fastft_real_tokens", "Tokens of the texts run", registry=r)
        self.padded_tokens = Counter("fastft_padded_tokens", "Tokens run including padding", registry=r)
        self.padding_efficiency = Gauge(
            "fastft_padding_efficiency", "Real tokens / padded tokens since start (1.0 = no padding)", registry=r
        )
        self.truncated = Counter("fastft_truncated_texts", "Texts cut at the model's max length", registry=r)
        self.connections_closed = Counter(
            "fastft_connections_closed",
            "Connections the server closed before a request: head_timeout (408), over_limit (503 at once), "
            "malformed (a request HTTP cannot parse: 400/431)",
            ["reason"],
            registry=r,
        )
        self.in_flight = Gauge("fastft_in_flight_requests", "Requests being handled", registry=r)
        self.queued = Gauge("fastft_queue_requests", "Requests waiting for a worker", registry=r)
        self.ready = Gauge("fastft_ready", "1 once the model is loaded and warmed up", registry=r)
        self.info = Gauge("fastft_model_info", "The served model", ["model", "file", "workers", "threads"], registry=r)
        self._lock = threading.Lock()
        self._real = 0
        self._padded = 0
        self.padding_efficiency.set(1.0)

    # called from worker threads
    def observe_call(self, texts: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self.inference_seconds.observe(seconds)
        self.batch_size.observe(texts)
        self.batch_tokens.observe(padded_tokens)
        self.real_tokens.inc(real_tokens)
        self.padded_tokens.inc(padded_tokens)
        with self._lock:
            self._real += real_tokens
            self._padded += padded_tokens
            self.padding_efficiency.set(self._real / self._padded if self._padded else 1.0)

    def observe_request(self, route: str, code: int, seconds: float | None = None) -> None:
        self.requests.labels(route, str(code)).inc()
        if code >= 400:
            self.errors.labels(route, str(code)).inc()
        if seconds is not None:
            self.request_seconds.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
