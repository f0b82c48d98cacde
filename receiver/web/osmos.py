"""`POST /ingest/osmos/{connector}`: an Osmos batch, checked and stored whole or not at all.

Checks run in this order and the first failure answers (docs/contract.md, "Errors"): connector
known (404), auth header (401), content type (415), body size while it streams in (413),
JSON, shape and record count, slice by slice (400 / 422 / 413 `too_many_records`), schema
(422), the Redis memory budget for batches (503 with `Retry-After`). Then the records are
stored by `store.batches.Batch`; a Redis failure anywhere answers 503 with nothing queued.

Memory: a big body (over 4 MiB, or of unknown length) waits for the process's one large
batch slot before it is read, so a process reads and holds one big batch at a time. The
body is parsed a slice at a time (`model.osmos_body`), twice: once to count and check the
records, once to store them; at most one slice of records is held as objects at a time.
The event loop is handed back between slices and chunks, so webhooks keep flowing, and
Redis stages one chunk while the next is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis as AsyncRedis
from starlette.types import Receive, Scope, Send

from ..crypto import Sealer
from ..exceptions import (
    HTTPFacingError,
    InvalidRecords,
    OverBudget,
    StoreUnavailable,
    Unauthorized,
    UnknownConnector,
    UnsupportedMediaType,
)
from ..keys import osmos_chunk_key
from ..model.connectors import SOURCE, Connector, RecordError, RecordIds, RecordValidator, ValidationReport
from ..model.osmos_body import OsmosBody
from ..model.routes import Route
from ..store.batches import Batch, BatchOutcome, BatchStore, StagedChunk, growth_bound, templates_json
from ..store.connection import UNAVAILABLE, connect_async
from ..store.enqueue import JobWrite
from ..store.osmos_chunks import ChunkJobs, pack_records
from .asgi import error_body, header, read_body, send_json
from .state import ReceiverState

log = logging.getLogger("osma_router.osmos")

CHUNK_RECORDS = 1_000  # records per chunk: one blob, one job per route
STAGE_CHUNKS = 8  # chunks per staging call: each mark hash touched once for ~8 records
LARGE_BODY = 4 * 1_048_576  # bodies above this (or of unknown length) are read one at a time per process


def check_media_type(value: bytes | None) -> None:
    media_type = (value or b"").split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        raise UnsupportedMediaType("the body must be sent as Content-Type: application/json")


def declared_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


class OsmosIngest:
    """`POST /ingest/osmos/{connector}`, as a plain ASGI app."""

    source = SOURCE

    def __init__(self, state: ReceiverState) -> None:
        self.state = state
        self.connectors: Mapping[str, Connector] = state.connectors
        self.validators = {name: c.validator() for name, c in self.connectors.items()}
        settings = state.settings
        self.store = BatchStore(state.redis, settings.dedup_ttl, settings.osmos_redis_budget)
        self._large = asyncio.Semaphore(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        request_id = (header(scope, b"x-request-id") or os.urandom(8).hex().encode()).decode("latin-1")[:64]
        name = str(scope.get("path_params", {}).get("connector", ""))
        count: int | None = None
        try:
            connector = self.connectors.get(name)
            if connector is None:
                raise UnknownConnector(f"no Osmos connector is configured as {name[:64]!r}")
            if not connector.authorized(header(scope, connector.header_key)):
                raise Unauthorized(f"the {connector.header} header is missing or wrong")
            check_media_type(header(scope, b"content-type"))
            async with self._gate(declared_length(scope)):
                # No body deadline here: a 256 MiB batch may rightly take a while to upload.
                body = await read_body(scope, receive, state.settings.osmos_max_body_bytes)
                received_at = datetime.fromtimestamp(state.clock(), UTC)
                records = OsmosBody(body)
                await self._validate(self.validators[name], records)
                count = records.count
                outcome = await self._store(connector, records, len(body), received_at, request_id)
        except ConnectionAbortedError:
            return
        except HTTPFacingError as exc:
            await self._refuse(send, exc, name, count, request_id)
            return
        state.metrics.deliveries.labels(self.source, "accepted").inc(outcome.fresh)
        state.metrics.deliveries.labels(self.source, "duplicate").inc(outcome.duplicates)
        if state.log_deliveries:
            log.info(
                f"osmos batch stored: {outcome.fresh} new record(s), {outcome.duplicates} duplicate(s)",
                extra={
                    "request_id": request_id,
                    "connector": name,
                    "source": self.source,
                    "records": count,
                    "outcome": "accepted",
                },
            )
        await send_json(send, 202, orjson.dumps({"status": "accepted", "records": count}), request_id)

    async def _refuse(
        self, send: Send, exc: HTTPFacingError, name: str, count: int | None, request_id: str
    ) -> None:
        if exc.status_code < 500:
            self.state.metrics.rejected(self.source, exc.error_type)
        log.log(
            logging.WARNING if isinstance(exc, OverBudget) else logging.INFO,
            "osmos batch rejected",
            extra={
                "request_id": request_id,
                "connector": name[:64],
                "source": self.source,
                "records": count,
                "status": exc.status_code,
                "error_type": exc.error_type,
            },
        )
        answer = exc.body() if isinstance(exc, InvalidRecords) else error_body(exc.error_type, exc.message)
        headers = [(b"retry-after", b"%d" % exc.retry_after)] if isinstance(exc, OverBudget) else None
        await send_json(send, exc.status_code, answer, request_id, headers=headers)

    @contextlib.asynccontextmanager
    async def _gate(self, length: int | None) -> AsyncIterator[None]:
        # Two 250k batches at once would hold two bodies and two slices: take big ones in
        # turn, and before reading them (the rest waits in the socket, not in memory).
        if length is not None and length <= LARGE_BODY:
            yield
            return
        async with self._large:
            yield

    async def _validate(self, validator: RecordValidator, body: OsmosBody) -> None:
        report = ValidationReport()
        check = validator.check
        for offset, records in body.slices():
            for index, record in enumerate(records, start=offset):
                check(index, record, report)
            await asyncio.sleep(0)
        if report:
            raise report.rejection(
                f"{report.bad_records} of {body.count} record(s) break the connector's schema; "
                "nothing was stored"
            )

    async def _store(
        self, connector: Connector, body: OsmosBody, body_bytes: int, received_at: datetime, request_id: str
    ) -> BatchOutcome:
        state = self.state
        routes = state.pipeline.router.routes_for_type(connector.event_type)
        sealer = state.pipeline.builder.sealer
        jobs = ChunkJobs(
            state.pipeline.builder,
            routes,
            connector.name,
            connector.key,
            connector.event_type,
            received_at,
            sealer is not None,
        )
        async with self._client_for(body.count) as client:
            batch = self.store.open(connector.name, client)
            chunks = RecordChunks(RecordIds(connector.name, connector.key), routes, batch.member, sealer)
            pending: asyncio.Future[None] | None = None
            try:
                await self.store.sweep()  # batches a dead receiver left half-stored
                await batch.begin(growth_bound(body_bytes, body.count))
                group: list[StagedChunk] = []
                for offset, records in body.slices():
                    for chunk in chunks.add(records, offset):
                        group.append(chunk)
                        if len(group) < STAGE_CHUNKS:
                            continue
                        if pending is not None:
                            await pending
                        pending = asyncio.ensure_future(self._stage(batch, chunks, group))
                        group = []
                        await asyncio.sleep(0)  # let the chunks go out while the next ones are built
                last = chunks.finish()
                if last is not None:
                    group.append(last)
                if pending is not None:
                    await pending
                if group:
                    await self._stage(batch, chunks, group)
                await chunks.commit(batch, jobs)
                duplicates = chunks.duplicates + batch.duplicates
                return BatchOutcome(body.count - duplicates, duplicates)
            except Unencodable as exc:
                await self._abandon(batch, pending, request_id)
                raise unencodable(body, exc.index) from None
            except OverBudget:
                raise  # refused before anything was stored
            except UNAVAILABLE as exc:  # nothing was queued
                await self._abandon(batch, pending, request_id)
                log.warning(
                    "could not store an osmos batch; answering 503",
                    extra={
                        "request_id": request_id,
                        "connector": connector.name,
                        "reason": type(exc).__name__,
                    },
                )
                raise StoreUnavailable("the event store is unavailable; retry later") from None

    @staticmethod
    async def _stage(batch: Batch, chunks: RecordChunks, group: Sequence[StagedChunk]) -> None:
        for chunk, seen in zip(group, await batch.stage(group), strict=True):
            chunks.seen[chunk.number] = seen

    @contextlib.asynccontextmanager
    async def _client_for(self, count: int) -> AsyncIterator[AsyncRedis]:
        """The receiver's Redis client, or for a multi-chunk batch one of its own, with no
        retry of a call that timed out and a timeout for long scripts (webhooks keep theirs)."""
        if count <= CHUNK_RECORDS:
            yield self.state.redis
            return
        client = connect_async(self.state.settings, "batch")
        try:
            yield client
        finally:
            await client.aclose()

    @staticmethod
    async def _abandon(batch: Batch, pending: asyncio.Future[None] | None, request_id: str) -> None:
        if pending is not None:
            # Only waited for so that discard runs after it; what it raised is being answered.
            with contextlib.suppress(Exception):
                await pending
        try:
            await batch.discard()
        except UNAVAILABLE as exc:  # a later batch sweeps it once its deadline passes
            log.info(
                "could not discard an osmos batch; a later batch sweeps it",
                extra={"request_id": request_id, "reason": type(exc).__name__},
            )


class Unencodable(Exception):
    """A record orjson reads but cannot write back (nested deeper than it writes)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class _Open:
    """The chunk being filled."""

    lines: list[bytes] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    repeats: dict[int, int] = field(default_factory=dict)
    matches: dict[int, list[int]] = field(default_factory=dict)  # route position -> record positions


@dataclass(frozen=True)
class _Closed:
    """A staged chunk, as the commit needs it."""

    records: int
    repeats: Mapping[int, int]
    matches: Mapping[int, Sequence[int]]


class RecordChunks:
    """Turns records into chunks: canonical lines, id digests, and for routes with `where`
    the records they match. An identical record already in the batch is left out with a
    `key`; without one it is a row of its own, with its occurrence in its id (`RecordIds`)."""

    def __init__(self, ids: RecordIds, routes: Sequence[Route], member: str, sealer: Sealer | None) -> None:
        self.ids = ids
        self.routes = routes
        self.member = member
        self.sealer = sealer
        self.keyed = ids.key is not None
        self.conditional = [(n, route) for n, route in enumerate(routes) if route.where]
        self.everything = any(not route.where for route in routes)
        self.taken: set[bytes] = set()
        self.occurrences: dict[bytes, int] = {}
        self.duplicates = 0  # left out: the same record came earlier in the batch (with a key)
        self.closed: list[_Closed] = []
        self.seen: dict[int, list[int]] = {}  # chunk number -> positions already marked in Redis
        self._open = self._new()

    def _new(self) -> _Open:
        return _Open(matches={n: [] for n, _ in self.conditional})

    def add(self, records: list[Any], offset: int) -> Iterator[StagedChunk]:
        """The chunks that `records` (the first at `offset` in the batch) fill up."""
        dumps, sort_keys = orjson.dumps, orjson.OPT_SORT_KEYS
        digest_of, taken, keyed, conditional = self.ids.digest, self.taken, self.keyed, self.conditional
        chunk = self._open
        for index, record in enumerate(records):
            try:
                canonical = dumps(record, option=sort_keys)
            except orjson.JSONEncodeError:
                raise Unencodable(offset + index) from None
            digest = digest_of(record, canonical)
            if digest in taken:
                if keyed:
                    self.duplicates += 1
                    continue
                occurrence = self.occurrences.get(digest, 1) + 1
                self.occurrences[digest] = occurrence
                digest = digest_of(record, canonical, occurrence)
                chunk.repeats[len(chunk.lines)] = occurrence
            taken.add(digest)
            position = len(chunk.lines)
            chunk.lines.append(canonical)
            chunk.digests.append(digest)
            for n, route in conditional:
                if route.matches_object(record):
                    chunk.matches[n].append(position)
            records[index] = None  # released once in its chunk
            if position + 1 == CHUNK_RECORDS:
                yield self._close()
                chunk = self._open

    def finish(self) -> StagedChunk | None:
        return self._close() if self._open.lines else None

    def _close(self) -> StagedChunk:
        chunk, number = self._open, len(self.closed)
        self._open = self._new()
        read = self.everything or any(chunk.matches.values())
        self.closed.append(_Closed(len(chunk.lines), chunk.repeats, chunk.matches))
        return StagedChunk(
            number=number,
            key=osmos_chunk_key(self.member, number),
            digests=chunk.digests,
            blob=pack_records(chunk.lines, self.sealer) if read else b"",
        )

    async def commit(self, batch: Batch, jobs: ChunkJobs) -> None:
        """Queue a job per chunk and route that runs any record not seen before."""
        writes: list[JobWrite] = []
        readers: list[tuple[str, list[str]]] = []
        unread: list[str] = []
        for number, closed in enumerate(self.closed):
            seen = set(self.seen.get(number, ()))
            made: list[str] = []
            for n, plan in enumerate(jobs.routes):
                matched = closed.matches.get(n)  # None: the route has no `where`
                candidates = range(closed.records) if matched is None else matched
                run = [p for p in candidates if p not in seen]
                if not run:
                    continue
                everything = matched is None and len(run) == closed.records
                writes.append(
                    jobs.job(
                        plan, self.member, number, closed.records, None if everything else run, closed.repeats
                    )
                )
                made.append(plan.route.key)
            key = osmos_chunk_key(self.member, number)
            if made:
                readers.append((key, made))
            else:
                unread.append(key)
        await batch.commit(templates_json(jobs.templates), readers, unread, writes)


def unencodable(body: OsmosBody, first: int) -> InvalidRecords:
    """The 422 naming every record, from `first` on, that cannot be written back."""
    report = ValidationReport()
    for offset, records in body.slices():
        for index, record in enumerate(records, start=offset):
            if index < first:
                continue
            try:
                orjson.dumps(record)
            except orjson.JSONEncodeError:
                report.bad_records += 1
                report.add(RecordError(index, None, "the record is nested too deeply to be stored"))
    return report.rejection(f"{report.bad_records} record(s) cannot be stored; nothing was stored")
