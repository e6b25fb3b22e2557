"""Prometheus metrics of the workers, in prometheus-client's multiprocess mode.

Prefork children each write their samples to files in ``PROMETHEUS_MULTIPROC_DIR``;
the worker's main process serves them all, merged, on ``CAMSEG_WORKER_METRICS_PORT``,
with the queue length read from Redis at each scrape. The directory must be set before
prometheus-client is imported (``camseg worker`` does it), so this module is imported
only in a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)

TASKS = Counter("camseg_job_tasks", "tasks ended, by task name and outcome", ["task", "outcome"])
TASK_SECONDS = Histogram("camseg_job_task_duration_seconds", "task run time", ["task"], buckets=DURATION_BUCKETS)
IMAGES = Counter("camseg_job_images", "images segmented by bulk jobs")
JOB_SECONDS = Histogram("camseg_job_duration_seconds", "job run time, created to finished", ["kind"],
                        buckets=DURATION_BUCKETS)
LAST_SUCCESS = Gauge("camseg_job_last_success_timestamp_seconds", "when a job of this kind last succeeded",
                     ["kind"], multiprocess_mode="max")
EVALUATED_DICE = Gauge("camseg_evaluated_mean_dice", "mean Dice of the last evaluation (chosen on val, test split)",
                       ["model", "version"], multiprocess_mode="mostrecent")

_started: dict[str, float] = {}


def task_started(task_id: str) -> None:
    _started[task_id] = time.perf_counter()


def task_ended(task_id: str, name: str, outcome: str) -> None:
    start = _started.pop(task_id, None)
    TASKS.labels(name, outcome).inc()
    if start is not None:
        TASK_SECONDS.labels(name).observe(time.perf_counter() - start)


def job_finished(summary: dict[str, Any]) -> None:
    kind = str(summary.get("kind", ""))
    JOB_SECONDS.labels(kind).observe(float(summary.get("seconds", 0.0)))
    LAST_SUCCESS.labels(kind).set(time.time())
    labels = summary.get("labels") or {}
    if kind == "evaluate" and labels:
        EVALUATED_DICE.labels(labels.get("model", ""), labels.get("version", "")).set(float(summary["mean_dice"]))


class QueueLength(Collector):
    """``camseg_job_queue_length{queue}``: tasks waiting in Redis, read at scrape time."""

    def __init__(self, redis_url: str, queues: list[str]):
        self.redis_url = redis_url
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import redis

        family = GaugeMetricFamily("camseg_job_queue_length", "tasks waiting in the broker", labels=["queue"])
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            for q in self.queues:
                family.add_metric([q], float(client.llen(q)))
        except redis.exceptions.RedisError as exc:
            logger.warning("queue length not available: %s", exc)
        yield family


def serve(port: int, redis_url: str, queues: list[str], host: str = "127.0.0.1") -> int:
    """Serve the merged metrics of every worker process on ``host``; returns the bound port."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(QueueLength(redis_url, queues))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def process_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)
