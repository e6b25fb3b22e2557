"""Prometheus metrics of the service (``camseg_`` prefix, base units, bounded labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """One set per server; a registry of its own keeps tests and servers apart."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("camseg_grpc_requests", "RPCs handled, by method and status code",
                                ["rpc", "code"], registry=r)
        self.latency = Histogram("camseg_grpc_request_duration_seconds", "RPC latency", ["rpc"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("camseg_grpc_in_flight_requests", "RPCs in progress", ["rpc"], registry=r)
        self.images = Counter("camseg_images", "images processed, by RPC", ["rpc"], registry=r)
        self.batch_size = Histogram("camseg_batch_size_images", "images per ONNX Runtime batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_time = Histogram("camseg_batch_queue_seconds", "time a Classify waits for its batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.inline_runs = Counter("camseg_batch_inline_runs", "Classify runs made on the event loop (a lone small "
                                   "call: no hand-off to a thread)", registry=r)
        self.model_info = Gauge("camseg_model_info", "loaded model versions (1 = serving)",
                                ["name", "version"], registry=r)
        self.serving = Gauge("camseg_serving", "1 while health reports SERVING; 0 while starting or draining",
                             registry=r)
        self.load_failures = Counter("camseg_model_load_failures", "model versions refused at load",
                                     ["name"], registry=r)
