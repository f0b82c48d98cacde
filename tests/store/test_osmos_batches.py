"""receiver/store/batches.py against a real Redis: the job data it writes is `JobBuilder`'s, and
staging, commit, discard and the sweep of abandoned batches keep "all or nothing" also
when batches with the same records overlap or a receiver dies between chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import pytest
from cryptography.fernet import Fernet
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from receiver.crypto import Sealer
from receiver.exceptions import StagingLost
from receiver.keys import OSMOS_INFLIGHT_KEY, osmos_seen_key
from receiver.model.connectors import canonical_json, record_event_id
from receiver.model.routes import parse_config
from receiver.settings import Secret
from receiver.store.batches import (
    BatchOutcome,
    BatchStore,
    EventCoder,
    StagedChunk,
    lay_out_route,
)
from receiver.store.enqueue import JobBuilder

T = TypeVar("T")
RECEIVED = datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=UTC)
CONFIG = {
    "routes": [
        {"on": "osmos.crm.record", "handler": "noop"},
        {"on": "osmos.*", "handler": "noop", "queue": "bulk", "retries": 2},
    ],
    "connectors": {
        "crm": {
            "header": "Authorization",
            "token": "env:T",
            "event_type": "osmos.crm.record",
            "key": "id",
            "fields": [{"name": "id", "type": "string"}],
        }
    },
}


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Store:
    """A BatchStore on the test Redis, with helpers to stage records the way the endpoint does."""

    def __init__(self, url: str, sealer: Sealer | None = None) -> None:
        self.url = url
        self.config = parse_config(CONFIG, environ={"T": "token"})
        self.connector = self.config.connectors["crm"]
        self.builder = JobBuilder(self.config.routes, "osma-router", sealer)
        self.coder = EventCoder(self.connector.event_type, RECEIVED, sealer)
        self.layouts = [
            lay_out_route(self.builder, self.connector.event_type, RECEIVED, route, sealer is not None)
            for route in self.config.routes
        ]

    def chunk(self, records: list[dict[str, Any]]) -> StagedChunk:
        ids = [record_event_id(self.connector, r) for r in records]
        bodies = [
            self.coder.body_value(self.coder.event(i, canonical_json(r)))
            for i, r in zip(ids, records, strict=True)
        ]
        return StagedChunk(ids, bodies, None)

    def session(self, work: Callable[[BatchStore], Awaitable[T]], **kw: Any) -> T:
        async def go() -> T:
            redis = AsyncRedis.from_url(self.url)
            try:
                return await work(BatchStore(redis, 3600, **kw))
            finally:
                await redis.aclose()

        return run(go())


@pytest.fixture
def store(redis: Redis, redis_server: Any) -> Store:
    return Store(redis_server.url)


def records(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "n": len(i)} for i in ids]


def queue(redis: Redis, name: str = "osma-router") -> list[str]:
    return [j.decode() for j in redis.lrange(f"rq:queue:{name}", 0, -1)]


def batch_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter("osma_router:osmos:batch:*"))


def test_job_data_is_what_job_builder_writes(store: Store, redis: Redis):
    record = {"id": "cus_1", "name": 'Zoë "quoted" \\ \u2028'}
    event_id = record_event_id(store.connector, record)
    event = store.coder.event(event_id, canonical_json(record))
    for layout, route in zip(store.layouts, store.config.routes, strict=True):
        (expected,) = store.builder.build("osmos", event_id, "osmos.crm.record", event, RECEIVED, [route])
        assert layout.job_id(event_id) == expected.job_id
        assert layout.data(event_id, store.coder.body_value(event)) == expected.data
        assert layout.queue == expected.queue and layout.description == expected.description


def test_sealed_job_data_opens_to_the_same_event(redis_server: Any, redis: Redis):
    sealer = Sealer([Secret(Fernet.generate_key().decode())])
    sealed = Store(redis_server.url, sealer)
    record = {"id": "cus_secret"}
    event_id = record_event_id(sealed.connector, record)
    event = sealed.coder.event(event_id, canonical_json(record))
    data = sealed.layouts[0].data(event_id, sealed.coder.body_value(event))
    spec = orjson.loads(data)[2][0]
    assert b"cus_secret" not in data and sealer.open(spec["sealed"]) == event
    assert orjson.loads(event) == {
        "id": event_id,
        "type": "osmos.crm.record",
        "object": "event",
        "created_at": RECEIVED.isoformat(),
        "data": {"object": record},
    }


def test_staged_jobs_stay_invisible_until_the_commit(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> BatchOutcome:
        batch = batches.open("crm", store.layouts)
        await batch.stage(store.chunk(records("a", "b")))
        await batch.stage(store.chunk(records("c")))
        assert queue(redis) == [] and not redis.exists(osmos_seen_key("crm"))
        assert len(list(redis.scan_iter("rq:job:*"))) == 6  # staged, in no queue
        return await batch.commit()

    assert store.session(work) == BatchOutcome(3, 0)
    assert len(queue(redis)) == 3 and len(queue(redis, "bulk")) == 3
    assert batch_keys(redis) == [] and redis.zcard(OSMOS_INFLIGHT_KEY) == 0


def test_discard_removes_what_the_batch_staged(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        batch = batches.open("crm", store.layouts)
        await batch.stage(store.chunk(records("a", "b")))
        await batch.discard()

    store.session(work)
    assert list(redis.scan_iter("rq:job:*")) == [] and batch_keys(redis) == []
    assert redis.zcard(OSMOS_INFLIGHT_KEY) == 0


def test_a_batch_abandoned_between_chunks_is_swept_by_the_next_one(store: Store, redis: Redis):
    async def abandon(batches: BatchStore) -> None:
        batch = batches.open("crm", store.layouts)
        await batch.stage(store.chunk(records("a", "b")))  # ... and the receiver dies

    store.session(abandon, staging_deadline=0)
    assert len(list(redis.scan_iter("rq:job:*"))) == 4 and redis.zcard(OSMOS_INFLIGHT_KEY) == 1

    async def next_batch(batches: BatchStore) -> int:
        return await batches.sweep()

    assert store.session(next_batch) == 1
    assert list(redis.scan_iter("rq:job:*")) == [] and batch_keys(redis) == []
    assert redis.zcard(OSMOS_INFLIGHT_KEY) == 0 and queue(redis) == []


def test_a_swept_batch_cannot_stage_or_commit_any_more(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        slow = batches.open("crm", store.layouts)
        await slow.stage(store.chunk(records("a")))
        redis.zadd(OSMOS_INFLIGHT_KEY, {slow.member: 0})  # its deadline passed
        assert await batches.sweep() == 1
        with pytest.raises(StagingLost):
            await slow.stage(store.chunk(records("b")))
        with pytest.raises(StagingLost):
            await slow.commit()

    store.session(work)
    assert queue(redis) == [] and list(redis.scan_iter("rq:job:*")) == []


def test_overlapping_batches_queue_a_shared_record_once(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> tuple[BatchOutcome, BatchOutcome]:
        first = batches.open("crm", store.layouts)
        second = batches.open("crm", store.layouts)
        await first.stage(store.chunk(records("shared", "one")))
        await second.stage(store.chunk(records("shared", "two")))  # rewrites shared's hashes
        return await first.commit(), await second.commit()

    first, second = store.session(work)
    assert first == BatchOutcome(2, 0) and second == BatchOutcome(1, 1)
    jobs = queue(redis)
    assert len(jobs) == 3 and len(set(jobs)) == 3
    assert all(redis.exists(f"rq:job:{job}") for job in jobs + queue(redis, "bulk"))
    assert batch_keys(redis) == []


def test_a_failed_batch_does_not_remove_jobs_another_batch_committed(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> BatchOutcome:
        failing = batches.open("crm", store.layouts)
        winning = batches.open("crm", store.layouts)
        await failing.stage(store.chunk(records("shared")))  # creates the hashes
        await winning.stage(store.chunk(records("shared")))  # borrows them
        outcome = await winning.commit()
        await failing.discard()
        return outcome

    assert store.session(work) == BatchOutcome(1, 0)
    (job,) = queue(redis)
    assert redis.exists(f"rq:job:{job}")


def test_a_commit_whose_borrowed_jobs_were_discarded_stores_nothing(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        failing = batches.open("crm", store.layouts)
        late = batches.open("crm", store.layouts)
        await failing.stage(store.chunk(records("shared")))
        await late.stage(store.chunk(records("shared", "other")))
        await failing.discard()  # removes the hashes `late` borrowed
        with pytest.raises(StagingLost):
            await late.commit()
        await late.discard()

    store.session(work)
    assert queue(redis) == [] and not redis.exists(osmos_seen_key("crm"))
    assert list(redis.scan_iter("rq:job:*")) == []


def test_a_dedup_mark_expires_after_the_window(redis_server: Any, redis: Redis, store: Store):
    async def work(batches: BatchStore) -> list[BatchOutcome]:
        outcomes = []
        for _ in range(2):
            batch = batches.open("crm", store.layouts)
            await batch.stage(store.chunk(records("a")))
            outcomes.append(await batch.commit())
        await asyncio.sleep(0.25)
        batch = batches.open("crm", store.layouts)
        await batch.stage(store.chunk(records("a")))
        outcomes.append(await batch.commit())
        return outcomes

    async def short_window(batches: BatchStore) -> list[BatchOutcome]:
        batches.ttl_ms = 200
        return await work(batches)

    assert store.session(short_window) == [BatchOutcome(1, 0), BatchOutcome(0, 1), BatchOutcome(1, 0)]
