"""The Osma API client (docs/contract.md, "Upstream APIs"), sync and async.

```python
osma = OsmaClient(api_key="sk_test_...", base_url="https://api.osma.com")
task = osma.tasks.get("task_2BU1...")
osma.tasks.update(task["id"], {"metadata": {"ogsm_action_id": "42"}},
                  idempotency_key=ctx.idempotency_key("metadata"))
for member in osma.members.iterate(limit=100):
    ...
```

`AsyncOsmaClient` has the same resources; its calls are awaited and `iterate` is an
async iterator. Every POST needs an `idempotency_key` (Osma replays the first answer
for a key it has seen); metadata is checked against Osma's limits before it is sent.
Handlers get a client from `ctx.osma` / `ctx.osma_async`, which share the workers'
rate budget through Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import Any, Generic, TypeVar

import httpx
import orjson
from redis import Redis

from ..exceptions import InvalidRequest
from ..settings import DEFAULT_OSMA_API_VERSION
from .http import JSON, AsyncClientBase, Call, ClientBase, HTTPCore, SyncClientBase, TransportT, segment
from .ratelimit import RateLimiter

DEFAULT_BASE_URL = "https://api.osma.com"
API_VERSION = DEFAULT_OSMA_API_VERSION
MAX_PAGE = 100
MAX_IDEMPOTENCY_KEY = 255
METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LENGTH = 50
METADATA_MAX_VALUE_LENGTH = 500

R = TypeVar("R")  # what one call gives: a JSON value, or an awaitable of one
P = TypeVar("P")  # what `iterate` gives: an Iterator or an AsyncIterator of resources


def validate_metadata(metadata: Any) -> None:
    """Raise `InvalidRequest` unless `metadata` fits Osma's limits: at most 50 keys, keys
    up to 50 characters, values (strings or numbers; null unsets) up to 500."""
    if not isinstance(metadata, Mapping):
        raise InvalidRequest("metadata must be an object of key-value pairs")
    if len(metadata) > METADATA_MAX_KEYS:
        raise InvalidRequest(f"metadata has {len(metadata)} keys; Osma allows at most {METADATA_MAX_KEYS}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidRequest("metadata keys must be non-empty strings")
        if len(key) > METADATA_MAX_KEY_LENGTH:
            raise InvalidRequest(
                f"metadata key {key[:METADATA_MAX_KEY_LENGTH]!r}... is {len(key)} characters long; "
                f"Osma allows at most {METADATA_MAX_KEY_LENGTH}"
            )
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InvalidRequest(f"metadata value of {key!r} must be a string or a number")
        if len(str(value)) > METADATA_MAX_VALUE_LENGTH:
            # The value itself is not repeated: it may be member data.
            raise InvalidRequest(
                f"metadata value of {key!r} is {len(str(value))} characters long; "
                f"Osma allows at most {METADATA_MAX_VALUE_LENGTH}"
            )


def page_params(limit: int | None, starting_after: str | None, ending_before: str | None) -> dict[str, Any]:
    if starting_after is not None and ending_before is not None:
        raise InvalidRequest("use starting_after or ending_before, not both")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE
    ):
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE}")
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if starting_after is not None:
        params["starting_after"] = starting_after
    if ending_before is not None:
        params["ending_before"] = ending_before
    return params


def _check_idempotency_key(key: str) -> dict[str, str]:
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(f"an idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY} characters long")
    return {"idempotency-key": key}


def describe_osma_error(response: httpx.Response) -> str:
    """`type: message (param: message, ...)` from Osma's error body, or the reason phrase."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.reason_phrase or "error"
    if not isinstance(body, dict):
        return response.reason_phrase or "error"
    text = f"{body.get('type') or 'error'}: {body.get('message') or response.reason_phrase}"
    params = body.get("params")
    if isinstance(params, list) and params:
        details = [f"{p.get('param')}: {p.get('message')}" for p in params[:5] if isinstance(p, dict)]
        text += f" ({'; '.join(details)})"
    return text


class _API(Generic[R, P]):
    """What the resources call: the client base gives `_send`, each client its `_pages`."""

    def _send(self, call: Call) -> R:
        raise NotImplementedError

    def _pages(self, call: Call) -> P:
        raise NotImplementedError


class ReadResource(Generic[R, P]):
    """A resource that can be read and listed (`users`)."""

    def __init__(self, api: _API[R, P], name: str) -> None:
        self._api = api
        self.name = name

    def get(self, resource_id: str) -> R:
        return self._api._send(Call("GET", f"/{self.name}/{segment(resource_id)}", f"GET /{self.name}/:id"))

    def list(
        self, *, limit: int | None = None, starting_after: str | None = None, ending_before: str | None = None
    ) -> R:
        """One page: `{"has_next": bool, "data": [...]}`."""
        params = page_params(limit, starting_after, ending_before)
        return self._api._send(Call("GET", f"/{self.name}", f"GET /{self.name}", params=params))

    def iterate(
        self, *, limit: int = MAX_PAGE, starting_after: str | None = None, ending_before: str | None = None
    ) -> P:
        """Every resource from the cursor on, page after page (backwards with `ending_before`)."""
        params = page_params(limit, starting_after, ending_before)
        return self._api._pages(Call("GET", f"/{self.name}", f"GET /{self.name}", params=params))


class Resource(ReadResource[R, P]):
    """A resource that can also be created, updated (incl. metadata) and soft-deleted."""

    def create(self, fields: Mapping[str, Any], *, idempotency_key: str) -> R:
        self._check(fields)
        return self._api._send(
            Call(
                "POST",
                f"/{self.name}",
                f"POST /{self.name}",
                json=dict(fields),
                headers=_check_idempotency_key(idempotency_key),
            )
        )

    def update(self, resource_id: str, fields: Mapping[str, Any], *, idempotency_key: str) -> R:
        self._check(fields)
        return self._api._send(
            Call(
                "POST",
                f"/{self.name}/{segment(resource_id)}",
                f"POST /{self.name}/:id",
                json=dict(fields),
                headers=_check_idempotency_key(idempotency_key),
            )
        )

    def delete(self, resource_id: str) -> R:
        return self._api._send(
            Call("DELETE", f"/{self.name}/{segment(resource_id)}", f"DELETE /{self.name}/:id")
        )

    @staticmethod
    def _check(fields: Mapping[str, Any]) -> None:
        if not isinstance(fields, Mapping):
            raise InvalidRequest("the request body must be an object")
        if "metadata" in fields:
            validate_metadata(fields["metadata"])


class FileResource(Generic[R, P]):
    """`GET /files/:id`: an expiring pre-signed URL for a file a task refers to."""

    def __init__(self, api: _API[R, P]) -> None:
        self._api = api

    def get(self, file_id: str) -> R:
        return self._api._send(Call("GET", f"/files/{segment(file_id)}", "GET /files/:id"))


def osma_core(
    api_key: str,
    base_url: str,
    api_version: str,
    limiter: RateLimiter | None,
    timeout: float | httpx.Timeout | None,
    max_inline_wait: float | None,
) -> HTTPCore:
    if not api_key:
        raise InvalidRequest("an Osma API key is needed (sk_live_... or sk_test_...)")
    return HTTPCore(
        upstream="osma",
        base_url=base_url,
        headers={
            "osma-api-key": api_key,
            "osma-api-version": api_version,
            "accept": "application/json",
            "user-agent": "osma-router",
        },
        limiter=limiter,
        timeout=timeout,
        max_inline_wait=max_inline_wait,
        describe_error=describe_osma_error,
    )


def _next_cursor(call: Call, page: JSON) -> Call | None:
    items = page.get("data") if isinstance(page, dict) else None
    if not isinstance(items, list) or not items or not page.get("has_next"):
        return None
    params = dict(call.params or {})
    if "ending_before" in params:
        params["ending_before"] = items[0]["id"]
    else:
        params["starting_after"] = items[-1]["id"]
    return replace(call, params=params)


def _items(page: JSON) -> list[JSON]:
    items = page.get("data") if isinstance(page, dict) else None
    return items if isinstance(items, list) else []


class _OsmaAPI(_API[R, P], ClientBase[TransportT]):
    """The Osma API's options and resources; the sync and async clients differ only in
    how a `Call` is sent."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_version: str = API_VERSION,
        limiter: RateLimiter | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_inline_wait: float | None = None,
        transport: TransportT | None = None,
    ) -> None:
        self.live_mode = api_key.startswith("sk_live_")
        self._open(osma_core(api_key, base_url, api_version, limiter, timeout, max_inline_wait), transport)
        self.tasks: Resource[R, P] = Resource(self, "tasks")
        self.members: Resource[R, P] = Resource(self, "members")
        self.users: ReadResource[R, P] = ReadResource(self, "users")
        self.files: FileResource[R, P] = FileResource(self)


class OsmaClient(SyncClientBase, _OsmaAPI[JSON, Iterator[JSON], httpx.BaseTransport]):
    """The Osma API, blocking. See the module docstring."""

    @classmethod
    def shared_budget(cls, api_key: str, redis: Redis, **kwargs: Any) -> OsmaClient:
        """A client whose requests count against the Redis-held budget of every worker."""
        return cls(api_key, limiter=RateLimiter.for_osma(redis, api_key), **kwargs)

    def _pages(self, call: Call) -> Iterator[JSON]:
        next_call: Call | None = call
        while next_call is not None:
            page = self._sender.send(next_call)
            yield from _items(page)
            next_call = _next_cursor(next_call, page)


class AsyncOsmaClient(AsyncClientBase, _OsmaAPI[Any, AsyncIterator[JSON], httpx.AsyncBaseTransport]):
    """The Osma API for `async def` handlers: every call is awaited."""

    async def _pages(self, call: Call) -> AsyncIterator[JSON]:
        next_call: Call | None = call
        while next_call is not None:
            page = await self._sender.send(next_call)
            for item in _items(page):
                yield item
            next_call = _next_cursor(next_call, page)
