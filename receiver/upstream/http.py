"""HTTP plumbing shared by the Osma and OGSM clients: one `Call` description, sent by a
sync or an async httpx client, with the same timeouts, rate limiting, logging and the
same mapping of failures onto the exception tree (`receiver/exceptions.py`):

- connection refused, timeout, 5xx                       -> `Unavailable` (retried)
- 429                                                    -> `RateLimited(retry_after)`
- any other 4xx                                          -> `Rejected` (body kept)

A 429 whose `Retry-After` is short is waited out in the client (the request was not
processed, so sending it again is safe); a longer one is raised, and the job is retried
no earlier than `retry_after` seconds later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import orjson

from ..exceptions import InvalidRequest, RateLimited, Rejected, Unavailable
from ..keys import RATE_LIMIT_WAITS_KEY, UPSTREAM_CALLS_KEY
from .ratelimit import RateLimiter

log = logging.getLogger("osma_router.upstream")

JSON = Any
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
DEFAULT_RETRY_AFTER = 1.0
MAX_INLINE_WAIT = 5.0  # a 429 asking for longer is raised and retried by the job queue
INLINE_429_TRIES = 3
_BODY_KEPT = 2000  # characters of an error body kept on the exception


@dataclass(frozen=True)
class Call:
    """One request to an upstream API, described independently of sync or async.

    `endpoint` is the method and path template (`"POST /tasks/:id"`): it names the
    rate-limit bucket and is what logs and errors show, never ids or payloads;
    `transform` shapes the decoded JSON answer (for example a client-side filter).
    """

    method: str
    path: str
    endpoint: str
    params: Mapping[str, Any] | None = None
    json: JSON = None
    headers: Mapping[str, str] = field(default_factory=dict)
    transform: Callable[[JSON], JSON] | None = None


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date."""
    if not value:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else time.time()
    return max(when.timestamp() - current, 0.0)


ErrorDescriber = Callable[[httpx.Response], str]


def describe_plain(response: httpx.Response) -> str:
    return response.reason_phrase or "error"


_stats_redis: Any = None


def record_stats_in(redis: Any) -> None:
    """Count every upstream call and rate wait of this process in Redis, where the
    receiver's /metrics reads them (`osma_router_upstream_calls_total`, ...)."""
    global _stats_redis
    _stats_redis = redis


def count_upstream_call(redis: Any, upstream: str, status: int | str) -> None:
    """Count one call to an upstream API (`osma`, `ogsm`) by its HTTP status, or by
    `timeout` / `error` when no answer came. `redis` may be a pipeline."""
    redis.hincrby(UPSTREAM_CALLS_KEY, f"{upstream}|{status}", 1)


def count_rate_limit_wait(redis: Any, upstream: str, seconds: float) -> None:
    """Count one wait for an upstream's rate budget (our token bucket or its 429)."""
    redis.hincrby(RATE_LIMIT_WAITS_KEY, f"{upstream}|waits", 1)
    redis.hincrbyfloat(RATE_LIMIT_WAITS_KEY, f"{upstream}|seconds", max(0.0, float(seconds)))


def _count(record: Callable[[], None]) -> None:
    if _stats_redis is None:
        return
    try:
        record()
    except Exception:  # metrics must never fail a call
        log.debug("could not count an upstream call")


class HTTPCore:
    """What the sync and async clients of one upstream share: everything but the I/O."""

    def __init__(
        self,
        *,
        upstream: str,
        base_url: str,
        headers: Mapping[str, str],
        auth: tuple[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        limiter: RateLimiter | None = None,
        max_inline_wait: float | None = None,
        describe_error: ErrorDescriber = describe_plain,
    ) -> None:
        self.upstream = upstream
        self.base_url = base_url.rstrip("/") + "/"
        self.headers = dict(headers)
        self.auth = auth
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.limiter = limiter
        self.max_inline_wait = MAX_INLINE_WAIT if max_inline_wait is None else max_inline_wait
        self.describe_error = describe_error

    def client_options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": self.headers,
            "auth": self.auth,
            "timeout": self.timeout,
            "follow_redirects": False,
        }

    def build(self, client: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        headers = dict(call.headers)
        content = None
        if call.json is not None:
            content = orjson.dumps(call.json)
            headers["content-type"] = "application/json"
        return client.build_request(
            call.method,
            call.path.lstrip("/"),
            params=dict(call.params or {}),
            content=content,
            headers=headers,
        )

    def rate_wait(self, call: Call) -> float:
        wait = self.limiter.reserve(call.endpoint) if self.limiter is not None else 0.0
        if wait > 0:
            _count(lambda: count_rate_limit_wait(_stats_redis, self.upstream, wait))
        return wait

    def transport_failure(self, call: Call, exc: httpx.HTTPError, started: float) -> Unavailable:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
        self._log(call, None, None, started, reason=type(exc).__name__)
        return Unavailable(f"{self.upstream} {call.endpoint} {kind}: {type(exc).__name__}")

    def outcome(self, call: Call, response: httpx.Response, started: float) -> JSON:
        """The decoded answer of a 2xx, or the mapped exception raised."""
        request_id = response.headers.get("request-id") or response.headers.get("x-request-id")
        self._log(call, response.status_code, request_id, started)
        status = response.status_code
        if 200 <= status < 300:
            if not response.content:
                data: JSON = None
            else:
                try:
                    data = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    raise Unavailable(
                        f"{self.upstream} {call.endpoint}: {status} with a body that is not JSON",
                        status_code=status,
                    ) from None
            return call.transform(data) if call.transform is not None else data
        body = response.text[:_BODY_KEPT]
        where = f"{self.upstream} {call.endpoint}"
        reason = self.describe_error(response)
        suffix = f" (request-id {request_id})" if request_id else ""
        if status == 429:
            wait = retry_after_seconds(response.headers.get("retry-after"))
            _count(lambda: count_rate_limit_wait(_stats_redis, self.upstream, wait))
            raise RateLimited(
                f"{where}: 429 {reason}; retry after {wait:g} s{suffix}",
                retry_after=wait,
                status_code=status,
                body=body,
            )
        if status >= 500 or status in (408, 425):
            raise Unavailable(f"{where}: {status} {reason}{suffix}", status_code=status, body=body)
        if 300 <= status < 400:
            raise Unavailable(f"{where}: unexpected redirect {status}{suffix}", status_code=status, body=body)
        raise Rejected(f"{where}: {status} {reason}{suffix}", status_code=status, body=body)

    def _log(
        self,
        call: Call,
        status: int | None,
        request_id: str | None,
        started: float,
        reason: str | None = None,
    ) -> None:
        outcome: int | str = (
            status if status is not None else ("timeout" if reason and "Timeout" in reason else "error")
        )
        _count(lambda: count_upstream_call(_stats_redis, self.upstream, outcome))
        # Method and path template only: ids in paths are opaque, payloads never logged.
        log.info(
            "upstream call",
            extra={
                "upstream": self.upstream,
                "url": call.endpoint,
                "status": status,
                "upstream_request_id": request_id,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "reason": reason,
            },
        )


class SyncSender:
    """Sends `Call`s with an `httpx.Client`; used by the sync clients."""

    def __init__(self, core: HTTPCore, transport: httpx.BaseTransport | None = None) -> None:
        self.core = core
        self.http = httpx.Client(transport=transport, **core.client_options())

    def send(self, call: Call) -> JSON:
        for attempt in range(1, INLINE_429_TRIES + 1):
            wait = self.core.rate_wait(call)
            if wait > 0:
                time.sleep(wait)
            started = time.monotonic()
            try:
                response = self.http.send(self.core.build(self.http, call))
            except httpx.HTTPError as exc:
                raise self.core.transport_failure(call, exc, started) from None
            try:
                return self.core.outcome(call, response, started)
            except RateLimited as exc:
                if attempt == INLINE_429_TRIES or exc.retry_after > self.core.max_inline_wait:
                    raise
                time.sleep(exc.retry_after)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.http.close()


class AsyncSender:
    """Sends `Call`s with an `httpx.AsyncClient`; used by the async clients."""

    def __init__(self, core: HTTPCore, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.core = core
        self.http = httpx.AsyncClient(transport=transport, **core.client_options())

    async def send(self, call: Call) -> JSON:
        for attempt in range(1, INLINE_429_TRIES + 1):
            wait = self.core.rate_wait(call)
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            try:
                response = await self.http.send(self.core.build(self.http, call))
            except httpx.HTTPError as exc:
                raise self.core.transport_failure(call, exc, started) from None
            try:
                return self.core.outcome(call, response, started)
            except RateLimited as exc:
                if attempt == INLINE_429_TRIES or exc.retry_after > self.core.max_inline_wait:
                    raise
                await asyncio.sleep(exc.retry_after)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self.http.aclose()


TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class ClientBase(Generic[TransportT]):
    """A client of one upstream. Its constructor, written once for the sync and the async
    client, builds the `HTTPCore` and hands it to `_open`; `SyncClientBase` or
    `AsyncClientBase` opens the matching sender, so the constructor never names one."""

    def _open(self, core: HTTPCore, transport: TransportT | None) -> None:
        raise NotImplementedError


class SyncClientBase(ClientBase[httpx.BaseTransport]):
    """A blocking client's sender, `close()` and `with` block; the client adds its resources."""

    _sender: SyncSender

    def _open(self, core: HTTPCore, transport: httpx.BaseTransport | None) -> None:
        self._sender = SyncSender(core, transport)

    def _send(self, call: Call) -> JSON:
        return self._sender.send(call)

    def close(self) -> None:
        self._sender.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClientBase(ClientBase[httpx.AsyncBaseTransport]):
    """An async client's sender, `aclose()` and `async with` block; the client adds its resources."""

    _sender: AsyncSender

    def _open(self, core: HTTPCore, transport: httpx.AsyncBaseTransport | None) -> None:
        self._sender = AsyncSender(core, transport)

    def _send(self, call: Call) -> Coroutine[Any, Any, JSON]:
        return self._sender.send(call)

    async def aclose(self) -> None:
        await self._sender.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def segment(value: str | int) -> str:
    """An id as one path segment: `/` or `..` in an id cannot reach another endpoint."""
    text = str(value)
    if not text or text in (".", ".."):
        raise InvalidRequest(f"{text!r} is not a resource id")
    return quote(text, safe="")
