"""The capture file (docs/contract.md, "Capture file"): one delivery a JSON line, and what
replay also accepts.

```
{"received_at": "2026-11-20T10:00:00.123456+00:00", "source": "osma",
 "headers": {"content-type": "application/json"}, "body": "{\\"id\\":\\"evt_1\\",...}"}
```

A line may also be a bare event object (`{"id": ..., "type": ..., ...}`, for hand-written
test events) or a Fernet token of a capture line (`capture export --encrypted`). Blank
lines are ignored; any other line is reported with its number and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

import orjson

from ..crypto import Sealer
from ..exceptions import ConfigError, PayloadError, PermanentError
from .connectors import SOURCE as OSMOS_SOURCE
from .events import parse_envelope, parse_time
from .routes import type_matches

FERNET_PREFIX = b"gAAAAA"  # version byte 0x80 and the start of a timestamp, base64
OSMA_SOURCE = "osma"
# The sources the service itself writes. A line's source becomes part of job ids and dedup
# keys, so any other value is a bad line, never a job.
KNOWN_SOURCES = frozenset({OSMA_SOURCE, OSMOS_SOURCE})


def capture_line(received_at: datetime, source: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """One line of the capture file, without its newline (and without `duplicate`)."""
    return orjson.dumps(
        {
            "received_at": received_at.astimezone(UTC).isoformat(),
            "source": source,
            "headers": dict(headers),
            "body": body.decode("utf-8"),
        }
    )


@dataclass(frozen=True)
class Delivery:
    """One line of a replay file, read and checked."""

    line_no: int
    body: bytes = field(repr=False)  # health data: never in a repr or a traceback line
    payload: Mapping[str, Any] = field(repr=False)
    source: str = OSMA_SOURCE
    received_at: datetime | None = None  # None: a bare event without `created_at`
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    duplicate: bool = False

    @property
    def event_id(self) -> str:
        return str(self.payload["id"])

    @property
    def event_type(self) -> str:
        return str(self.payload["type"])


@dataclass(frozen=True)
class BadLine:
    """A line that is not a delivery; replay reports it and goes on."""

    line_no: int
    reason: str


def read_deliveries(lines: Iterable[bytes], sealer: Callable[[int], Sealer]) -> Iterator[Delivery | BadLine]:
    """Each non-blank line as a `Delivery` or a `BadLine`; `sealer(line_no)` opens tokens."""
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
        if text:
            yield parse_line(line_no, text, sealer)


def parse_line(line_no: int, text: bytes, sealer: Callable[[int], Sealer]) -> Delivery | BadLine:
    if text.startswith(FERNET_PREFIX):
        try:
            text = sealer(line_no).open(text)
        except PermanentError:
            return BadLine(line_no, "an encrypted line that OSMA_ROUTER_ENCRYPTION_KEYS cannot decrypt")
    elif not text.startswith(b"{"):
        return BadLine(line_no, "not a JSON object, a bare event or an encrypted capture line")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return BadLine(line_no, f"not valid JSON: {exc.msg}")
    if not isinstance(obj, dict):
        return BadLine(line_no, "not a JSON object")
    if "body" not in obj:
        return _bare_event(line_no, text)
    return _capture(line_no, obj)


def _bare_event(line_no: int, text: bytes) -> Delivery | BadLine:
    try:
        payload = parse_envelope(text)
    except PayloadError as exc:
        return BadLine(line_no, f'neither a capture line (no "body") nor an event: {exc.message}')
    return Delivery(line_no, text, payload, received_at=parse_time(payload.get("created_at")))


def _capture(line_no: int, obj: Mapping[str, Any]) -> Delivery | BadLine:
    body, source, headers = obj.get("body"), obj.get("source", OSMA_SOURCE), obj.get("headers", {})
    if not isinstance(body, str):
        return BadLine(line_no, '"body" must be the raw body as a string')
    received_at = parse_time(obj.get("received_at"))
    if received_at is None:
        return BadLine(line_no, '"received_at" is missing or not an ISO 8601 time')
    if not isinstance(source, str) or source not in KNOWN_SOURCES:
        known = " or ".join(f'"{name}"' for name in sorted(KNOWN_SOURCES))
        return BadLine(line_no, f'"source" must be {known}')
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return BadLine(line_no, '"headers" must be an object of strings')
    raw = body.encode("utf-8", errors="surrogatepass")
    try:
        payload = parse_envelope(raw)
    except PayloadError as exc:
        return BadLine(line_no, f"its body is not an event: {exc.message}")
    return Delivery(
        line_no,
        raw,
        payload,
        source=source,
        received_at=received_at,
        headers={k.lower(): v for k, v in headers.items()},
        duplicate=obj.get("duplicate") is True,
    )


def parse_cli_time(option: str, value: str) -> datetime:
    """An ISO 8601 date or time from the command line, as aware UTC (naive means UTC)."""
    text = value.strip()
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), time(0), UTC)
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not an ISO 8601 date or time (e.g. 2026-11-20 or 2026-11-20T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class Selection:
    """`--type` (patterns as in routes), `--id`, and received time in `[since, until)`."""

    types: Sequence[str] = ()
    ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def time_ok(self, moment: datetime) -> bool:
        return (self.since is None or moment >= self.since) and (self.until is None or moment < self.until)

    def type_ok(self, event_type: str) -> bool:
        return not self.types or any(type_matches(pattern, event_type) for pattern in self.types)

    def selects(self, delivery: Delivery, now: datetime) -> bool:
        return (
            self.type_ok(delivery.event_type)
            and (not self.ids or delivery.event_id in self.ids)
            and self.time_ok(delivery.received_at or now)
        )
