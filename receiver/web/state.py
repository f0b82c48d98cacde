"""Everything the receiver needs, built and checked once before it accepts a connection."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from ..model.connectors import Connector
from ..model.plugins import HandlerRegistry
from ..model.routes import Config, load_config
from ..model.signature import SignatureVerifier
from ..settings import Settings
from ..store.connection import connect, connect_async
from ..store.pipeline import Pipeline, build_pipeline
from .metrics import Metrics

Clock = Callable[[], float]


@dataclass
class ReceiverState:
    settings: Settings
    verifier: SignatureVerifier
    pipeline: Pipeline
    redis: AsyncRedis
    sync_redis: Redis
    metrics: Metrics
    clock: Clock
    log_deliveries: bool = True  # Osmos batches: one INFO line per batch
    connectors: Mapping[str, Connector] = field(default_factory=dict)


def build_state(
    settings: Settings,
    *,
    config: Config | None = None,
    registry: HandlerRegistry | None = None,
    clock: Clock = time.time,
) -> ReceiverState:
    """Everything the receiver needs, checked before it accepts a connection."""
    secrets = settings.require_webhook_secrets()
    settings.require_redis_url()
    if registry is None:
        registry = HandlerRegistry.discover(settings.plugins)
    if config is None:
        config = load_config(settings.config_path, registry)
    redis = connect_async(settings, "receiver")
    pipeline = build_pipeline(settings, config, redis)
    sync_redis = connect(settings, "scrape")
    metrics = Metrics()
    metrics.add_job_counts(sync_redis)
    metrics.add_service_state(sync_redis, [settings.queue_name, *(r.queue for r in config.routes if r.queue)])
    return ReceiverState(
        settings=settings,
        verifier=SignatureVerifier(secrets, settings.signature_tolerance),
        pipeline=pipeline,
        redis=redis,
        sync_redis=sync_redis,
        metrics=metrics,
        clock=clock,
        connectors=config.connectors,
    )
