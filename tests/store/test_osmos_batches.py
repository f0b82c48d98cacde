"""receiver/store/batches.py against a real Redis: a record's job is `JobBuilder`'s, and
begin, stage, commit, discard and the sweep of abandoned batches keep "all or nothing",
also when batches with the same records overlap or a receiver dies between chunks; one
batch per connector at a time; the memory budget; dedup marks that expire."""

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
from receiver.exceptions import OverBudget, StagingLost, StoreError
from receiver.keys import OSMOS_INFLIGHT_KEY, OSMOS_RESERVED_KEY, osmos_chunk_key, osmos_holder_key
from receiver.model.connectors import canonical_json, record_event_id, record_ids
from receiver.model.routes import parse_config
from receiver.settings import Secret
from receiver.store.batches import Batch, BatchStore, StagedChunk, templates_json
from receiver.store.enqueue import JobBuilder
from receiver.store.osmos_chunks import ChunkJobs, EventCoder, pack_records, record_job, unpack_records
from tests.osmos_support import batch_leftovers, marked_ids, marks, queued_records

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


class Store:
    """A BatchStore on the test Redis, with helpers to store records the way the endpoint does."""

    def __init__(self, url: str, sealer: Sealer | None = None) -> None:
        self.url = url
        self.sealer = sealer
        self.config = parse_config(CONFIG, environ={"T": "token"})
        self.connector = self.config.connectors["crm"]
        self.ids = record_ids(self.connector)
        self.builder = JobBuilder(self.config.routes, "osma-router", sealer)
        self.jobs = ChunkJobs(
            self.builder, self.config.routes, "crm", "id", "osmos.crm.record", RECEIVED, sealer is not None
        )

    def chunk(self, batch: Batch, number: int, records: list[dict[str, Any]]) -> StagedChunk:
        lines = [canonical_json(r) for r in records]
        digests = [self.ids.digest(r, line) for r, line in zip(records, lines, strict=True)]
        return StagedChunk(
            number, osmos_chunk_key(batch.member, number), digests, pack_records(lines, self.sealer)
        )

    async def store(self, batch: Batch, *chunks: list[dict[str, Any]], commit: bool = True) -> int:
        """Begin, stage `chunks`, commit (a job per chunk and route for its new records);
        how many records were new."""
        await batch.begin(10_000_000)
        fresh = 0
        writes, readers, unread = [], [], []
        for number, records in enumerate(chunks):
            (positions,) = await batch.stage([self.chunk(batch, number, records)])
            seen = set(positions)
            run = [p for p in range(len(records)) if p not in seen]
            fresh += len(run)
            if not run:
                unread.append(osmos_chunk_key(batch.member, number))
                continue
            positions = None if len(run) == len(records) else run
            for plan in self.jobs.routes:
                writes.append(self.jobs.job(plan, batch.member, number, len(records), positions, {}))
            readers.append((osmos_chunk_key(batch.member, number), [p.route.key for p in self.jobs.routes]))
        if commit:
            await batch.commit(templates_json(self.jobs.templates), readers, unread, writes)
        return fresh

    def session(self, work: Callable[[BatchStore], Awaitable[T]], **kw: Any) -> T:
        async def go() -> T:
            redis = AsyncRedis.from_url(self.url)
            try:
                return await work(BatchStore(redis, kw.pop("ttl", 3600), kw.pop("budget", "0"), **kw))
            finally:
                await redis.aclose()

        return asyncio.run(go())  # type: ignore[arg-type]


@pytest.fixture
def store(redis: Redis, redis_server: Any) -> Store:
    return Store(redis_server.url)


def records(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "n": len(i)} for i in ids]


def ids_of(store: Store, *ids: str) -> list[str]:
    return [record_event_id(store.connector, r) for r in records(*ids)]


def queued(redis: Redis, queue: str = "rq:queue:osma-router") -> list[str]:
    return [record.event_id for record in queued_records(redis, queue)]


def chunk_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter("osma_router:osmos:chunk:*"))


def test_a_failing_records_job_is_what_job_builder_writes(store: Store, redis: Redis):
    record = {"id": "cus_1", "name": 'Zoë "quoted" \\ \u2028'}
    event_id = record_event_id(store.connector, record)
    event = EventCoder("osmos.crm.record", RECEIVED).event(event_id, canonical_json(record))
    for plan, route in zip(store.jobs.routes, store.config.routes, strict=True):
        spec = orjson.loads(store.jobs.job(plan, "crm:b1", 0, 1, None, {}).data)[2][0]
        job = record_job(redis, spec, event_id, event, None)
        (expected,) = store.builder.build("osmos", event_id, "osmos.crm.record", event, RECEIVED, [route])
        assert job.id == expected.job_id and job.origin == expected.queue
        assert job.description == expected.description
        assert orjson.dumps([job.func_name, None, job.args, {}]) == expected.data
        assert job.retries_left == route.retries and job.timeout == route.timeout


def test_a_sealed_chunk_opens_to_the_records_and_their_events(redis_server: Any, redis: Redis):
    sealer = Sealer([Secret(Fernet.generate_key().decode())])
    record = {"id": "cus_secret"}
    blob = pack_records([canonical_json(record)], sealer)
    assert b"cus_secret" not in blob
    with pytest.raises(Exception, match="OSMA_ROUTER_ENCRYPTION_KEYS"):
        unpack_records(blob, None)
    (line,) = unpack_records(blob, sealer)
    event_id = record_event_id(Store(redis_server.url).connector, record)
    assert orjson.loads(EventCoder("osmos.crm.record", RECEIVED).event(event_id, line)) == {
        "id": event_id,
        "type": "osmos.crm.record",
        "object": "event",
        "created_at": RECEIVED.isoformat(),
        "data": {"object": record},
    }


def test_staged_records_stay_invisible_until_the_commit(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> int:
        batch = batches.open("crm")
        fresh = await store.store(batch, records("a", "b"), records("c"), commit=False)
        assert queued(redis) == [] and not list(redis.scan_iter("rq:job:*"))
        assert redis.get(osmos_holder_key("crm")) == batch.member.encode()  # no other batch reads the marks
        writes = [
            store.jobs.job(plan, batch.member, n, size, None, {})
            for n, size in enumerate((2, 1))
            for plan in store.jobs.routes
        ]
        routes = [plan.route.key for plan in store.jobs.routes]
        readers = [(osmos_chunk_key(batch.member, n), routes) for n in range(2)]
        await batch.commit(templates_json(store.jobs.templates), readers, [], writes)
        return fresh

    assert store.session(work) == 3
    assert queued(redis) == ids_of(store, "a", "b", "c")
    assert queued(redis, "rq:queue:bulk") == ids_of(store, "a", "b", "c")
    assert batch_leftovers(redis) == []
    assert marked_ids(redis, "crm", "id") == sorted(ids_of(store, "a", "b", "c"))


def test_discard_removes_what_the_batch_staged(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        batch = batches.open("crm")
        await store.store(batch, records("a", "b"), records("c"), commit=False)
        await batch.discard()

    store.session(work)
    assert marks(redis, "crm") == [] and chunk_keys(redis) == [] and batch_leftovers(redis) == []


def test_a_batch_abandoned_between_chunks_is_swept_by_the_next_one(store: Store, redis: Redis):
    async def abandon(batches: BatchStore) -> None:
        await store.store(batches.open("crm"), records("a", "b"), commit=False)  # ... and the receiver dies

    store.session(abandon, staging_deadline=0)
    assert len(marks(redis, "crm")) == 2 and len(chunk_keys(redis)) == 1

    async def next_batch(batches: BatchStore) -> int:
        return await batches.sweep()

    assert store.session(next_batch) == 1
    assert marks(redis, "crm") == [] and chunk_keys(redis) == [] and batch_leftovers(redis) == []


def test_the_next_batch_of_the_connector_discards_an_abandoned_one_before_it_reads_marks(
    store: Store, redis: Redis
):
    async def abandon(batches: BatchStore) -> None:
        await store.store(batches.open("crm"), records("a", "b"), commit=False)

    store.session(abandon, staging_deadline=0)

    async def again(batches: BatchStore) -> int:
        return await store.store(batches.open("crm"), records("a", "b"))  # no sweep first

    assert store.session(again) == 2  # the abandoned batch's marks did not make duplicates
    assert queued(redis) == ids_of(store, "a", "b") and batch_leftovers(redis) == []


def test_a_swept_batch_cannot_stage_or_commit_any_more(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        slow = batches.open("crm")
        await store.store(slow, records("a"), commit=False)
        redis.zadd(OSMOS_INFLIGHT_KEY, {slow.member: 0})  # its deadline passed
        assert await batches.sweep() == 1
        with pytest.raises(StagingLost):
            await slow.stage([store.chunk(slow, 1, records("b"))])
        with pytest.raises(StagingLost):
            await slow.commit(b"[]", [], [], [])

    store.session(work)
    assert queued(redis) == [] and marks(redis, "crm") == [] and chunk_keys(redis) == []


def test_a_batch_whose_deadline_moved_on_is_not_swept(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        batch = batches.open("crm")
        await store.store(batch, records("a"), commit=False)
        await Batch(batches, batch.member, batches.redis).discard(own=False)  # a sweep that comes too late
        await batch.stage([store.chunk(batch, 1, records("b"))])  # still its own

    store.session(work)
    assert len(marks(redis, "crm")) == 2


def test_overlapping_batches_of_a_connector_queue_a_shared_record_once(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> list[int]:
        return list(
            await asyncio.gather(
                store.store(batches.open("crm"), records("shared", "one")),
                store.store(batches.open("crm"), records("shared", "two")),
            )
        )

    assert sorted(store.session(work)) == [1, 2]  # the second waited for the first, then found "shared"
    jobs = queued(redis)
    assert sorted(jobs) == sorted(ids_of(store, "shared", "one", "two"))
    assert batch_leftovers(redis) == []


def test_a_batch_that_fails_leaves_its_records_to_the_next_batch(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> int:
        failing = batches.open("crm")
        await store.store(failing, records("shared"), commit=False)
        later = asyncio.ensure_future(store.store(batches.open("crm"), records("shared")))
        await asyncio.sleep(0.3)
        assert not later.done()  # waits: the connector is being stored
        await failing.discard()
        return await later

    assert store.session(work) == 1
    assert queued(redis) == ids_of(store, "shared")


def test_a_connector_busy_too_long_is_a_store_error(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        await batches.open("crm").begin(1)
        with pytest.raises(StoreError, match="still being stored"):
            await batches.open("crm").begin(1)

    store.session(work, busy_wait=0.2)


def test_chunks_sent_twice_are_staged_once(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> tuple[list[list[int]], list[list[int]]]:
        batch = batches.open("crm")
        await batch.begin(1)
        chunks = [store.chunk(batch, 0, records("a", "b")), store.chunk(batch, 1, records("c"))]
        return await batch.stage(chunks), await batch.stage(chunks)  # a retried call

    assert store.session(work) == ([[], []], [[], []])


def test_a_batch_over_the_budget_is_refused_before_anything_is_stored(store: Store, redis: Redis):
    used = int(redis.info("memory")["used_memory"])

    async def work(batches: BatchStore) -> None:
        first = batches.open("crm")
        await first.begin(1_000_000)  # reserved while it is being stored
        with pytest.raises(OverBudget) as refused:
            await batches.open("other").begin(1_000_000)
        assert refused.value.retry_after > 0
        assert redis.get(osmos_holder_key("other")) is None  # nothing stored
        await first.discard()
        await batches.open("other").begin(1_000_000)  # the reservation went with the batch

    store.session(work, budget=str(used + 1_500_000))
    assert redis.hlen(OSMOS_RESERVED_KEY) == 1


def test_a_percent_budget_is_a_share_of_maxmemory_and_none_without_maxmemory(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> None:
        unbounded = batches.open("a")
        await unbounded.begin(10**12)  # maxmemory 0: no budget
        await unbounded.discard()
        used = int(redis.info("memory")["used_memory"])
        redis.config_set("maxmemory", str(2 * used + 4_000_000))
        try:
            await batches.open("b").begin(1_000_000)
            with pytest.raises(OverBudget):
                await batches.open("c").begin(3_000_000)
        finally:
            redis.config_set("maxmemory", "0")

    store.session(work, budget="50%")


def test_a_dedup_mark_expires_after_the_window(store: Store, redis: Redis):
    async def work(batches: BatchStore) -> list[int]:
        fresh = [await store.store(batches.open("crm"), records("a")) for _ in range(2)]
        await asyncio.sleep(1.1)
        fresh.append(await store.store(batches.open("crm"), records("a")))
        return fresh

    assert store.session(work, ttl=1.0) == [1, 0, 1]


def test_marks_of_the_previous_time_bucket_count_and_expired_ones_do_not(store: Store, redis: Redis):
    seconds, micros = redis.time()
    now_ms = seconds * 1000 + micros // 1000
    window = 3_600_000
    bucket = now_ms // window
    a, b = (store.ids.digest(r, canonical_json(r)) for r in records("a", "b"))
    prefix = "osma_router:osmos:seen:crm:"
    part = (a[0] * 256 + a[1]) % 1024
    redis.hset(f"{prefix}{bucket - 1}:{part}", a, now_ms + 60_000)  # marked late in the last bucket
    part = (b[0] * 256 + b[1]) % 1024
    redis.hset(f"{prefix}{bucket}:{part}", b, now_ms - 1)  # marked a window ago: expired

    async def work(batches: BatchStore) -> int:
        return await store.store(batches.open("crm"), records("a", "b"))

    assert store.session(work) == 1
    assert queued(redis) == ids_of(store, "b")
