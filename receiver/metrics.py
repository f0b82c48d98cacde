"""Prometheus metrics. Receivers count deliveries in process; workers count jobs in
Redis (in the round trip that records the job's outcome), and every receiver's
`/metrics` reports those, so one scrape target covers the whole service."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from redis import Redis

disable_created_metrics()

JOB_COUNTS_KEY = "osma_router:metrics:jobs"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "osma_router_deliveries",
            "Deliveries received, by source and outcome (accepted, duplicate, rejected).",
            ["source", "outcome", "reason"],
            registry=self.registry,
        )

    def add_job_counts(self, redis: Redis) -> None:
        self.registry.register(JobCounts(redis))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JobCounts(Collector):
    """`osma_router_jobs_total{handler, outcome}` as counted by every worker."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "osma_router_jobs", "Handler jobs run by the workers, by handler and outcome.",
            labels=["handler", "outcome"],
        )
        try:
            counts = self.redis.hgetall(JOB_COUNTS_KEY)
        except Exception:  # a scrape must not fail because Redis is away
            counts = {}
        for field, value in sorted(counts.items()):
            handler, _, outcome = field.decode().rpartition("|")
            family.add_metric([handler, outcome], float(value))
        yield family


def job_count_field(handler: str, outcome: str) -> str:
    return f"{handler}|{outcome}"
