"""The admit script (receiver/store/dedup.py) gets each grouped call's events as one JSON
argument. Whatever characters an event's id, type or body hold, what lands in Redis is
exactly what the Python side built: job hashes, queue entries, the dedup mark and the
recent-events member."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from receiver.keys import RECENT_EVENTS_KEY, RQ_JOB_PREFIX, RQ_QUEUE_PREFIX, dedup_key
from receiver.model.routes import RouteTable, parse_config
from receiver.store.dedup import AdmitOutcome, EventStore
from receiver.store.enqueue import JobBuilder, JobWrite
from receiver.store.pipeline import Admitted, Pipeline
from receiver.store.recent import recent_member
from receiver.store.server import RedisServer
from tests.support import examples

ROUTES = {
    "routes": [
        {"on": "*", "handler": "noop"},
        {"on": "*", "handler": "noop", "retries": 0, "queue": "other", "label": "second"},
    ]
}
# Every character but the surrogates, which a JSON body cannot carry (orjson refuses them).
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)


def pipeline_for(redis: AsyncRedis) -> Pipeline:
    config = parse_config(ROUTES)
    builder = JobBuilder(config.routes, "osma-router", None)
    return Pipeline(RouteTable(config.routes), builder, EventStore(redis, builder.templates, 3600))


async def admit_twice(
    url: str, payload: dict[str, object], received_at: datetime
) -> tuple[list[JobWrite], Admitted, Admitted, Admitted]:
    redis = AsyncRedis.from_url(url)
    try:
        pipeline = pipeline_for(redis)
        body = orjson.dumps(payload)
        jobs = pipeline.jobs_for("osma", payload, body, received_at)
        first = await pipeline.admit("osma", payload, body, received_at)
        again = await pipeline.admit("osma", payload, body, received_at)
        forced = await pipeline.admit("osma", payload, body, received_at, replay=True, force_tag="f1")
        return jobs, first, again, forced
    finally:
        await redis.aclose()


@given(event_id=ANY_TEXT, event_type=ANY_TEXT, title=st.text(max_size=200))
@settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_script_writes_exactly_what_was_built(
    redis: Redis, redis_server: RedisServer, event_id: str, event_type: str, title: str
) -> None:
    redis.flushall()
    payload = {"id": event_id, "type": event_type, "data": {"object": {"title": title}}}
    received_at = datetime(2026, 12, 6, 9, 30, 15, 123000, tzinfo=UTC)
    jobs, first, again, forced = asyncio.run(admit_twice(redis_server.url, payload, received_at))

    assert (first.outcome, first.jobs) == (AdmitOutcome.ACCEPTED, 2)
    assert again.outcome is AdmitOutcome.DUPLICATE
    assert forced.outcome is AdmitOutcome.ACCEPTED
    assert [job.queue for job in jobs] == ["osma-router", "other"]
    for job in jobs:
        stored = redis.hgetall(RQ_JOB_PREFIX + job.job_id)
        assert stored[b"data"] == job.data
        assert stored[b"description"] == job.description.encode()
        forced_copy = redis.hgetall(f"{RQ_JOB_PREFIX}{job.job_id}_f1")
        assert orjson.loads(forced_copy[b"data"])[2][0]["clock"] == "received_at"
        assert redis.lrange(RQ_QUEUE_PREFIX + job.queue, 0, -1) == [
            job.job_id.encode(),
            f"{job.job_id}_f1".encode(),
        ]
    received_ms = int(received_at.timestamp() * 1000)
    tails = [job.job_id.rsplit("_", 1)[1] for job in jobs]
    marks = "".join(f":{tail}" for tail in tails) + "".join(f":{tail}_f1" for tail in tails)
    assert redis.get(dedup_key("osma", event_id)) == f"{received_ms}{marks}#2".encode()
    recent = redis.zrange(RECENT_EVENTS_KEY, 0, -1, withscores=True)
    assert recent == [(recent_member(event_type, event_id).encode(), float(received_ms))]


def test_a_forced_call_sent_twice_queues_its_jobs_once(redis: Redis, redis_server: RedisServer) -> None:
    """A call whose reply was lost is sent once more (held_script.py). For a forced replay the
    second run must find its jobs there already, not queue them again under the same ids."""

    async def scenario() -> list[Admitted]:
        client = AsyncRedis.from_url(redis_server.url)
        try:
            pipeline = pipeline_for(client)
            payload = {"id": "evt_twice", "type": "task.completed", "data": {"object": {}}}
            body = orjson.dumps(payload)
            at = datetime.now(UTC)
            await pipeline.admit("osma", payload, body, at)
            return [
                await pipeline.admit("osma", payload, body, at, replay=True, force_tag="f1") for _ in range(2)
            ]
        finally:
            await client.aclose()

    first, again = asyncio.run(scenario())
    assert first.outcome is again.outcome is AdmitOutcome.ACCEPTED
    queued = redis.lrange(RQ_QUEUE_PREFIX + "osma-router", 0, -1) + redis.lrange(
        RQ_QUEUE_PREFIX + "other", 0, -1
    )
    forced = [job_id for job_id in queued if job_id.endswith(b"_f1")]
    assert len(forced) == 2 and len(set(forced)) == 2  # each route's forced job, once
