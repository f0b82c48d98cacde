"""Storing an Osmos batch all-or-nothing, in chunks, without blocking Redis for long.

A batch of up to 250,000 records is too big for one atomic Redis step (building it would
hold the event loop, running it would hold Redis, for seconds), so it is stored in phases:

1. **Stage**, chunk by chunk (a few thousand records per script call, a few ms of Redis
   each). A record whose id is marked seen is a duplicate and is skipped. For the others
   the RQ job hashes are written at their final keys (`rq:job:<id>`) and the batch's own
   lists note the records and their job ids. No queue holds those ids and no dedup mark
   names them, so no worker sees them. A job hash that already exists (a concurrent batch
   staged the same record, or an older copy of the job is still around) is rewritten with
   the same content and noted as borrowed.
2. **Commit**, one script: it leaves out records that a concurrent batch committed
   meanwhile, checks that borrowed job hashes are still there (otherwise it writes nothing
   and the request answers 503), then marks the records seen and pushes the job ids onto
   their queues, with bulk commands only (about 4 µs a record on a slow machine: ~1 s for
   250,000). The end state is `dedup.py`'s for a webhook: never marked without its jobs.

Nothing half-stored: a batch that fails answers 4xx/5xx and discards what it staged (the
job hashes it created, of records nobody committed). A receiver that dies mid-batch leaves
staged hashes behind, invisible; every batch is listed with a deadline in
`osma_router:osmos:inflight` (pushed forward at each chunk), and the next batch to arrive,
on any receiver, sweeps batches past their deadline. Staged hashes carry no TTL on purpose:
removing 250,000 TTLs in the commit would double its time.

Dedup marks of a connector live in one sorted set, `osma_router:osmos:seen:<connector>`:
member the event id, score the time (ms, Redis's clock) the mark expires, so a batch is
checked and marked with bulk commands; expired members are trimmed as batches are staged.
A counter per connector, bumped by every commit, tells the commit whether any batch
committed since this one began staging; only then does it re-check its records.

The job hashes are RQ's own (route templates from `JobBuilder`) and the job data is
`JobBuilder.build`'s, laid out once per route around placeholders and filled in by the
staging script, so per record only the event id and the event body cross the wire. The
scripts are in `batch_scripts.py`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ResponseError

from ..crypto import Sealer
from ..exceptions import StagingLost
from ..keys import (
    OSMOS_INFLIGHT_KEY,
    RQ_JOB_PREFIX,
    RQ_QUEUE_PREFIX,
    RQ_QUEUES_KEY,
    osmos_batch_prefix,
    osmos_commits_key,
    osmos_seen_key,
)
from ..model.connectors import SOURCE
from ..model.routes import Route
from . import batch_scripts as scripts
from .dedup import rq_timestamp
from .enqueue import JobBuilder

STAGING_DEADLINE = 900  # seconds a batch may go without staging a chunk before it is swept
JOB_ID_HEAD = f"{SOURCE}_e-"  # routes.job_id: "<source>_e-<event id>_<route key>"
_JOB_ID_TAIL = re.compile(r"_[^_]+\Z")
_ID_PLACEHOLDER = "OSMOSEVENTIDPLACEHOLDER"
_BODY_PLACEHOLDER = b"OSMOS-BODY-PLACEHOLDER"


@dataclass(frozen=True)
class RouteLayout:
    """One route's job, around the two things that vary per record: event id and body."""

    job_id_head: str
    job_id_tail: str
    queue: str
    description: str
    data_head: bytes
    data_middle: bytes
    data_tail: bytes
    fields: Sequence[bytes | str | int | float]

    def job_id(self, event_id: str) -> str:
        return f"{self.job_id_head}{event_id}{self.job_id_tail}"

    def data(self, event_id: str, body_value: bytes) -> bytes:
        """The job data, given the event body as it sits in the spec (see `EventCoder`)."""
        return self.data_head + event_id.encode() + self.data_middle + body_value + self.data_tail

    def as_args(self) -> list[bytes | str | int | float]:
        return [
            self.job_id_head,
            self.job_id_tail,
            self.queue,
            self.description,
            self.data_head,
            self.data_middle,
            self.data_tail,
            len(self.fields),
            *self.fields,
        ]


def lay_out_route(
    builder: JobBuilder, event_type: str, received_at: datetime, route: Route, sealed: bool
) -> RouteLayout:
    """Split `builder.build`'s job for `route` around placeholders (built unsealed)."""
    plain = copy.copy(builder)
    plain.sealer = None
    (write,) = plain.build(SOURCE, _ID_PLACEHOLDER, event_type, _BODY_PLACEHOLDER, received_at, [route])
    job_head, job_tail = write.job_id.split(_ID_PLACEHOLDER)
    if job_head != JOB_ID_HEAD or not _JOB_ID_TAIL.match(job_tail):
        # The scripts read a job's event id back from its id (batch_scripts.py).
        raise RuntimeError(f"unexpected job id layout {write.job_id!r}: update batch_scripts.py")
    data_head, rest = write.data.split(_ID_PLACEHOLDER.encode())
    body_field = b'"body":"' + _BODY_PLACEHOLDER + b'"'
    middle, tail = rest.split(body_field)
    if sealed:
        middle, tail = middle + b'"sealed":"', b'"' + tail
    else:
        middle = middle + b'"body":'
    return RouteLayout(
        job_head,
        job_tail,
        write.queue,
        write.description,
        data_head,
        middle,
        tail,
        builder.templates[write.template],
    )


class EventCoder:
    """Turns a record into its event body, as the job spec carries it."""

    def __init__(self, event_type: str, received_at: datetime, sealer: Sealer | None) -> None:
        self.sealer = sealer
        created = received_at.astimezone(UTC).isoformat()
        self.head = b'{"id":"'
        self.middle = (
            b'","type":'
            + orjson.dumps(event_type)
            + b',"object":"event","created_at":'
            + orjson.dumps(created)
            + b',"data":{"object":'
        )

    def event(self, event_id: str, canonical: bytes) -> bytes:
        """`{"id", "type", "object", "created_at", "data": {"object": record}}` as JSON."""
        return self.head + event_id.encode() + self.middle + canonical + b"}}"

    def body_value(self, event: bytes) -> bytes:
        """The spec's `body` (a JSON string) or, with encryption keys, its `sealed` token."""
        if self.sealer is not None:
            return self.sealer.seal(event).encode("ascii")
        return orjson.dumps(event.decode("utf-8"))


@dataclass
class StagedChunk:
    """One chunk's records, as the staging script takes them: an event id, an event body
    and (when routes have `where`) the numbers of the matching routes, per record."""

    ids: list[str]
    bodies: list[bytes]
    routes: list[str] | None  # None: every route for every record
    duplicates: int = 0  # records left out: the same record came earlier in the batch


@dataclass(frozen=True)
class BatchOutcome:
    """What the commit did: records newly queued, and records already seen."""

    fresh: int
    duplicates: int


class BatchStore:
    """Stages chunks of one batch and commits them in one short atomic step."""

    def __init__(
        self, redis: AsyncRedis, dedup_ttl: float, *, staging_deadline: int = STAGING_DEADLINE
    ) -> None:
        self.redis = redis
        self.ttl_ms = max(1, round(dedup_ttl * 1000))
        self.staging_deadline = staging_deadline
        self._stage = redis.register_script(scripts.STAGE)
        self._commit = redis.register_script(scripts.COMMIT)
        self._discard = redis.register_script(scripts.DISCARD)
        self._stale = redis.register_script(scripts.STALE)

    def open(self, connector: str, layouts: Sequence[RouteLayout], client: AsyncRedis | None = None) -> Batch:
        """A new batch for `connector`, whose records get one job per layout (route).

        `client`: the connection to run it on (a big batch's commit may take longer than
        the receiver's usual Redis timeout); by default the store's.
        """
        return Batch(self, connector, os.urandom(12).hex(), layouts, client or self.redis)

    async def sweep(self, *, limit: int = 10) -> int:
        """Discard up to `limit` batches abandoned past their deadline; how many there were."""
        stale = await self._stale(keys=[OSMOS_INFLIGHT_KEY], args=[limit])
        for member in stale:
            connector, _, batch_id = member.decode().partition(":")
            await Batch(self, connector, batch_id).discard()
        return len(stale)


class Batch:
    """One batch being stored: `stage()` its chunks, then `commit()` or `discard()`."""

    def __init__(
        self,
        store: BatchStore,
        connector: str,
        batch_id: str,
        layouts: Sequence[RouteLayout] = (),
        client: AsyncRedis | None = None,
    ) -> None:
        self.store = store
        self.client = client or store.redis
        self.member = f"{connector}:{batch_id}"
        self.prefix = osmos_batch_prefix(self.member)
        self.seen = osmos_seen_key(connector)
        self.commits = osmos_commits_key(connector)
        self.staged_records = 0
        self.duplicates = 0
        self._counter: bytes | None = None
        self._route_args: list[bytes | str | int | float] = [len(layouts)]
        for layout in layouts:
            self._route_args.extend(layout.as_args())
        self._now = rq_timestamp()

    async def stage(self, chunk: StagedChunk) -> None:
        """Write one chunk's job hashes and its share of the batch's lists."""
        self.duplicates += chunk.duplicates
        if not chunk.ids:
            return
        first = self._counter is None
        args = [
            self.prefix,
            self.member,
            "1" if first else "0",
            self._now,
            RQ_JOB_PREFIX,
            self.store.staging_deadline,
            *self._route_args,
            len(chunk.ids),
            *chunk.ids,
            *chunk.bodies,
            *(chunk.routes if chunk.routes is not None else ["*"]),
        ]
        staged, duplicates, counter = await self._run(
            self.store._stage, [self.seen, OSMOS_INFLIGHT_KEY, self.commits], args
        )
        if first:
            self._counter = counter
        self.staged_records += int(staged)
        self.duplicates += int(duplicates)

    async def commit(self) -> BatchOutcome:
        """Queue every staged record not committed meanwhile by another batch; all or none."""
        if self.staged_records == 0:  # an empty batch, or nothing but duplicates
            if self._counter is not None:
                await self.discard()
            return BatchOutcome(0, self.duplicates)
        fresh, duplicates = await self._run(
            self.store._commit,
            [self.seen, OSMOS_INFLIGHT_KEY, self.commits, RQ_QUEUES_KEY],
            [
                self.prefix,
                self.member,
                self.store.ttl_ms,
                self._counter,
                self.staged_records,
                RQ_JOB_PREFIX,
                RQ_QUEUE_PREFIX,
            ],
        )
        return BatchOutcome(int(fresh), self.duplicates + int(duplicates))

    async def discard(self, *, max_calls: int = 1_000) -> None:
        """Drop what this batch staged, a chunk per call."""
        for _ in range(max_calls):
            if not await self._run(
                self.store._discard,
                [self.seen, OSMOS_INFLIGHT_KEY],
                [self.prefix, self.member, RQ_JOB_PREFIX],
            ):
                return
            await asyncio.sleep(0)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args, client=self.client)
        except ResponseError as exc:
            if str(exc).startswith("STAGING_LOST"):
                raise StagingLost(str(exc).removeprefix("STAGING_LOST ")) from None
            raise
