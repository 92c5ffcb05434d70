"""The service's Prometheus metrics, in a registry of its own (so two apps in one process, as in
the benchmark, never share or clash over counters).

Names follow Prometheus conventions: `_total` counters, `_seconds` histograms, base units.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Latency buckets from 1 ms to 10 s: a single small image takes a few ms, a deadline is 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """Counters, gauges and histograms the app, the limits and the batcher update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "imgclf_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "imgclf_request_duration_seconds",
            "Time from the request's arrival to its last response byte, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "imgclf_batch_size",
            "Images per engine call",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "imgclf_batch_duration_seconds",
            "Time of one engine call",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "imgclf_queue_depth",
            "Images decoded and waiting for the engine",
            registry=registry,
        )
        self.in_flight = Gauge(
            "imgclf_requests_in_flight",
            "Prediction and search requests admitted and not yet answered",
            registry=registry,
        )
        self.images = Counter(
            "imgclf_images",
            "Images received by /predict and /search",
            registry=registry,
        )
        self.inference_restarts = Counter(
            "imgclf_inference_restarts",
            "Inference processes replaced after dying on an image, by reason",
            ["reason"],
            registry=registry,
        )
        self.images_failed = Counter(
            "imgclf_images_failed",
            "Images that could not be classified, by reason (the downloader's reason words)",
            ["reason"],
            registry=registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
