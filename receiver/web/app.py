"""The receiver: an ASGI app whose whole HTTP surface is the `routes` list below.

`POST /webhooks/osma` is the hot path (`webhook.py`), dispatched before Starlette's
middleware and router; everything else goes through Starlette.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..logs import configure_logging
from ..settings import Settings
from ..store.connection import REDIS_TIMEOUT, UNAVAILABLE
from .activity import ActivityRecorder
from .openapi import openapi_json
from .osmos import OsmosIngest
from .state import ReceiverState, build_state
from .webhook import OsmaWebhook


def create_app(state: ReceiverState) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(state.redis.ping(), REDIS_TIMEOUT)  # no client retry: answer fast
        except UNAVAILABLE as exc:
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
        activity = asyncio.create_task(
            ActivityRecorder(state.metrics.deliveries, state.metrics.delivery_reasons, state.redis).run()
        )
        yield
        activity.cancel()
        await asyncio.gather(activity, return_exceptions=True)
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


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, settings, routes, job templates: some 70k objects
    that live as long as the process) out of the collector's reach. Otherwise each full
    collection walks all of them to free none: measured pinned at 64 connections, one every
    second or so, each holding the event loop for 20-35 ms (after: under 1 ms). Only for a
    server process (`app_from_env`): a test process that builds many apps keeps its own
    collector as it is."""
    gc.collect()
    gc.freeze()


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
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(build_state(settings))
    freeze_startup_objects()
    return app
