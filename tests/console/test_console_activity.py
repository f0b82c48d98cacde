"""What feeds the overview and the event list: deliveries per minute (counted by each
receiver, flushed to Redis) and the recent-events index (written by the admit script)."""

from __future__ import annotations

import asyncio
import html
import re
from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from receiver.keys import RECENT_EVENTS_KEY
from receiver.store.activity import ACTIVITY_TTL, activity_key, read_activity
from receiver.store.recent import RECENT_MAX, read_recent, recent_member, recent_type
from receiver.testing import task_event
from receiver.testing.pytest_plugin import RouterUnderTest
from receiver.web.activity import ActivityRecorder

from .conftest import MEMBER_NAME, ConsoleClient
from .test_console_http import completed_task, redis_of

MINUTE = 60 * 29_000_000  # an epoch second on a minute boundary


def chart_counts(page: str) -> Counter[str]:
    """The overview chart's numbers: every bar's title is `HH:MM UTC: outcome n, ...`."""
    svg = re.search(r"<svg class=\"chart\".*?</svg>", page, re.S)
    assert svg, "no chart on the overview"
    counts: Counter[str] = Counter()
    for title in re.findall(r"<title>(.*?)</title>", svg.group(0)):
        _, _, listed = html.unescape(title).partition(" UTC: ")
        for part in listed.split(", "):
            found = re.fullmatch(r"(.+) (\d+)", part)
            if found:
                counts[found.group(1)] += int(found.group(2))
    return counts


def test_deliveries_through_a_receiver_show_in_the_overview_chart(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    event = completed_task()
    assert osma_router.post(event).status_code == 202
    assert osma_router.post(event).status_code == 200  # a duplicate
    assert osma_router.post(completed_task()).status_code == 202
    assert osma_router.post(completed_task(), secret="whsec_not_ours").status_code == 401
    # A receiver that stops flushes what it counted since its last flush (every 5 s).
    osma_router.server.stop()
    page = console.http.get("/").text
    assert chart_counts(page) == {"accepted": 2, "duplicate": 1, "rejected: signature_mismatch": 1}
    assert "accepted: 2" in page and "duplicate: 1" in page  # the legend's totals


def test_the_recorder_adds_what_was_counted_since_its_last_flush(osma_router_redis: Redis) -> None:
    url = osma_router_redis.connection_pool.connection_kwargs
    registry = CollectorRegistry()
    deliveries = PromCounter("deliveries", "test", ["source", "outcome"], registry=registry)
    reasons = PromCounter("reasons", "test", ["source", "outcome", "reason"], registry=registry)
    now = [MINUTE + 10.0]

    async def scenario() -> None:
        redis = AsyncRedis(host=url["host"], port=url["port"])
        down = AsyncRedis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        try:
            recorder = ActivityRecorder(deliveries, reasons, redis, clock=lambda: now[0])
            deliveries.labels("osma", "accepted").inc(3)
            deliveries.labels("osma", "rejected").inc()
            reasons.labels("osma", "rejected", "stale").inc()
            await recorder.flush()
            await recorder.flush()  # nothing new: nothing added
            deliveries.labels("osma", "accepted").inc(2)
            now[0] = MINUTE + 70.0  # the next minute
            await recorder.flush()
            # A Redis that does not answer: no error, the counts wait for a flush that works.
            await ActivityRecorder(deliveries, reasons, down, clock=lambda: now[0]).flush()
        finally:
            await redis.aclose()
            await down.aclose()

    asyncio.run(scenario())
    first, second = read_activity(osma_router_redis, MINUTE + 70.0, minutes=2)
    assert (first.start, dict(first.outcomes)) == (MINUTE, {"accepted": 3, "rejected: stale": 1})
    assert (second.start, dict(second.outcomes)) == (MINUTE + 60, {"accepted": 2})
    ttl = osma_router_redis.ttl(activity_key(MINUTE // 60))
    assert 0 < ttl <= ACTIVITY_TTL


def test_the_recent_index_holds_types_and_ids_only(osma_router: RouterUnderTest) -> None:
    event = completed_task()
    assert MEMBER_NAME in str(event)
    assert osma_router.post(event).status_code == 202
    assert osma_router.post(event).status_code == 200  # a duplicate is not listed twice
    redis = redis_of(osma_router)
    members = [m.decode() for m in redis.zrange(RECENT_EVENTS_KEY, 0, -1)]
    assert members == [f"task.completed|{event['id']}"]
    [recent] = read_recent(redis)
    assert (recent.event_id, recent.type) == (event["id"], "task.completed")


def test_the_recent_index_is_capped(osma_router: RouterUnderTest) -> None:
    """At RECENT_MAX members, a new event pushes out the oldest (the admit script trims)."""
    redis = redis_of(osma_router)
    redis.zadd(
        RECENT_EVENTS_KEY, {recent_member("task.created", f"evt_old_{n}"): n for n in range(RECENT_MAX)}
    )
    event = task_event("task.created", {"id": "task_cap"})
    assert osma_router.post(event).status_code == 202
    assert redis.zcard(RECENT_EVENTS_KEY) == RECENT_MAX
    assert redis.zscore(RECENT_EVENTS_KEY, recent_member("task.created", "evt_old_0")) is None
    assert redis.zscore(RECENT_EVENTS_KEY, recent_member("task.created", "evt_old_1")) is not None
    assert read_recent(redis, limit=1)[0].event_id == event["id"]


def test_the_index_names_the_type_of_an_event_by_its_id(osma_router_redis: Redis) -> None:
    """Ids are matched literally: glob characters in one match only itself."""
    members = {"task.created|evt_[a]*": 2, "task.updated|evt_a": 1, "member.created|x|y": 3}
    osma_router_redis.zadd(RECENT_EVENTS_KEY, members)
    assert recent_type(osma_router_redis, "evt_[a]*") == "task.created"
    assert recent_type(osma_router_redis, "evt_a") == "task.updated"
    assert recent_type(osma_router_redis, "x|y") == "member.created"
    assert recent_type(osma_router_redis, "evt_?") is None
