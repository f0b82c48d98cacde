"""`POST /webhooks/osma`, the hot path, as a plain ASGI app: read the body under the size
limit, verify, parse, route, and store with one grouped Redis call. Nothing blocks the
event loop."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime

import orjson
from starlette.types import Receive, Scope, Send

from ..exceptions import HTTPFacingError, StoreUnavailable
from ..model.events import parse_envelope
from ..store.connection import REDIS_TIMEOUT, UNAVAILABLE
from ..store.dedup import AdmitOutcome
from .asgi import error_body, header, read_body, send_json
from .deadlines import Deadline
from .state import ReceiverState

log = logging.getLogger("osma_router.receiver")


class OsmaWebhook:
    """`POST /webhooks/osma`, as a plain ASGI app."""

    source = "osma"

    def __init__(self, state: ReceiverState) -> None:
        self.state = state
        self.latency = state.metrics.delivery_seconds.labels(self.source)
        self.accepted = state.metrics.deliveries.labels(self.source, "accepted")
        self.duplicates = state.metrics.deliveries.labels(self.source, "duplicate")
        # Accepted, but the event's `live_mode` held back at least one matching route.
        self.other_mode = state.metrics.delivery_reasons.labels(self.source, "accepted", "other_mode")
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
                    outcome, jobs, held_back = await state.pipeline.admit(
                        self.source, payload, body, received_at, headers=scope["headers"]
                    )
            except UNAVAILABLE as exc:
                log.warning(
                    "could not store the delivery; answering 503 so the sender retries",
                    extra={"request_id": request_id, "event_id": event_id, "reason": type(exc).__name__},
                )
                raise StoreUnavailable("the event store is unavailable; retry later") from None
        except ConnectionAbortedError:
            return
        except HTTPFacingError as exc:
            if exc.status_code < 500:
                state.metrics.rejected(self.source, exc.error_type)
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
        if outcome is AdmitOutcome.ACCEPTED:
            self.accepted.inc()
            if held_back:
                self.other_mode.inc()
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
                    "jobs": jobs if outcome is AdmitOutcome.ACCEPTED else None,
                },
            )
        self.latency.observe(time.perf_counter() - started)
        await send_json(send, status, body_out, request_id)
