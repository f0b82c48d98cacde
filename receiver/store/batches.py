"""Storing an Osmos batch all-or-nothing, compactly, without holding Redis for long.

A batch of up to 250,000 records may take at most 2 × its body's bytes + 100 bytes per
record of Redis (docs/contract.md, "Osmos storage budget"), and Redis must never be busy
with it for long at a stretch. So records are kept in chunks, not one job per record:

- **Chunks.** About 1,000 records per chunk: their canonical JSON, one per line,
  compressed (zlib) and, with encryption keys, sealed; one hash per chunk
  (`osmos_chunk_key`: `records`, and a `reader:<route key>` field per job that still
  reads it).
- **Jobs.** One RQ job per (chunk, matching route), which runs the route's handler for
  each of the chunk's records (`worker/osmos.py`); a record that fails leaves the chunk
  as a job of its own, with the usual retries (`osmos_chunks.py`).
- **Dedup marks.** In hashes per connector, time bucket and part (`batch_scripts.py`): a
  field per record, the record's id digest (8 or 16 bytes), its value the expiry.

Storing happens in three steps, each one short Redis script:

1. **Begin.** One batch per connector is stored at a time: the batch takes the
   connector (its holder key) and is listed in `osma_router:osmos:inflight` with a
   deadline. Here the memory budget is checked: Redis's used memory, plus what batches
   being stored have reserved, plus this batch's bound must stay within the budget, or
   the batch is refused before anything is written (503). Another batch of the
   connector being stored means wait; one abandoned means discard it first.
2. **Stage**, several chunks per call (`STAGE_CHUNKS` in the endpoint: each mark hash is
   then touched once for several records; tens of ms of Redis a call): records already
   marked live are duplicates; the others are marked, and the chunk blobs are written. No
   batch of the connector can read the new marks before this one ends, and no job names
   a blob yet.
3. **Commit**: the chunk jobs are written and queued, and the connector is free again.
   About one job per 1,000 records: a few ms for a 250,000-record batch.

A batch that fails before its commit is discarded (`Batch.discard`): it leaves the
inflight set first, so it can stage and commit no more, then its marks and blobs are
removed a chunk per call, and only then is the connector free. A receiver that dies
mid-batch leaves its batch behind; the next batch of the connector, or any batch's
`sweep`, discards it once its deadline (pushed forward at each chunk) has passed.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ResponseError

from ..exceptions import OverBudget, StagingLost, StoreError
from ..keys import (
    OSMOS_INFLIGHT_KEY,
    OSMOS_RESERVED_KEY,
    RQ_JOB_PREFIX,
    RQ_QUEUE_PREFIX,
    RQ_QUEUES_KEY,
    osmos_batch_prefix,
    osmos_holder_key,
    osmos_seen_prefix,
)
from . import batch_scripts as scripts
from .dedup import dedup_ttl_ms, rq_timestamp
from .enqueue import JobWrite

STAGING_DEADLINE = 60  # seconds a batch may go without a step before it counts as abandoned
BUSY_WAIT = 120.0  # seconds a batch waits for another batch of its connector to end
SEEN_PARTS = 1024  # dedup mark hashes per connector and time bucket
RETRY_AFTER = 30  # seconds, in the answer to a batch over the budget
BATCH_OVERHEAD = 8_192  # bytes any batch may take on top of its records (see growth_bound)
_POLL = (0.05, 0.25)  # seconds between two looks at a busy connector, at random


def budget_arguments(budget: str) -> tuple[int, float]:
    """`OSMA_ROUTER_OSMOS_REDIS_BUDGET` as the begin script takes it: (bytes, percent of
    maxmemory); 0 means none. The setting is checked at start-up (`settings/values.py`)."""
    text = budget.strip()
    if text.endswith("%"):
        return 0, float(text[:-1])
    return int(text), 0.0


def part_of(digest: bytes) -> int:
    """The mark hash part of a record's digest (`batch_scripts.py`)."""
    return (digest[0] << 8 | digest[1]) % SEEN_PARTS


def mark_hashes(connector: str, digest: bytes, window_ms: int, now_ms: int) -> tuple[str, str]:
    """The two hashes that can hold a live mark for `digest` at `now_ms`: the current time
    bucket's and the previous one's (a mark lives one window), as `batch_scripts.py` names
    them."""
    bucket, part = now_ms // window_ms, part_of(digest)
    prefix = osmos_seen_prefix(connector)
    return f"{prefix}{bucket}:{part}", f"{prefix}{bucket - 1}:{part}"


def growth_bound(body_bytes: int, records: int) -> int:
    """The most an accepted batch may add to Redis (docs/contract.md), with what any batch
    costs whatever its size (a job per route, its first mark hashes): what a batch reserves
    of the budget."""
    return 2 * body_bytes + 100 * records + BATCH_OVERHEAD


@dataclass(frozen=True)
class StagedChunk:
    """One chunk as the stage script takes it."""

    number: int
    key: str
    digests: Sequence[bytes]  # one per record, in order
    blob: bytes  # b"": no job will read the chunk (no route matches any of its records)


@dataclass(frozen=True)
class BatchOutcome:
    """What a stored batch did: records newly stored, and records left out as duplicates."""

    fresh: int
    duplicates: int


class BatchStore:
    """Opens batches of a connector; see the module docstring."""

    def __init__(
        self,
        redis: AsyncRedis,
        dedup_ttl: float,
        budget: str = "0",
        *,
        staging_deadline: int = STAGING_DEADLINE,
        busy_wait: float = BUSY_WAIT,
    ) -> None:
        self.redis = redis
        self.window_ms = dedup_ttl_ms(dedup_ttl)
        self.budget = budget_arguments(budget)
        self.staging_deadline = staging_deadline
        self.busy_wait = busy_wait
        self._begin = redis.register_script(scripts.BEGIN)
        self._stage = redis.register_script(scripts.STAGE)
        self._commit = redis.register_script(scripts.COMMIT)
        self._discard = redis.register_script(scripts.DISCARD)
        self._stale = redis.register_script(scripts.STALE)

    def open(self, connector: str, client: AsyncRedis | None = None) -> Batch:
        """A new batch for `connector`; `client`: the connection to run it on (by default
        the store's)."""
        return Batch(self, f"{connector}:{os.urandom(12).hex()}", client or self.redis)

    async def sweep(self, *, limit: int = 10) -> int:
        """Discard up to `limit` batches abandoned past their deadline; how many there were."""
        stale = await self._stale(keys=[OSMOS_INFLIGHT_KEY], args=[limit])
        for member in stale:
            await Batch(self, member.decode(), self.redis).discard(own=False)
        return len(stale)


class Batch:
    """One batch being stored: `begin()`, `stage()` its chunks, then `commit()`, or
    `discard()`. Its id is `member`: `<connector>:<batch id>`."""

    def __init__(self, store: BatchStore, member: str, client: AsyncRedis) -> None:
        self.store = store
        self.client = client
        self.member = member
        self.connector, _, self.batch_id = member.partition(":")
        self.prefix = osmos_batch_prefix(member)
        self.holder = osmos_holder_key(self.connector)
        self.seen = osmos_seen_prefix(self.connector)
        self.duplicates = 0

    async def begin(self, estimate: int) -> None:
        """Take the connector and reserve `estimate` bytes of the budget; `OverBudget`
        when they do not fit, `StoreError` when the connector stays busy too long."""
        store = self.store
        budget_bytes, budget_percent = store.budget
        deadline = time.monotonic() + store.busy_wait
        while True:
            answer = await self._run(
                store._begin,
                [self.holder, OSMOS_INFLIGHT_KEY, OSMOS_RESERVED_KEY],
                [self.member, store.staging_deadline, estimate, budget_bytes, budget_percent],
            )
            state = answer[0].decode()
            if state == "ok":
                return
            if state == "over":
                raise OverBudget(
                    "Redis is at its memory budget for Osmos batches; nothing was stored, retry later",
                    retry_after=RETRY_AFTER,
                )
            if state == "stale":
                await Batch(store, answer[1].decode(), self.client).discard(own=False)
                continue
            if time.monotonic() > deadline:
                raise StoreError(f"another batch of connector {self.connector!r} is still being stored")
            await asyncio.sleep(random.uniform(*_POLL))

    async def stage(self, chunks: Sequence[StagedChunk]) -> list[list[int]]:
        """Mark the chunks' new records seen and write their blobs, in one call; per chunk,
        the positions of the records that were already seen (duplicates: no job runs them)."""
        store = self.store
        args: list[Any] = [self.member, self.prefix, store.staging_deadline, self.seen, store.window_ms]
        args.append(len(chunks))
        starts, place = [], 0
        parts: dict[int, tuple[list[bytes], bytearray]] = {}
        for chunk in chunks:
            args.extend((chunk.number, chunk.key, chunk.blob, len(chunk.digests)))
            starts.append(place)
            for digest in chunk.digests:
                group = parts.get(part_of(digest))
                if group is None:
                    group = parts[part_of(digest)] = ([], bytearray())
                group[0].append(digest)
                group[1].extend(place.to_bytes(2, "big"))
                place += 1
        if place > 65_536:
            raise ValueError("at most 65,536 records a staging call")
        args.append(len(parts))
        for number, (digests, places) in parts.items():
            args.extend((number, len(digests), bytes(places)))
        for digests, _ in parts.values():
            args.extend(digests)
        answer = await self._run(store._stage, [self.holder, OSMOS_INFLIGHT_KEY], args)
        seen: list[list[int]] = [[] for _ in chunks]
        for text in answer.split(b",") if answer else ():
            place = int(text)
            index = bisect.bisect_right(starts, place) - 1
            seen[index].append(place - starts[index])
        self.duplicates += sum(len(positions) for positions in seen)
        return seen

    async def commit(
        self,
        templates: bytes,
        readers: Sequence[tuple[str, Sequence[str]]],
        unread: Sequence[str],
        jobs: Sequence[JobWrite],
    ) -> None:
        """Queue the chunk jobs and end the batch, in one step.

        `templates`: the job hash templates as one JSON array (`JobWrite.template` counts
        from 0 into it); `readers`: (chunk key, the routes whose jobs read it); `unread`: chunk keys
        no job reads (every record matched by a route was a duplicate).
        """
        args: list[Any] = [
            self.member,
            self.prefix,
            RQ_JOB_PREFIX,
            RQ_QUEUE_PREFIX,
            rq_timestamp(),
            templates,
        ]
        args.append(len(readers))
        for key, routes in readers:
            args.extend((key, len(routes), *routes))
        args.append(len(unread))
        args.extend(unread)
        args.append(len(jobs))
        for job in jobs:
            args.extend((job.template + 1, job.job_id, job.queue, job.data, job.description))
        await self._run(
            self.store._commit, [self.holder, OSMOS_INFLIGHT_KEY, OSMOS_RESERVED_KEY, RQ_QUEUES_KEY], args
        )

    async def discard(self, *, own: bool = True, max_calls: int = 100_000) -> None:
        """Remove what the batch staged, a chunk per call (see the module docstring).

        `own=False`: a batch found abandoned, left alone if it turns out alive.
        """
        for _ in range(max_calls):
            step = await self._run(
                self.store._discard,
                [self.holder, OSMOS_INFLIGHT_KEY, OSMOS_RESERVED_KEY],
                [self.member, self.prefix, self.seen, SEEN_PARTS, "1" if own else "0"],
            )
            if step != 1:
                return
            await asyncio.sleep(0)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args, client=self.client)
        except ResponseError as exc:
            if str(exc).startswith("STAGING_LOST"):
                raise StagingLost(str(exc).removeprefix("STAGING_LOST ")) from None
            raise


def templates_json(templates: Sequence[Sequence[bytes | str | int | float]]) -> bytes:
    """Job hash templates as the commit script takes them (values as strings: Lua would
    turn JSON numbers into floats)."""
    return orjson.dumps(
        [[v.decode() if isinstance(v, bytes) else str(v) for v in fields] for fields in templates]
    )
