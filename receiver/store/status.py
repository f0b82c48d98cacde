"""`osma-router status`: what the service holds in Redis right now, as tables.

Queue depths and registries (running, scheduled retries, failed), the workers alive,
how many event ids the dedup window remembers, and how many deliveries capture keeps.
Dedup keys are counted with SCAN in bounded steps (never KEYS, which blocks Redis):
past the time budget the count is a lower bound and says so.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq.serializers import JSONSerializer
from rq.worker import Worker

from ..keys import SEEN_PATTERN, SEEN_PREFIX
from ..settings import Settings
from .capture import count_captures
from .queues import QueueCounts, queue_counts

SCAN_COUNT = 1000
SCAN_BUDGET = 5.0


@dataclass
class DedupCount:
    """Event ids remembered per source; `complete` is False when the scan ran out of time."""

    by_source: dict[str, int]
    complete: bool
    scanned_in: float


@dataclass
class WorkerRow:
    name: str
    host: str
    pid: int | None
    state: str
    current_job: str
    last_heartbeat: str
    succeeded: int
    failed: int


@dataclass
class Status:
    """Everything `status` prints."""

    redis: dict[str, str]
    queues: list[QueueCounts]
    workers: list[WorkerRow]
    dedup: DedupCount
    capture: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def count_dedup_keys(redis: Redis, budget: float = SCAN_BUDGET, count: int = SCAN_COUNT) -> DedupCount:
    """Count `seen` keys with SCAN, `count` keys a step, for at most `budget` seconds."""
    started = time.monotonic()
    by_source: Counter[str] = Counter()
    cursor = 0
    prefix = len(SEEN_PREFIX)
    while True:
        cursor, keys = redis.scan(cursor=cursor, match=SEEN_PATTERN, count=count)
        for key in keys:
            text = key.decode() if isinstance(key, bytes) else str(key)
            by_source[text[prefix:].split(":", 1)[0]] += 1
        if cursor == 0:
            return DedupCount(dict(by_source), True, time.monotonic() - started)
        if time.monotonic() - started > budget:
            return DedupCount(dict(by_source), False, time.monotonic() - started)


def collect_status(
    redis: Redis, settings: Settings, configured_queues: list[str], scan_budget: float = SCAN_BUDGET
) -> Status:
    """Read the service's state from Redis (a handful of round trips and one bounded SCAN)."""
    info = redis.info()
    redis_info = {
        "version": str(info.get("redis_version", "?")),
        "memory": str(info.get("used_memory_human", "?")),
        "aof": "on" if info.get("aof_enabled") else "off",
    }
    return Status(
        redis=redis_info,
        queues=queue_counts(redis, configured_queues),
        workers=_workers(redis),
        dedup=count_dedup_keys(redis, scan_budget),
        capture={"enabled": settings.capture, "kept": count_captures(redis)},
        warnings=durability_warnings(info),
    )


def durability_warnings(info: dict[str, Any]) -> list[str]:
    """What in the Redis's persistence breaks the promises that rest on it (docs/operations.md,
    "Durability"): without the AOF a restart forgets the ledger's intents and the dedup marks."""
    if info.get("aof_enabled"):
        return []
    return [
        "Redis runs with appendonly no: a restart loses the effects ledger's intents and the dedup "
        "marks since the last snapshot (set appendonly yes, appendfsync always)"
    ]


def _workers(redis: Redis) -> list[WorkerRow]:
    rows = []
    for worker in sorted(Worker.all(connection=redis, serializer=JSONSerializer), key=lambda w: w.name):
        beat = worker.last_heartbeat
        rows.append(
            WorkerRow(
                name=worker.name,
                host=str(worker.hostname or "-"),
                pid=worker.pid,
                state=str(worker.get_state() or "-"),
                current_job=worker.get_current_job_id() or "-",
                last_heartbeat=_age(beat),
                succeeded=int(worker.successful_job_count or 0),
                failed=int(worker.failed_job_count or 0),
            )
        )
    return rows


def _age(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{max(0.0, (datetime.now(UTC) - moment).total_seconds()):.0f} s ago"
