"""What an Osmos batch left in Redis, read the way the service reads it: the records its
chunk jobs will run (through the worker's own `chunk_records`), its dedup marks, and
whether anything of a batch is left at all (the storage: receiver/store/batches.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from redis import Redis

from receiver.crypto import Sealer
from receiver.keys import OSMOS_INFLIGHT_KEY, OSMOS_RESERVED_KEY, osmos_seen_prefix
from receiver.model.connectors import RecordIds
from receiver.model.events import parse_time
from receiver.store.osmos_chunks import CHUNK_KIND, EventCoder, unpack_records
from receiver.worker.osmos import chunk_records

QUEUE = "rq:queue:osma-router"
# The connector most Osmos tests use: records with a string `customer_id`, no key field.
CRM_CONNECTOR = """
[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
fields = [{ name = "customer_id", type = "string" }]
"""


@dataclass(frozen=True)
class QueuedRecord:
    """One record queued for one route: in a chunk job, or in a job of its own."""

    job_id: str
    event_id: str
    route: str  # the route's key
    spec: dict[str, Any]  # the job's spec
    event: bytes  # the event as its handler gets it (and a job of its own carries it)


def job_spec(redis: Redis, job_id: str) -> dict[str, Any]:
    data = orjson.loads(redis.hget(f"rq:job:{job_id}", "data"))
    return data[2][0]  # type: ignore[no-any-return]


def queued_jobs(redis: Redis, queue: str = QUEUE) -> list[str]:
    return [job_id.decode() for job_id in redis.lrange(queue, 0, -1)]


def queued_records(redis: Redis, queue: str = QUEUE, sealer: Sealer | None = None) -> list[QueuedRecord]:
    """Every record the jobs of `queue` will run, in queue order."""
    return list(_records(redis, queue, sealer))


def _records(redis: Redis, queue: str, sealer: Sealer | None) -> Iterator[QueuedRecord]:
    for job_id in queued_jobs(redis, queue):
        spec = job_spec(redis, job_id)
        route = str(spec["route"]["key"])
        if spec.get("kind") != CHUNK_KIND:
            body = (
                sealer.open(spec["sealed"])
                if "sealed" in spec and sealer
                else str(spec.get("body", "")).encode()
            )
            yield QueuedRecord(job_id, str(spec["event_id"]), route, spec, body)
            continue
        blob = redis.hget(spec["chunk"], "records")
        assert blob is not None, f"chunk job {job_id} has no chunk"
        coder = EventCoder(spec["event_type"], parse_time(spec["received_at"]))  # type: ignore[arg-type]
        for record in chunk_records(spec, unpack_records(blob, sealer)):
            event = coder.event(record.event_id, record.canonical)
            yield QueuedRecord(job_id, record.event_id, route, spec, event)


def marks(redis: Redis, connector: str) -> list[bytes]:
    """The digests of the connector's live dedup marks."""
    now_ms = time.time() * 1000
    found = []
    for key in redis.scan_iter(match=osmos_seen_prefix(connector) + "*", count=1000):
        for digest, expires in redis.hgetall(key).items():
            if int(expires) > now_ms:
                found.append(digest)
    return found


def marked_ids(redis: Redis, connector: str, key: str | None) -> list[str]:
    """The event ids the connector's live dedup marks stand for, sorted."""
    ids = RecordIds(connector, key)
    return sorted(ids.event_id(digest) for digest in marks(redis, connector))


def batch_leftovers(redis: Redis) -> list[bytes]:
    """Keys a batch keeps only while it is being stored (none once it ended)."""
    left = list(redis.scan_iter("osma_router:osmos:batch:*")) + list(
        redis.scan_iter("osma_router:osmos:holder:*")
    )
    if redis.zcard(OSMOS_INFLIGHT_KEY) or redis.hlen(OSMOS_RESERVED_KEY):
        left += [OSMOS_INFLIGHT_KEY.encode(), OSMOS_RESERVED_KEY.encode()]
    return left


def nothing_stored(redis: Redis, connector: str = "crm") -> bool:
    """No queued job, no job hash, no chunk, no dedup mark, no batch left behind."""
    return (
        redis.llen(QUEUE) == 0
        and not list(redis.scan_iter("rq:job:*"))
        and not list(redis.scan_iter("osma_router:osmos:chunk:*"))
        and not marks(redis, connector)
        and not batch_leftovers(redis)
    )
