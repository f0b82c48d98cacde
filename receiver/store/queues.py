"""What is waiting in Redis: queue depths, RQ's job registries and live workers.

Read in two round trips whatever the number of queues, for `/metrics` (at scrape
time) and for `osma-router status`. Key names come from RQ's own classes, so they
follow RQ if it renames them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis import Redis
from rq.queue import Queue
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.worker_registration import REDIS_WORKER_KEYS

REGISTRIES = {
    "started": StartedJobRegistry.key_template,
    "scheduled": ScheduledJobRegistry.key_template,
    "failed": FailedJobRegistry.key_template,
    "deferred": DeferredJobRegistry.key_template,
}


@dataclass(frozen=True)
class QueueCounts:
    """One queue: jobs waiting to run, and the size of each of its registries."""

    name: str
    queued: int
    registries: dict[str, int]


def queue_names(redis: Redis, configured: Iterable[str] = ()) -> list[str]:
    """The configured queues and every queue RQ has registered in Redis."""
    prefix = Queue.redis_queue_namespace_prefix
    names = set(configured)
    for key in redis.smembers(Queue.redis_queues_keys):
        text = key.decode() if isinstance(key, bytes) else str(key)
        names.add(text.removeprefix(prefix))
    return sorted(names)


def queue_counts(redis: Redis, configured: Iterable[str] = ()) -> list[QueueCounts]:
    """Depth and registry sizes of every queue (see `queue_names`)."""
    names = queue_names(redis, configured)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.llen(Queue.redis_queue_namespace_prefix + name)
        for template in REGISTRIES.values():
            pipe.zcard(template.format(name))
    values = iter(pipe.execute())
    result = []
    for name in names:
        queued = int(next(values))
        registries = {registry: int(next(values)) for registry in REGISTRIES}
        result.append(QueueCounts(name, queued, registries))
    return result


def live_worker_keys(redis: Redis) -> list[str]:
    """Workers whose key has not expired: each renews it while alive (RQ's worker TTL)."""
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in redis.smembers(REDIS_WORKER_KEYS))
    if not keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [key for key, alive in zip(keys, pipe.execute(), strict=True) if alive]
