"""Capture of verified deliveries, encrypted, for export and replay.

With `OSMA_ROUTER_CAPTURE=on` every verified delivery becomes one entry of a Redis
stream, added by the receiver's admission script in the same round trip as dedup and
enqueue (see `dedup.py`): field `d` is a Fernet token of the capture line (docs/contract.md,
"Capture file"), field `dup` is `1` for a duplicate delivery. Nothing of the body, the
headers or the event id is readable in Redis. The script trims by age (entry ids are
Redis's clock in ms) and by count on every call, and the key expires when nothing was
captured for the whole retention. A stream rather than a sorted set: appending costs
Redis less than half as much per delivery, and entry ids are stable cursors for export.

Duplicates go to a second stream with the same limits, so they never count toward the
first one's `OSMA_ROUTER_CAPTURE_MAX_COUNT`: a flood of redeliveries (a sender's retries,
a replayed capture) evicts older duplicates, never a first delivery. Export merges the
two by entry id, so the file is in the order the deliveries came in.

`osma-router capture export` decrypts the kept deliveries into the capture file (or, with
`--encrypted`, writes one Fernet token a line); `osma-router capture status` counts them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from redis import Redis

from ..crypto import Sealer
from ..exceptions import PermanentError
from ..keys import CAPTURE_DUPLICATES_KEY, CAPTURE_KEY
from ..model.capture_file import Selection, capture_line
from ..model.events import parse_time
from ..settings import Settings

_DUPLICATE_SUFFIX = b',"duplicate":true}'
_READ_CHUNK = 500
_PLAIN_HEADERS = frozenset((b"content-type", b"user-agent"))


def kept_headers(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """content-type, user-agent and `osma-*` headers, never the signature (docs/contract.md, "Capture file").

    Names arrive lowercased (ASGI); only the kept ones are decoded.
    """
    kept: dict[str, str] = {}
    for raw_name, raw_value in headers:
        if raw_name in _PLAIN_HEADERS or (raw_name.startswith(b"osma-") and raw_name != b"osma-signature"):
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            kept[name] = f"{kept[name]}, {value}" if name in kept else value
    return kept


@dataclass(slots=True)  # not frozen: built once per delivery, and frozen costs on the hot path
class CaptureWrite:
    """What the admission script writes for one captured delivery."""

    key: str
    duplicates_key: str  # where a duplicate delivery goes instead
    token: str
    min_id_ms: int  # entries older than this go
    max_count: int  # of each stream
    ttl_ms: int


class CaptureWriter:
    """Seals deliveries for the admission script; one per receiver process."""

    def __init__(
        self, sealer: Sealer, max_age: float, max_count: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.sealer = sealer
        self.max_age_ms = max(1, int(max_age * 1000))
        self.max_count = max_count
        self.clock = clock  # wall time, as Redis stamps entry ids (not the receiver's test clock)

    def __repr__(self) -> str:
        return f"CaptureWriter(max_age_ms={self.max_age_ms}, max_count={self.max_count})"

    @classmethod
    def from_settings(cls, settings: Settings) -> CaptureWriter | None:
        if not settings.capture:
            return None
        return cls(Sealer(settings.encryption_keys), settings.capture_max_age, settings.capture_max_count)

    def write(
        self, source: str, body: bytes, received_at: datetime, headers: Sequence[tuple[bytes, bytes]]
    ) -> CaptureWrite | None:
        try:
            line = capture_line(received_at, source, kept_headers(headers), body)
        except UnicodeDecodeError:  # cannot happen for a parsed body; never fail a delivery for it
            return None
        return CaptureWrite(
            key=CAPTURE_KEY,
            duplicates_key=CAPTURE_DUPLICATES_KEY,
            token=self.sealer.seal(line),
            min_id_ms=int(self.clock() * 1000) - self.max_age_ms,
            max_count=self.max_count,
            ttl_ms=self.max_age_ms,
        )


@dataclass(frozen=True)
class StoredCapture:
    """One entry of the capture stream, still sealed."""

    entry_id: bytes
    token: bytes
    duplicate: bool


def stored_captures(
    redis: Redis, *, key: str = CAPTURE_KEY, chunk: int = _READ_CHUNK
) -> Iterator[StoredCapture]:
    """Every entry of one stream, oldest first, read in chunks after the last id seen (so
    entries added or trimmed meanwhile shift nothing)."""
    low = "-"
    while True:
        rows: list[tuple[bytes, dict[bytes, bytes]]] = redis.xrange(  # type: ignore[assignment]
            key, min=low, max="+", count=chunk
        )
        if not rows:
            return
        for entry_id, fields in rows:
            yield StoredCapture(entry_id, fields.get(b"d", b""), fields.get(b"dup") == b"1")
        low = "(" + rows[-1][0].decode()


def all_captures(redis: Redis) -> Iterator[StoredCapture]:
    """First deliveries and duplicates, merged in the order they came in."""
    return heapq.merge(
        stored_captures(redis, key=CAPTURE_KEY),
        stored_captures(redis, key=CAPTURE_DUPLICATES_KEY),
        key=lambda stored: _entry_order(stored.entry_id),
    )


def count_captures(redis: Redis) -> int:
    """How many deliveries are kept, duplicates included."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(CAPTURE_KEY)
        pipe.xlen(CAPTURE_DUPLICATES_KEY)
        return sum(int(n) for n in pipe.execute())


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def event_type_of(line: dict[str, Any]) -> str | None:
    """The `type` of a capture line's body, or None when the body is not an event."""
    try:
        payload = orjson.loads(line["body"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    value = payload.get("type") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


@dataclass
class ExportReport:
    written: int = 0
    unreadable: int = 0


def export_captures(
    redis: Redis,
    sealer: Sealer,
    out: IO[bytes],
    selection: Selection | None = None,
    *,
    encrypted: bool = False,
    max_age: float | None = None,
    now: datetime | None = None,
) -> ExportReport:
    """Write the kept deliveries `selection` selects (by type and received time) as lines."""
    report = ExportReport()
    for line in export_lines(redis, sealer, selection, report, encrypted=encrypted, max_age=max_age, now=now):
        out.write(line)
    return report


def export_lines(
    redis: Redis,
    sealer: Sealer,
    selection: Selection | None,
    report: ExportReport,
    *,
    encrypted: bool = False,
    max_age: float | None = None,
    now: datetime | None = None,
) -> Iterator[bytes]:
    """The lines `export_captures` writes, one at a time (a download streams them);
    `report` counts them as they go."""
    selection = selection or Selection()
    now = now or datetime.now(UTC)
    floor = None if max_age is None else now.timestamp() - max_age
    for stored in all_captures(redis):
        # Trimming happens on writes: an idle capture may still hold older entries.
        if floor is not None and int(stored.entry_id.split(b"-")[0]) < floor * 1000:
            continue
        try:
            plain = sealer.open(stored.token)
            line = orjson.loads(plain)
        except (PermanentError, orjson.JSONDecodeError):
            report.unreadable += 1
            continue
        received = parse_time(line.get("received_at")) or now
        if not selection.time_ok(received) or not selection.type_ok(event_type_of(line) or ""):
            continue
        if stored.duplicate:
            plain = plain[:-1] + _DUPLICATE_SUFFIX
        report.written += 1
        yield (sealer.seal(plain).encode("ascii") if encrypted else plain) + b"\n"
