"""Osmos records at rest: chunk blobs, the chunk jobs that run them, and the job a failing
record leaves behind (the storage itself: `batches.py`).

A chunk blob is the chunk's records as canonical JSON, one per line (canonical JSON has no
raw newline), compressed with zlib and, with encryption keys, sealed. Its job spec names
the chunk key, the route, and which of the chunk's records it runs; the worker rebuilds
each record's event id from the line's bytes (`RecordIds`), so ids are never stored.

A record whose handler fails leaves the chunk as an ordinary handler job (`run_handler`)
under its own id, `osmos_e-<event id>_<route key>`, carrying its event like any queued
event: `failed list` shows it, `failed retry` runs that record alone, and its retries
follow the route's policy from the attempt it failed in.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from redis import Redis
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.serializers import JSONSerializer

from ..crypto import Sealer
from ..exceptions import PermanentError
from ..keys import osmos_chunk_key
from ..model.connectors import SOURCE
from ..model.routes import Route, job_id_head
from . import batch_scripts as scripts
from .enqueue import (
    FAILURE_TTL,
    JOB_FUNCTION,
    RESULT_TTL,
    SPEC_VERSION,
    JobBuilder,
    JobWrite,
    route_spec,
    route_template,
)

CHUNK_JOB_FUNCTION = "receiver.jobs.run_osmos_chunk"
CHUNK_KIND = "osmos_chunk"
FERNET_PREFIX = b"gAAAAA"  # every Fernet token starts so (version byte 0x80, base64)
COMPRESSION_LEVEL = 1  # zlib: a 250k-record batch in ~0.2 s, about a sixth of its size


def pack_records(lines: Sequence[bytes], sealer: Sealer | None) -> bytes:
    """A chunk blob: the lines, compressed, then sealed when there are keys."""
    packed = zlib.compress(b"\n".join(lines), COMPRESSION_LEVEL)
    return sealer.seal(packed).encode("ascii") if sealer is not None else packed


def unpack_records(blob: bytes, sealer: Sealer | None) -> list[bytes]:
    """The lines of a chunk blob, sealed or not (a Fernet token starts `gAAAAA`, zlib data
    never does), so a blob sealed after its jobs were queued (`rekey`) still reads;
    `PermanentError` when it is sealed and cannot be opened."""
    if blob.startswith(FERNET_PREFIX):
        if sealer is None:
            raise PermanentError(
                "this chunk's records are encrypted but OSMA_ROUTER_ENCRYPTION_KEYS is not set on the worker"
            )
        blob = sealer.open(blob)
    return zlib.decompress(blob).split(b"\n")


class EventCoder:
    """A record's event, as bytes: `{"id", "type", "object", "created_at", "data": {"object"}}`."""

    def __init__(self, event_type: str, received_at: datetime) -> None:
        self.created_at = received_at.astimezone(UTC).isoformat()
        self.head = b'{"id":"'
        self.middle = (
            b'","type":'
            + orjson.dumps(event_type)
            + b',"object":"event","created_at":'
            + orjson.dumps(self.created_at)
            + b',"data":{"object":'
        )

    def event(self, event_id: str, canonical: bytes) -> bytes:
        return self.head + event_id.encode() + self.middle + canonical + b"}}"


@dataclasses.dataclass(frozen=True)
class ChunkRoute:
    """One route's chunk jobs in one batch: the job hash template and the spec fields they share."""

    route: Route
    template: int
    queue: str
    shared: Mapping[str, Any]


class ChunkJobs:
    """Builds the chunk jobs of one batch (one per chunk and route that runs any record)."""

    def __init__(
        self,
        builder: JobBuilder,
        routes: Sequence[Route],
        connector: str,
        key: str | None,
        event_type: str,
        received_at: datetime,
        sealed: bool,
    ) -> None:
        self.routes: list[ChunkRoute] = []
        self.templates: list[tuple[bytes | str | int | float, ...]] = []
        received = received_at.astimezone(UTC).isoformat()
        for route in routes:
            queue = builder.queue_of(route)
            # No limit on the chunk job itself: each record runs under the route's
            # timeout (worker/osmos.py), and a chunk may hold a thousand of them.
            self.templates.append(route_template(dataclasses.replace(route, timeout=-1), queue))
            shared = {
                "v": SPEC_VERSION,
                "kind": CHUNK_KIND,
                "source": SOURCE,
                "connector": connector,
                "key": key,
                "event_type": event_type,
                "received_at": received,
                "sealed": sealed,
                "route": route_spec(route),
                "record_job": {
                    "queue": queue,
                    "timeout": route.timeout,
                    "intervals": route.retry_intervals(),
                    "description": f"{route.handler} for {SOURCE} event {event_type}",
                },
            }
            self.routes.append(ChunkRoute(route, len(self.templates) - 1, queue, shared))

    def job(
        self,
        plan: ChunkRoute,
        member: str,
        number: int,
        records: int,
        positions: Sequence[int] | None,
        repeats: Mapping[int, int],
    ) -> JobWrite:
        """The job of chunk `number` of batch `member` for one route; `positions`: the
        records it runs (None: all), `repeats`: position -> occurrence (see `RecordIds`)."""
        spec = dict(plan.shared)
        spec["chunk"] = osmos_chunk_key(member, number)
        spec["records"] = records
        if positions is not None:
            spec["positions"] = list(positions)
        if repeats:
            spec["repeats"] = {str(position): n for position, n in repeats.items()}
        batch_id = member.rpartition(":")[2]
        route = plan.route
        return JobWrite(
            job_id=f"{SOURCE}_c-{batch_id}-{number}_{route.key}",
            queue=plan.queue,
            template=plan.template,
            data=orjson.dumps([CHUNK_JOB_FUNCTION, None, [spec], {}]),
            # No record data in the description: it shows in `rq info` and logs.
            description=f"{route.handler} for {records} {SOURCE} records of type {spec['event_type']}",
        )


class Chunks:
    """What a worker does with chunk blobs: read one, and let go of it."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._release = redis.register_script(scripts.RELEASE)

    def read(self, key: str) -> bytes | None:
        blob = self.redis.hget(key, "records")
        return blob if isinstance(blob, bytes) else None

    def release(self, key: str, route: str) -> None:
        """The job of `route` is done with the chunk; the last of its jobs removes it."""
        self._release(keys=[key], args=[route])

    def keep_for(self, key: str, seconds: int) -> None:
        """A chunk job that failed for good keeps its blob as long as RQ keeps the job
        (for `failed retry`), then the blob goes too."""
        self.redis.expire(key, seconds)


def record_job(
    redis: Redis, chunk: Mapping[str, Any], event_id: str, event: bytes, sealer: Sealer | None
) -> Job:
    """The handler job a failing record leaves the chunk as, not saved yet: what
    `JobBuilder.build` and `route_template` make for an event of its own."""
    route = chunk["route"]
    params = chunk["record_job"]
    # Sealed whenever the worker has keys, as the receiver would have sealed it.
    payload: dict[str, Any] = (
        {"sealed": sealer.seal(event)} if sealer is not None else {"body": event.decode()}
    )
    spec = {
        "v": SPEC_VERSION,
        "source": chunk["source"],
        "event_id": event_id,
        "event_type": chunk["event_type"],
        "received_at": chunk["received_at"],
        "route": route,
        **payload,
    }
    retries = int(route.get("retries", 0))
    job = Job.create(
        JOB_FUNCTION,
        args=[spec],
        connection=redis,
        serializer=JSONSerializer,
        id=job_id_head(str(chunk["source"]), event_id) + str(route["key"]),
        timeout=int(params["timeout"]),
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=retries, interval=list(params["intervals"])) if retries else None,
        description=str(params["description"]),
        origin=str(params["queue"]),
    )
    job.meta = {}
    return job


def park(redis: Redis, job: Job, exc_text: str) -> str:
    """Save a record's job after its failed attempt, as RQ would after a failure: scheduled
    for its next attempt while it has retries left, else in the failed registry.
    Returns "retried" or "failed" (the job counts' outcome)."""
    queue = Queue(job.origin, connection=redis, serializer=JSONSerializer)
    job.ended_at = datetime.now(UTC)
    if job.should_retry:
        interval = job.get_retry_interval()
        job.retries_left = (job.retries_left or 1) - 1
        if interval:
            queue.schedule_job(job, datetime.now(UTC) + timedelta(seconds=interval))
        else:
            queue.enqueue_job(job)
        return "retried"
    with redis.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job.save(pipeline=pipe)
        job.failed_job_registry.add(job, ttl=job.failure_ttl, exc_string=exc_text, pipeline=pipe)
        pipe.execute()
    return "failed"
