"""Deliveries per minute by source and outcome, for the console's overview.

Receivers count deliveries in process (Prometheus counters); every few seconds each one
adds what it counted since its last flush to the hash of the current minute
(`osma_router:activity:<epoch minute>`, field `<source>|<outcome>|<reason>`). The hashes
expire after two hours, so the console can always draw the last hour and Redis holds at
most 120 small hashes. The counts are for a person looking at a chart: a receiver killed
between two flushes loses its last few seconds of counts, never a delivery.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from ..keys import ACTIVITY_PREFIX

ACTIVITY_TTL = 2 * 3600


def activity_key(minute: int) -> str:
    return f"{ACTIVITY_PREFIX}{minute}"


def activity_field(source: str, outcome: str, reason: str) -> str:
    return f"{source}|{outcome}|{reason}"


async def add_activity(redis: AsyncRedis, minute: int, counts: Mapping[str, int]) -> None:
    """Add `counts` (field -> deliveries) to the hash of `minute` in one round trip."""
    if not counts:
        return
    key = activity_key(minute)
    pipe = redis.pipeline(transaction=False)
    for name, count in counts.items():
        pipe.hincrby(key, name, count)
    pipe.expire(key, ACTIVITY_TTL)
    await pipe.execute()


@dataclass(frozen=True)
class Minute:
    """The deliveries of one minute: `outcomes` maps "accepted", "duplicate" and
    "rejected: <reason>" to counts, all sources together."""

    start: int  # epoch seconds
    outcomes: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def read_activity(redis: Redis, now: float, minutes: int = 60) -> list[Minute]:
    """The last `minutes` minutes up to `now`, oldest first (one pipelined round trip)."""
    last = int(now // 60)
    first = last - minutes + 1
    pipe = redis.pipeline(transaction=False)
    for minute in range(first, last + 1):
        pipe.hgetall(activity_key(minute))
    rows: list[Minute] = []
    for minute, stored in zip(range(first, last + 1), pipe.execute(), strict=True):
        outcomes: Counter[str] = Counter()
        for raw, count in stored.items():
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            _source, outcome, reason = (name.split("|") + ["", ""])[:3]
            outcomes[f"{outcome}: {reason}" if outcome == "rejected" and reason else outcome] += int(count)
        rows.append(Minute(minute * 60, dict(outcomes)))
    return rows
