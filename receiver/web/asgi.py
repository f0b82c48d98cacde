"""Raw-ASGI helpers for the endpoints that skip Starlette's Request and Response on the
hot path: read a size- and time-limited body, find a header, answer JSON."""

from __future__ import annotations

from contextlib import nullcontext

import orjson
from starlette.types import Receive, Scope, Send

from ..exceptions import BodyTooLarge, RequestTimeout
from .deadlines import Deadline

_JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": error_type, "message": message}})


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    *,
    close: bool = False,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """`close`: end the connection after this answer (a body left half-read behind it);
    `headers`: more headers (`Retry-After`)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *_JSON_HEADERS,
                (b"content-length", b"%d" % len(body)),  # else uvicorn answers chunked
                (b"x-request-id", request_id.encode()),
                *([(b"connection", b"close")] if close else []),
                *(headers or []),
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
