"""The receiver: an ASGI app whose whole HTTP surface is the `routes` list below.

`POST /webhooks/osma` is the hot path and is written against raw ASGI (no Request or
Response objects): read the body under the size limit, verify, parse, route, and store
with one grouped Redis call. Nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..crypto import Sealer
from ..exceptions import BodyTooLarge, HTTPFacingError, RequestTimeout, StoreUnavailable
from ..model.connectors import Connector
from ..model.events import parse_envelope
from ..model.plugins import HandlerRegistry
from ..model.routes import Config, Router, load_config
from ..model.signature import SignatureVerifier
from ..settings import Settings
from ..store.capture import CaptureWriter
from ..store.dedup import Admission, EventStore, Outcome
from ..store.enqueue import JobBuilder, JobWrite
from .deadlines import Deadline
from .metrics import Metrics

log = logging.getLogger("osma_router.receiver")

Clock = Callable[[], float]
REDIS_TIMEOUT = 2.0
_JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": error_type, "message": message}})


async def send_json(send: Send, status: int, body: bytes, request_id: str, *, close: bool = False) -> None:
    """`close`: end the connection after this answer (a body left half-read behind it)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_JSON_HEADERS,
                (b"content-length", b"%d" % len(body)),  # else uvicorn answers chunked
                (b"x-request-id", request_id.encode()),
                *([(b"connection", b"close")] if close else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(
    scope: Scope, receive: Receive, limit: int, deadline: Deadline | None = None
) -> bytearray:
    """The request body in one growing buffer (one copy, however many chunks), or
    `BodyTooLarge` as soon as more than `limit` bytes arrive, or `RequestTimeout` if it
    has not all arrived by the `deadline`: uvicorn has no body timeout, so a client
    trickling bytes would otherwise hold its request forever."""
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
    body = bytearray()
    try:
        with deadline.start() if deadline is not None else nullcontext():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ConnectionAbortedError("client went away")
                chunk = message.get("body", b"")
                if len(body) + len(chunk) > limit:
                    raise BodyTooLarge(f"the body is larger than the limit of {limit} bytes")
                body += chunk
                if not message.get("more_body", False):
                    return body
    except TimeoutError:
        seconds = deadline.seconds if deadline is not None else 0
        raise RequestTimeout(f"the body did not arrive within {seconds:g} s") from None


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


@dataclass
class Pipeline:
    """What a delivery goes through after verification: route, build jobs, store."""

    router: Router
    builder: JobBuilder
    store: EventStore
    capture: CaptureWriter | None = None

    def jobs_for(
        self,
        source: str,
        payload: dict[str, Any],
        body: bytes,
        received_at: datetime,
        *,
        replay: bool = False,
        sealed_line: str | None = None,
    ) -> list[JobWrite]:
        """The jobs of one event; a replay pins the handlers' clock to `received_at`."""
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        routes = self.router.match(payload["type"], obj if isinstance(obj, dict) else {})
        return self.builder.build(
            source,
            payload["id"],
            payload["type"],
            body,
            received_at,
            routes,
            clock="received_at" if replay else None,
            sealed_line=sealed_line,
        )

    async def admit(
        self,
        source: str,
        payload: dict[str, Any],
        body: bytes,
        received_at: datetime,
        *,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
        replay: bool = False,
        force_tag: str | None = None,
    ) -> tuple[Outcome, int]:
        """Store the event and queue its jobs in one step (see dedup.py).

        `headers`: the delivery's, for capture (when on). `replay`: pin the clock; with
        `force_tag` the jobs run again under ids suffixed with it, even if the id was seen.
        """
        capture = None
        if self.capture is not None and headers is not None:
            capture = self.capture.write(source, body, received_at, headers)
        jobs = self.jobs_for(
            source,
            payload,
            body,
            received_at,
            replay=replay,
            sealed_line=capture.token if capture is not None else None,
        )
        if force_tag is not None:
            jobs = [replace(job, job_id=f"{job.job_id}_{force_tag}") for job in jobs]
        outcome = await self.store.admit(
            Admission(source, payload["id"], jobs, capture=capture, force=force_tag is not None)
        )
        return outcome, len(jobs)


class OsmaWebhook:
    """`POST /webhooks/osma`, as a plain ASGI app."""

    source = "osma"

    def __init__(self, state: ReceiverState) -> None:
        self.state = state
        self.latency = state.metrics.delivery_seconds.labels(self.source)
        self.accepted = state.metrics.deliveries.labels(self.source, "accepted", "")
        self.duplicates = state.metrics.deliveries.labels(self.source, "duplicate", "")
        self.body_deadline = Deadline(state.settings.body_timeout)
        # One deadline per request for storing: behind a slow Redis, requests queue for the
        # next grouped call, and the client's own timeout (with its retry) would add up.
        self.store_deadline = Deadline(REDIS_TIMEOUT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        state = self.state
        request_id = (header(scope, b"x-request-id") or os.urandom(8).hex().encode()).decode("latin-1")[:64]
        if scope["method"] != "POST":
            await send_json(send, 405, error_body("method_not_allowed", "use POST"), request_id)
            return
        event_id = None
        try:
            # bytes: Fernet seals only bytes, and the body is small.
            body = bytes(await read_body(scope, receive, state.settings.max_body_bytes, self.body_deadline))
            now = state.clock()
            state.verifier.verify(body, header(scope, b"osma-signature"), now)
            payload = parse_envelope(body)
            event_id = payload["id"]
            received_at = datetime.fromtimestamp(now, UTC)
            try:
                with self.store_deadline.start():
                    outcome, jobs = await state.pipeline.admit(
                        self.source, payload, body, received_at, headers=scope["headers"]
                    )
            except Exception as exc:  # StoreError, connection errors, timeouts: all mean 503
                log.warning(
                    "could not store the delivery; answering 503 so the sender retries",
                    extra={"request_id": request_id, "event_id": event_id, "reason": type(exc).__name__},
                )
                raise StoreUnavailable("the event store is unavailable; retry later") from None
        except ConnectionAbortedError:
            return
        except HTTPFacingError as exc:
            if exc.status_code < 500:
                state.metrics.deliveries.labels(self.source, "rejected", exc.error_type).inc()
            log.info(
                "delivery rejected",
                extra={
                    "request_id": request_id,
                    "event_id": event_id,
                    "source": self.source,
                    "status": exc.status_code,
                    "error_type": exc.error_type,
                    "client": scope["client"][0] if scope.get("client") else None,
                },
            )
            self.latency.observe(time.perf_counter() - started)
            await send_json(
                send,
                exc.status_code,
                error_body(exc.error_type, exc.message),
                request_id,
                close=exc.status_code == 408,
            )
            return
        if outcome is Outcome.ACCEPTED:
            self.accepted.inc()
            body_out = orjson.dumps({"status": "accepted", "id": event_id, "jobs": jobs})
            status = 202
        else:
            self.duplicates.inc()
            body_out = orjson.dumps({"status": "duplicate", "id": event_id})
            status = 200
        # One line per stored delivery costs ~15 % of the hot path: DEBUG, while
        # rejections and failures log at INFO and above. Metrics count every delivery.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "delivery stored",
                extra={
                    "request_id": request_id,
                    "event_id": event_id,
                    "event_type": payload["type"],
                    "source": self.source,
                    "outcome": outcome.value,
                    "jobs": jobs if outcome is Outcome.ACCEPTED else None,
                },
            )
        self.latency.observe(time.perf_counter() - started)
        await send_json(send, status, body_out, request_id)


@dataclass
class ReceiverState:
    settings: Settings
    verifier: SignatureVerifier
    pipeline: Pipeline
    redis: AsyncRedis
    sync_redis: Redis
    metrics: Metrics
    clock: Clock
    log_deliveries: bool = True  # Osmos batches: one INFO line per batch
    connectors: Mapping[str, Connector] = field(default_factory=dict)


def connect_async(url: str) -> AsyncRedis:
    return AsyncRedis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=AsyncRetry(NoBackoff(), 1),
        health_check_interval=0,
    )


def build_state(
    settings: Settings,
    *,
    config: Config | None = None,
    registry: HandlerRegistry | None = None,
    clock: Clock = time.time,
) -> ReceiverState:
    """Everything the receiver needs, checked before it accepts a connection."""
    secrets = settings.require_webhook_secrets()
    redis_url = settings.require_redis_url()
    if registry is None:
        registry = HandlerRegistry.discover()
    if config is None:
        config = load_config(settings.config_path, registry)
    redis = connect_async(redis_url)
    pipeline = build_pipeline(settings, config, redis)
    sync_redis = Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
    metrics = Metrics()
    metrics.add_job_counts(sync_redis)
    metrics.add_service_state(sync_redis, [settings.queue_name, *(r.queue for r in config.routes if r.queue)])
    return ReceiverState(
        settings=settings,
        verifier=SignatureVerifier(secrets, settings.signature_tolerance),
        pipeline=pipeline,
        redis=redis,
        sync_redis=sync_redis,
        metrics=metrics,
        clock=clock,
        connectors=config.connectors,
    )


def build_pipeline(settings: Settings, config: Config, redis: AsyncRedis) -> Pipeline:
    """Routing, job building, storage and capture, as the settings ask (also for replays)."""
    sealer = Sealer(settings.encryption_keys) if settings.encryption_keys else None
    builder = JobBuilder(config.routes, settings.queue_name, sealer)
    store = EventStore(redis, builder.templates, settings.dedup_ttl)
    return Pipeline(Router(config.routes), builder, store, CaptureWriter.from_settings(settings))


def create_app(state: ReceiverState) -> Starlette:
    from .openapi import openapi_json
    from .osmos import OsmosIngest

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(state.redis.ping(), REDIS_TIMEOUT)  # no client retry: answer fast
        except Exception as exc:
            return JSONResponse(
                {
                    "status": "unavailable",
                    "error": {"type": "unavailable", "message": f"redis: {type(exc).__name__}"},
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        text = await run_in_threadpool(state.metrics.render)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.redis.aclose()
        state.sync_redis.close()

    webhook = OsmaWebhook(state)
    routes = [
        Route("/webhooks/osma", webhook, methods=["POST"]),
        Route("/ingest/osmos/{connector}", OsmosIngest(state), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 400)
        kinds = {404: ("not_found", "no such endpoint"), 405: ("method_not_allowed", "method not allowed")}
        kind, message = kinds.get(status, ("bad_request", "bad request"))
        # A 405 keeps Starlette's `Allow` header (RFC 9110 requires it).
        return JSONResponse(
            {"error": {"type": kind, "message": message}},
            status_code=status,
            headers=getattr(exc, "headers", None),
        )

    app = ReceiverApp(
        webhook,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: http_error, 405: http_error},
    )
    app.state.receiver = state
    return app


class ReceiverApp(Starlette):
    """The app of `routes`, except that `POST /webhooks/osma` goes straight to its
    endpoint: Starlette's middleware and router cost ~10 % of a delivery, and the
    endpoint answers every outcome itself (it is listed in `routes` for the rest)."""

    def __init__(self, webhook: OsmaWebhook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._webhook = webhook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/webhooks/osma":
            await self._webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def app_from_env() -> Starlette:
    """The ASGI app uvicorn imports (`receiver.web.app:app_from_env`, factory=True)."""
    from ..logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(build_state(settings))
