"""The HTTP edge of `osma-router serve`: limits uvicorn's httptools protocol does not have.

uvicorn parses requests with httptools, which buffers a request head of any size and has
no timeout for it, and uvicorn accepts every connection. `EdgeProtocol` is that protocol
with four guards (docs/contract.md, "HTTP edge"):

- the request head (request line and headers) over `max_header_bytes`: 431, connection
  closed, before the bytes past the limit are parsed;
- the head not complete `header_timeout` seconds after the connection opened (or, on a
  kept-alive connection, after the request's first byte): 408, connection closed;
- a connection beyond `max_connections` open ones in this process: 503 with
  `Retry-After`, closed at once, before anything is read from it;
- idle kept-alive connections close after `keepalive_timeout` (uvicorn's own timer).

The guards cost a `bytes.find` on the chunk that ends a request head and a clock reading
per request; one sweep a second (a quarter of the timeout, if shorter) per process finds
the heads that took too long, instead of a timer per request. The parser and everything
else stay uvicorn's, so throughput stays httptools' (README, "Performance"); h11 has a
head limit but parses several times slower.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..settings import Settings
from .asgi import error_body


@dataclass(frozen=True)
class EdgeLimits:
    """The limits of one receiver process, from the settings of the same names."""

    max_header_bytes: int
    max_connections: int
    header_timeout: float
    keepalive_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            keepalive_timeout=settings.keepalive_timeout,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """The `uvicorn.run` options that put these limits in force."""
        return {
            # A partial, not a class made on the fly: `--workers N` pickles it into each worker.
            "http": partial(EdgeProtocol, limits=self),
            "timeout_keep_alive": self.keepalive_timeout,
        }


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit, a head timeout and a connection cap."""

    def __init__(self, *args: Any, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._max_head_bytes = limits.max_header_bytes
        self._in_head = True  # reading a request line and headers (or waiting for the first)
        self._head_bytes = 0  # bytes of the current head received so far
        self._tail = b""  # the last bytes of the previous chunk: the blank line may straddle two
        # When the current head began (loop time): the connection opening for the first request,
        # the first byte after a kept-alive pause for later ones; None while no head is due.
        self.head_started: float | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503, "unavailable", "too many open connections; retry later", retry_after=1, linger=False
            )
            return
        self.head_started = self.loop.time()
        _HeadSweep.ensure(self.loop, self.connections, self.limits.header_timeout)

    # Called per request, so written for speed: uvicorn's methods are called directly (no
    # super() object), and the common case (a whole head in one chunk) does one find().

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._refused:  # lingering after a refusal: what the client still sends is dropped
                return
            if self.head_started is None:  # the first bytes after a kept-alive pause
                self.head_started = self.loop.time()
            # Counted before the parser sees the chunk, so a head over the limit is never
            # buffered whole; the blank line that ends it may straddle two chunks.
            tail = self._tail
            window = tail + data if tail else data
            end = window.find(b"\r\n\r\n")
            size = self._head_bytes + (end + 4 - len(tail) if end >= 0 else len(data))
            if size > self._max_head_bytes:
                limit = self._max_head_bytes
                self._refuse(431, "headers_too_large", f"the request line and headers exceed {limit} bytes")
                return
            if end < 0:
                self._head_bytes, self._tail = size, window[-3:]
        _data_received(self, data)

    # parser callbacks: where one request's head ends, and the next one's is due

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.head_started = None
        _on_headers_complete(self)

    def on_message_complete(self) -> None:
        # A pipelined head begun in this same chunk is timed from the next chunk on; until
        # then uvicorn's keep-alive timer bounds it.
        _on_message_complete(self)
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def head_timed_out(self) -> None:
        """Called by the sweep: the head took longer than `header_timeout`."""
        if not self._refused and not self.transport.is_closing():
            seconds = f"{self.limits.header_timeout:g}"
            self._refuse(408, "request_timeout", f"the request headers did not arrive within {seconds} s")

    def _refuse(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        retry_after: int | None = None,
        linger: bool = True,
    ) -> None:
        """Answer `status` with the usual JSON error body and close the connection.

        With `linger`, only our side is shut at once and the rest follows `_LINGER` seconds
        later: closing a socket with unread bytes in it sends a reset, which can destroy the
        answer before the client reads it (a client still sending its oversized head).
        """
        self._refused, self.head_started = True, None
        body = error_body(error_type, message)
        head = [STATUS_LINE[status], b"content-type: application/json\r\n"]
        head.append(b"content-length: %d\r\nconnection: close\r\n" % len(body))
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        self.transport.write(b"".join(head) + b"\r\n" + body)
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(_LINGER, self.transport.close)
        else:
            self.transport.close()


_LINGER = 1.0  # seconds a refused connection drains before it closes
_data_received = HttpToolsProtocol.data_received
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_message_complete = HttpToolsProtocol.on_message_complete


class _HeadSweep:
    """One per event loop: every `interval` seconds, refuses the connections whose request
    head began more than `timeout` seconds ago (so a head gets between `timeout` and
    `timeout + interval`)."""

    _running: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _HeadSweep] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any], timeout: float) -> None:
        self.loop, self.connections, self.timeout = loop, connections, timeout
        self.interval = min(1.0, timeout / 4)

    @classmethod
    def ensure(cls, loop: asyncio.AbstractEventLoop, connections: set[Any], timeout: float) -> None:
        if loop not in cls._running:
            sweep = cls._running[loop] = cls(loop, connections, timeout)
            loop.call_later(sweep.interval, sweep.run)

    def run(self) -> None:
        overdue = self.loop.time() - self.timeout
        for connection in list(self.connections):
            started = getattr(connection, "head_started", None)
            if started is not None and started < overdue:
                connection.head_timed_out()
        self.loop.call_later(self.interval, self.run)
