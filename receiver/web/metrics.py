"""Prometheus metrics. Receivers count deliveries in process; workers count jobs in
Redis (in the round trip that records the job's outcome), and every receiver's
`/metrics` reports those, so one scrape target covers the whole service.

Queue depths, registry sizes and live workers are read from Redis at scrape time; so
are the upstream calls and rate-limit waits that workers count with
`count_upstream_call` and `count_rate_limit_wait`.

With `serve --workers N` (N > 1) each uvicorn worker is its own process: prometheus-client's
multiprocess mode then keeps every process's counters and histograms in files under
PROMETHEUS_MULTIPROC_DIR (`serve` makes a fresh one) and a scrape, whichever process
answers it, adds them all up. `Metrics.registry` handles both modes: register metrics in
it as usual.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis import Redis

from ..keys import JOB_COUNTS_KEY, RATE_LIMIT_WAITS_KEY, UPSTREAM_CALLS_KEY
from ..store.queues import live_worker_keys, queue_counts

disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Receiver answers take about a millisecond; the top buckets catch Redis trouble.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_mode() -> bool:
    """Whether this process writes its metric values to PROMETHEUS_MULTIPROC_DIR.

    prometheus-client decides once, when it is imported, from the environment."""
    return values.ValueClass is not values.MutexValue


class ScrapeRegistry(CollectorRegistry):
    """What `/metrics` renders. In multiprocess mode, metrics made in this process are
    read back from the files with every other process's (one `MultiProcessCollector`),
    so registering them directly as well would count this process twice."""

    def __init__(self) -> None:
        super().__init__()
        self.multiprocess = multiprocess_mode()
        if self.multiprocess:
            directory = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower(), "")
            Path(directory).mkdir(parents=True, exist_ok=True)
            MultiProcessCollector(self, path=directory)  # type: ignore[no-untyped-call]

    def register(self, collector: Collector) -> None:
        if self.multiprocess and isinstance(collector, MetricWrapperBase):
            return
        super().register(collector)


class Metrics:
    def __init__(self) -> None:
        self.registry = ScrapeRegistry()
        self.deliveries = Counter(
            "osma_router_deliveries",
            "Deliveries received, by source and outcome (accepted, duplicate, rejected).",
            ["source", "outcome"],
            registry=self.registry,
        )
        # Why, where there is a why: a rejection's error type, and `other_mode` for an
        # accepted event whose `live_mode` kept it from a matching route. Its own family,
        # so `osma_router_deliveries_total` has exactly the labels the contract names.
        self.delivery_reasons = Counter(
            "osma_router_delivery_reasons",
            "Deliveries with a reason, by source, outcome and reason (a rejection's error type; "
            "other_mode: accepted, but live_mode kept it from a matching route).",
            ["source", "outcome", "reason"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "osma_router_delivery_duration_seconds",
            "Time the receiver took to answer a delivery, by source (every outcome).",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def rejected(self, source: str, error_type: str) -> None:
        self.deliveries.labels(source, "rejected").inc()
        self.delivery_reasons.labels(source, "rejected", error_type).inc()

    def add_job_counts(self, redis: Redis) -> None:
        self.registry.register(JobCounts(redis))

    def add_service_state(self, redis: Redis, queues: Iterable[str]) -> None:
        """Queue depths, registries, workers, upstream calls and rate-limit waits, from Redis."""
        self.registry.register(ServiceState(redis, queues))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JobCounts(Collector):
    """`osma_router_jobs_total{handler, outcome}` as counted by every worker."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "osma_router_jobs",
            "Handler jobs run by the workers, by handler and outcome.",
            labels=["handler", "outcome"],
        )
        try:
            counts = self.redis.hgetall(JOB_COUNTS_KEY)
        except Exception:  # a scrape must not fail because Redis is away
            counts = {}
        for field, value in sorted(counts.items()):
            name = field.decode() if isinstance(field, bytes) else field
            handler, _, outcome = name.rpartition("|")
            family.add_metric([handler, outcome], float(value))
        yield family


class ServiceState(Collector):
    """Gauges and worker-side counters read from Redis at scrape time (two round trips)."""

    def __init__(self, redis: Redis, queues: Iterable[str]) -> None:
        self.redis = redis
        self.queues = tuple(queues)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        up = GaugeMetricFamily("osma_router_redis_up", "1 when Redis answered this scrape, else 0.")
        try:
            counts = queue_counts(self.redis, self.queues)
            workers = len(live_worker_keys(self.redis))
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(UPSTREAM_CALLS_KEY)
            pipe.hgetall(RATE_LIMIT_WAITS_KEY)
            upstream, waits = pipe.execute()
        except Exception:  # a scrape must not fail because Redis is away
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        depth = GaugeMetricFamily(
            "osma_router_queue_depth", "Jobs waiting to run, by queue.", labels=["queue"]
        )
        registry = GaugeMetricFamily(
            "osma_router_queue_jobs",
            "Jobs in a queue's RQ registries: started (running), scheduled (retry pending), "
            "failed (dead letter), deferred.",
            labels=["queue", "registry"],
        )
        for queue in counts:
            depth.add_metric([queue.name], float(queue.queued))
            for name, value in queue.registries.items():
                registry.add_metric([queue.name, name], float(value))
        yield depth
        yield registry
        alive = GaugeMetricFamily("osma_router_workers", "Workers alive (heartbeat in Redis).")
        alive.add_metric([], float(workers))
        yield alive
        calls = CounterMetricFamily(
            "osma_router_upstream_calls",
            "Calls to upstream APIs by the workers, by upstream and status.",
            labels=["upstream", "status"],
        )
        for field, value in sorted(upstream.items()):
            name, _, status = field.decode().rpartition("|")
            calls.add_metric([name, status], float(value))
        yield calls
        wait_count = CounterMetricFamily(
            "osma_router_rate_limit_waits",
            "Times a worker waited for an upstream's rate budget.",
            labels=["upstream"],
        )
        wait_seconds = CounterMetricFamily(
            "osma_router_rate_limit_wait_seconds",
            "Seconds workers spent waiting for rate budgets.",
            labels=["upstream"],
        )
        for field, value in sorted(waits.items()):
            name, _, kind = field.decode().rpartition("|")
            (wait_count if kind == "waits" else wait_seconds).add_metric([name], float(value))
        yield wait_count
        yield wait_seconds


@contextmanager
def multiprocess_directory(workers: int) -> Iterator[Path | None]:
    """Set up PROMETHEUS_MULTIPROC_DIR for `serve --workers N` before the workers start.

    With one worker nothing changes (in-process values, cheapest). With several, a fresh
    private directory is made and removed afterwards; an operator's own
    PROMETHEUS_MULTIPROC_DIR is used as given, emptied of old value files first."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # values of a previous run would be added up
            stale.unlink(missing_ok=True)
        yield path
        return
    if workers <= 1:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="osma-router-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
