"""The event a handler receives, and parsing of the Osma envelope."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ..exceptions import PayloadError

_MISSING = object()


@dataclass(frozen=True)
class Event:
    """One delivery, as a handler sees it.

    `object` is the resource the event is about (`data.object`: a task, a member, an
    Osmos record). `created_at` is the sender's time, `received_at` ours; `occurred_at`
    is the first of them that is known and is what periods and counts use.
    """

    id: str
    type: str
    source: str
    payload: Mapping[str, Any] = field(repr=False)
    received_at: datetime
    created_at: datetime | None = None

    @property
    def data(self) -> Mapping[str, Any]:
        data = self.payload.get("data")
        return data if isinstance(data, Mapping) else {}

    @property
    def object(self) -> Mapping[str, Any]:
        obj = self.data.get("object")
        return obj if isinstance(obj, Mapping) else {}

    @property
    def live_mode(self) -> bool:
        return bool(self.payload.get("live_mode", False))

    @property
    def occurred_at(self) -> datetime:
        return self.created_at or self.received_at

    def get(self, path: str, default: Any = None) -> Any:
        """A value of `data.object` by dotted path (`"data.score"`), or `default`."""
        value = lookup(self.object, path)
        return default if value is _MISSING else value


def lookup(obj: Mapping[str, Any], path: str) -> Any:
    """Descend `path` (dotted) into nested objects; `_MISSING` when any step is absent."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def parse_envelope(body: bytes) -> dict[str, Any]:
    """The verified body as a dict with string `id` and `type`, or a `PayloadError`."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the body is not valid JSON: {exc.msg}", error_type="invalid_json") from None
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object", error_type="invalid_json")
    for name in ("id", "type"):
        value = payload.get(name)
        if not isinstance(value, str) or not value:
            raise PayloadError(f"the event needs a non-empty string {name!r}", error_type="invalid_envelope")
    return payload


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime; None when absent or unreadable.

    A well-formed time whose UTC instant falls outside years 1 to 9999
    (`0001-01-01T00:00+05:30`) counts as unreadable, so a sender's odd clock can never
    crash a job: callers fall back to the received time.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def build_event(payload: Mapping[str, Any], *, source: str, received_at: datetime) -> Event:
    return Event(
        id=str(payload["id"]),
        type=str(payload["type"]),
        source=source,
        payload=payload,
        received_at=received_at,
        created_at=parse_time(payload.get("created_at")),
    )
