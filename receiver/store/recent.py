"""The most recent webhook events, for the console's event list: a sorted set of
`<type>|<event id>` scored by received time (ms), capped at RECENT_MAX members. The admit
script adds a new event to it in the same call that stores the event (one ZADD, and a
trim by rank that removes nothing until the cap is reached). Types and ids only: no
payload data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis

from ..keys import RECENT_EVENTS_KEY

RECENT_MAX = 10_000


@dataclass(frozen=True)
class RecentEvent:
    event_id: str
    type: str
    received_at: datetime


def recent_member(event_type: str, event_id: str) -> str:
    """The set's member for an event (a `|` in a type would split wrongly: it becomes `/`)."""
    return f"{event_type.replace('|', '/')}|{event_id}"


def read_recent(
    redis: Redis, *, since: datetime | None = None, until: datetime | None = None, limit: int = 500
) -> list[RecentEvent]:
    """Newest first, received in [since, until), at most `limit` (one ZRANGE call)."""
    high = f"({int(until.timestamp() * 1000)}" if until is not None else "+inf"
    low = str(int(since.timestamp() * 1000)) if since is not None else "-inf"
    rows: list[tuple[bytes, float]] = redis.zrevrangebyscore(  # type: ignore[assignment]
        RECENT_EVENTS_KEY, high, low, start=0, num=limit, withscores=True
    )
    events = []
    for member, score in rows:
        text = member.decode() if isinstance(member, bytes) else str(member)
        event_type, _, event_id = text.partition("|")
        events.append(RecentEvent(event_id, event_type, datetime.fromtimestamp(score / 1000, UTC)))
    return events


def recent_type(redis: Redis, event_id: str) -> str | None:
    """The type the index lists `event_id` under, or None. A ZSCAN of the capped set, a
    thousand members per call: for the event page, when the event's jobs are gone."""
    pattern = "*|" + re.sub(r"([*?\[\]\\])", r"\\\1", event_id)
    for member, _score in redis.zscan_iter(RECENT_EVENTS_KEY, match=pattern, count=1000):
        text = member.decode() if isinstance(member, bytes) else str(member)
        event_type, _, found = text.partition("|")
        if found == event_id:
            return event_type
    return None
