"""The one way the service opens Redis: `connect(settings, role)` (sync) and
`connect_async(settings, role)`.

Each role has one timeout policy, written once below:

| role | client | socket / connect timeout | retries | why |
| --- | --- | --- | --- | --- |
| `receiver` | async | 2 s / 2 s | 1, no backoff | a delivery answers 503 rather than wait |
| `batch` | async | 60 s / 2 s | none | one script of a 250k-record batch may take about a second |
| `scrape` | sync | 2 s / 2 s | default | `/metrics` reads worker counters at scrape time |
| `worker` | sync | none | default | RQ's blocking dequeue waits on purpose |
| `command` | sync | none | default | CLI commands (`failed`, `capture`, `rekey`, `replay`, ...) |
| `status` | sync | 10 s / 5 s | default | `status` scans for a few seconds at most |
| `probe` | sync | 3 s / 3 s | default | `healthcheck --worker`: a container probe has its own deadline |

The receiver's admit call keeps one connection of the `receiver` client for itself and
sends on it directly (held_script.py); it keeps the same timeouts and its one retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..exceptions import StoreError
from ..settings import Settings

REDIS_TIMEOUT = 2.0  # the receiver's: how long a delivery may wait on Redis before its 503
RECEIVER_RETRIES = 1  # the receiver's: a dropped or timed-out call is sent once more, at once
BATCH_REDIS_TIMEOUT = 60.0  # seconds a script of a big Osmos batch may take (a 250k commit: ~1 s)

# What a failing or unreachable Redis raises through our store code: refused writes and
# lost batches (StoreError), the client's own errors, sockets, and deadlines. An endpoint
# answers any of these with 503; anything else is a bug and is not dressed up as one.
UNAVAILABLE: tuple[type[BaseException], ...] = (StoreError, RedisError, OSError, TimeoutError)

SyncRole = Literal["scrape", "worker", "command", "status", "probe", "console"]
AsyncRole = Literal["receiver", "batch"]


@dataclass(frozen=True)
class Policy:
    socket_timeout: float | None = None
    connect_timeout: float | None = None
    retries: int | None = None  # None: redis-py's own default


POLICIES: dict[str, Policy] = {
    "receiver": Policy(REDIS_TIMEOUT, REDIS_TIMEOUT, retries=RECEIVER_RETRIES),
    "batch": Policy(BATCH_REDIS_TIMEOUT, REDIS_TIMEOUT, retries=0),
    "scrape": Policy(REDIS_TIMEOUT, REDIS_TIMEOUT),
    "worker": Policy(),
    "command": Policy(),
    "status": Policy(10.0, 5.0),
    "probe": Policy(3.0, 3.0),
    "console": Policy(5.0, 3.0),  # a page that waits longer than this says Redis is slow
}


def connect(
    settings: Settings, role: SyncRole, *, url: str | None = None, timeout: float | None = None
) -> Redis:
    """A sync client for `role`; `url` replaces the configured one (a dry run's stand-in),
    `timeout` the role's socket and connect timeouts."""
    policy = POLICIES[role]
    return Redis.from_url(
        url or settings.require_redis_url(),
        socket_timeout=timeout if timeout is not None else policy.socket_timeout,
        socket_connect_timeout=timeout if timeout is not None else policy.connect_timeout,
    )


def connect_async(settings: Settings, role: AsyncRole, *, url: str | None = None) -> AsyncRedis:
    """An asyncio client for `role` (see the table above)."""
    policy = POLICIES[role]
    options: dict[str, object] = {
        "socket_timeout": policy.socket_timeout,
        "socket_connect_timeout": policy.connect_timeout,
    }
    if policy.retries is not None:
        options["retry"] = AsyncRetry(NoBackoff(), policy.retries)
    return AsyncRedis.from_url(url or settings.require_redis_url(), **options)  # type: ignore[arg-type]
