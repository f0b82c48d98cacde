"""`osma-router status`: what the service holds in Redis right now, as tables.

Queue depths and registries (running, scheduled retries, failed), the workers alive,
how many event ids the dedup window remembers, and how many deliveries capture keeps.
Dedup keys are counted with SCAN in bounded steps (never KEYS, which blocks Redis):
past the time budget the count is a lower bound and says so.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis

from ..settings import Settings
from .dedup import KEY_PREFIX
from .queues import QueueCounts, queue_counts

SEEN_PATTERN = f"{KEY_PREFIX}:seen:*"
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


def count_dedup_keys(redis: Redis, budget: float = SCAN_BUDGET, count: int = SCAN_COUNT) -> DedupCount:
    """Count `seen` keys with SCAN, `count` keys a step, for at most `budget` seconds."""
    started = time.monotonic()
    by_source: Counter[str] = Counter()
    cursor = 0
    prefix = len(KEY_PREFIX) + len(":seen:")
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
    from .capture import CAPTURE_KEY

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
        capture={"enabled": settings.capture, "kept": int(redis.zcard(CAPTURE_KEY))},
    )


def _workers(redis: Redis) -> list[WorkerRow]:
    from rq.serializers import JSONSerializer
    from rq.worker import Worker

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


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table: text columns left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [
        [f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int) for r in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render(status: Status, redis_url: str) -> str:
    heading = (
        f"redis    {redis_url}  (Redis {status.redis['version']}, {status.redis['memory']} used, "
        f"AOF {status.redis['aof']})"
    )
    out = [heading, ""]
    out.append(
        render_table(
            ["QUEUE", "QUEUED", "RUNNING", "SCHEDULED", "FAILED", "DEFERRED"],
            [
                [
                    q.name,
                    q.queued,
                    q.registries["started"],
                    q.registries["scheduled"],
                    q.registries["failed"],
                    q.registries["deferred"],
                ]
                for q in status.queues
            ],
        )
    )
    out.append("")
    out.append(f"workers  {len(status.workers)} alive")
    if status.workers:
        out.append(
            render_table(
                ["NAME", "HOST", "PID", "STATE", "CURRENT JOB", "HEARTBEAT", "OK", "FAILED"],
                [
                    [
                        w.name,
                        w.host,
                        w.pid if w.pid is not None else "-",
                        w.state,
                        w.current_job,
                        w.last_heartbeat,
                        w.succeeded,
                        w.failed,
                    ]
                    for w in status.workers
                ],
            )
        )
    out.append("")
    dedup = status.dedup
    total = sum(dedup.by_source.values())
    bound = "" if dedup.complete else f"at least (scan stopped after {dedup.scanned_in:.1f} s) "
    sources = ", ".join(f"{source} {count:,}" for source, count in sorted(dedup.by_source.items()))
    out.append(f"dedup    {bound}{total:,} event id(s) remembered" + (f" ({sources})" if sources else ""))
    capture = status.capture
    out.append(
        f"capture  {'on' if capture.get('enabled') else 'off'}, {capture.get('kept', 0):,} delivery(ies) kept"
    )
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    from ..cli.main import configured_queues

    settings = Settings.from_env()
    redis = Redis.from_url(settings.require_redis_url(), socket_timeout=10, socket_connect_timeout=5)
    try:
        status = collect_status(redis, settings, configured_queues(settings), args.scan_budget)
    finally:
        redis.close()
    if args.json:
        print(orjson.dumps(asdict(status), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(status, settings.summary()["redis_url"]))
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router status`."""
    from ..cli.main import add_command

    parser = add_command(
        sub,
        "status",
        cmd_status,
        "show queue depths, running/scheduled/failed jobs, "
        "workers alive, remembered event ids and kept captures",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument(
        "--scan-budget",
        type=_seconds,
        default=SCAN_BUDGET,
        metavar="SECONDS",
        help=f"stop counting dedup keys after this long (default {SCAN_BUDGET:g})",
    )


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return number
