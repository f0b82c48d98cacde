"""`POST /ingest/osmos/{connector}`: an Osmos batch, checked and stored whole or not at all.

Checks run in this order and the first failure answers (docs/contract.md, "Errors"): connector
known (404), auth header (401), content type (415), body size while it streams in (413),
JSON (400), shape and record count (422 / 413 `too_many_records`), schema (422). Then the
records become events and are stored by `batches.Batch`: staged chunk by chunk, committed
in one short atomic step; a Redis failure anywhere answers 503 with nothing queued.

Memory: the body is read into one buffer, parsed once, and dropped; each record is released
as soon as its event is built, so a batch is held about once (measured in bench/osmos.py).
The event loop is handed back between validation slices and staging chunks, so webhooks
keep flowing while a big batch is ingested, and Redis stages one chunk while the next is
built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis as AsyncRedis
from starlette.types import Receive, Scope, Send

from ..exceptions import (
    HTTPFacingError,
    InvalidRecords,
    PayloadError,
    StoreUnavailable,
    TooManyRecords,
    Unauthorized,
    UnknownConnector,
    UnsupportedMediaType,
)
from ..model.connectors import (
    MAX_RECORDS,
    SOURCE,
    Connector,
    RecordError,
    RecordValidator,
    ValidationReport,
    event_id_function,
)
from ..model.routes import Route, RouteTable
from ..store.batches import Batch, BatchOutcome, BatchStore, EventCoder, StagedChunk, lay_out_route
from ..store.connection import UNAVAILABLE, connect_async
from .asgi import error_body, header, read_body, send_json
from .state import ReceiverState

log = logging.getLogger("osma_router.osmos")

CHUNK_RECORDS = 1_000  # records per staging script call: ~10 ms of Redis time on a slow machine
VALIDATE_SLICE = 10_000  # records validated between two yields to the event loop
LARGE_BODY = 4 * 1_048_576  # bodies above this are ingested one at a time per process


def check_media_type(value: bytes | None) -> None:
    media_type = (value or b"").split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        raise UnsupportedMediaType("the body must be sent as Content-Type: application/json")


def parse_records(body: bytes | bytearray) -> list[Any]:
    """The records of a body: one JSON object, or an array of at most `MAX_RECORDS`."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the body is not valid JSON: {exc.msg}", error_type="invalid_json") from None
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list):
        if len(parsed) > MAX_RECORDS:
            raise TooManyRecords(
                f"the batch holds {len(parsed)} records; at most {MAX_RECORDS} are accepted at once"
            )
        return parsed
    report = ValidationReport()
    report.add(RecordError(None, None, "the body must be a JSON object (one record) or an array of objects"))
    raise report.rejection("the body is not a record or an array of records; nothing was stored")


class OsmosIngest:
    """`POST /ingest/osmos/{connector}`, as a plain ASGI app."""

    source = SOURCE

    def __init__(self, state: ReceiverState) -> None:
        self.state = state
        self.connectors: Mapping[str, Connector] = state.connectors
        self.validators = {name: c.validator() for name, c in self.connectors.items()}
        self.store = BatchStore(state.redis, state.settings.dedup_ttl)
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
            # No body deadline here: a 256 MiB batch may rightly take a while to upload.
            body = await read_body(scope, receive, state.settings.osmos_max_body_bytes)
            received_at = datetime.fromtimestamp(state.clock(), UTC)
            async with self._gate(len(body)):
                records = parse_records(body)
                del body  # the parsed records are the one copy from here on
                count = len(records)
                await self._validate(self.validators[name], records)
                outcome = await self._store(connector, records, received_at, request_id)
        except ConnectionAbortedError:
            return
        except HTTPFacingError as exc:
            if exc.status_code < 500:
                state.metrics.deliveries.labels(self.source, "rejected", exc.error_type).inc()
            log.info(
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
            answer = (
                exc.body() if isinstance(exc, InvalidRecords) else error_body(exc.error_type, exc.message)
            )
            await send_json(send, exc.status_code, answer, request_id)
            return
        state.metrics.deliveries.labels(self.source, "accepted", "").inc(outcome.fresh)
        state.metrics.deliveries.labels(self.source, "duplicate", "").inc(outcome.duplicates)
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

    @contextlib.asynccontextmanager
    async def _gate(self, size: int) -> AsyncIterator[None]:
        # Two 250k batches at once would hold two parsed batches: take big ones in turn.
        if size <= LARGE_BODY:
            yield
            return
        async with self._large:
            yield

    async def _validate(self, validator: RecordValidator, records: Sequence[Any]) -> None:
        report = ValidationReport()
        for start in range(0, len(records), VALIDATE_SLICE):
            validator.validate(records, start, start + VALIDATE_SLICE, report)
            await asyncio.sleep(0)
        if report:
            raise report.rejection(
                f"{report.bad_records} of {len(records)} record(s) break the connector's schema; "
                "nothing was stored"
            )

    async def _store(
        self, connector: Connector, records: list[Any], received_at: datetime, request_id: str
    ) -> BatchOutcome:
        builder = self.state.pipeline.builder
        routes = self.state.pipeline.router.routes_for_type(connector.event_type)
        layouts = [
            lay_out_route(builder, connector.event_type, received_at, route, builder.sealer is not None)
            for route in routes
        ]
        events = RecordEvents(
            connector,
            self.state.pipeline.router,
            routes,
            EventCoder(connector.event_type, received_at, builder.sealer),
        )
        async with self._client_for(len(records)) as client:
            batch = self.store.open(connector.name, layouts, client)
            pending: asyncio.Future[None] | None = None
            try:
                await self.store.sweep()  # batches a dead receiver left half-staged
                for start in range(0, len(records), CHUNK_RECORDS):
                    chunk = events.chunk(records, start, CHUNK_RECORDS)
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(batch.stage(chunk))
                    await asyncio.sleep(0)  # let the chunk go out while the next one is built
                if pending is not None:
                    await pending
                return await batch.commit()
            except InvalidRecords:
                await self._abandon(batch, pending, request_id)
                raise
            except UNAVAILABLE as exc:  # nothing was queued
                await self._abandon(batch, pending, request_id)
                log.warning(
                    "could not store an osmos batch; answering 503 so the sender retries",
                    extra={
                        "request_id": request_id,
                        "connector": connector.name,
                        "reason": type(exc).__name__,
                    },
                )
                raise StoreUnavailable("the event store is unavailable; retry later") from None

    @contextlib.asynccontextmanager
    async def _client_for(self, count: int) -> AsyncIterator[AsyncRedis]:
        """The receiver's Redis client, or for a multi-chunk batch one of its own whose
        timeout allows for a long commit (webhooks keep their short one)."""
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
        except UNAVAILABLE as exc:  # the next batch's sweep removes it
            log.info(
                "could not discard a staged osmos batch; the next batch sweeps it",
                extra={"request_id": request_id, "reason": type(exc).__name__},
            )


class RecordEvents:
    """Turns records into a staging chunk: event ids, event bodies, and routes when some
    route of the event type has a `where` (then per record)."""

    def __init__(
        self, connector: Connector, router: RouteTable, routes: Sequence[Route], coder: EventCoder
    ) -> None:
        self.event_id = event_id_function(connector)
        self.coder = coder
        self.router = router
        self.event_type = connector.event_type
        self.conditional = any(route.where for route in routes)
        self.numbers = {route.index: str(n) for n, route in enumerate(routes, start=1)}
        self.taken: set[str] = set()  # ids of this batch so far: a repeated record is a duplicate

    def chunk(self, records: list[Any], start: int, size: int) -> StagedChunk:
        """The chunk of `records[start:start + size]`; each record is released once built."""
        chunk = StagedChunk([], [], [] if self.conditional else None)
        dumps, sort_keys = orjson.dumps, orjson.OPT_SORT_KEYS
        ids, bodies, choices = chunk.ids, chunk.bodies, chunk.routes
        event_id, event, body_value = self.event_id, self.coder.event, self.coder.body_value
        taken = self.taken
        for index in range(start, min(start + size, len(records))):
            record = records[index]
            try:
                canonical = dumps(record, option=sort_keys)
            except orjson.JSONEncodeError:
                raise unencodable(records, index) from None
            identity = event_id(record, canonical)
            records[index] = None
            if identity in taken:
                chunk.duplicates += 1
                continue
            taken.add(identity)
            ids.append(identity)
            bodies.append(body_value(event(identity, canonical)))
            if choices is not None:
                matched = self.router.match(self.event_type, record)
                choices.append(",".join(self.numbers[route.index] for route in matched))
        return chunk


def unencodable(records: list[Any], first: int) -> InvalidRecords:
    """Records orjson reads but cannot write back (nested deeper than it writes)."""
    report = ValidationReport()
    for index in range(first, len(records)):
        try:
            orjson.dumps(records[index])
        except orjson.JSONEncodeError:
            report.bad_records += 1
            report.add(RecordError(index, None, "the record is nested too deeply to be stored"))
    return report.rejection(f"{report.bad_records} record(s) cannot be stored; nothing was stored")
