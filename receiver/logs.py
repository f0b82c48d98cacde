"""Structured logs: one JSON object a line in production, readable lines in `dev`.

Only what is passed in `extra=` with a known name is written next to the message, so a
careless `extra={"event": payload}` cannot leak member or task data into the logs. An
error's message, which a handler may have built from the event, is written through
`masked` (the event's field values replaced).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

ALLOWED_FIELDS = (
    "request_id",
    "event_id",
    "event_type",
    "source",
    "outcome",
    "jobs",
    "job_id",
    "handler",
    "route",
    "attempt",
    "status",
    "reason",
    "error_type",
    "error",
    "queue",
    "duration_ms",
    "url",
    "upstream",
    "upstream_request_id",
    "retry_in",
    "connector",
    "records",
    "worker",
    "client",
)


MASK = "***"
# Keys whose values name things rather than describe a person: kept in a masked message.
UNMASKED_KEYS = frozenset({"id", "object", "template", "status"})
MIN_MASKED = 3  # characters: shorter values would mask ordinary words of the message


def masked_values(event: object) -> set[str]:
    """The values of an event's `data` (every depth) that `masked` hides: its strings, and
    its numbers written out, but not ids, object kinds or templates."""
    data = event.get("data") if isinstance(event, dict) else None
    values: set[str] = set()

    def walk(node: object, key: str | None) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, str(name))
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif key not in UNMASKED_KEYS and not isinstance(node, bool) and node is not None:
            text = str(node)
            if len(text) >= MIN_MASKED:
                values.add(text)

    walk(data, None)
    return values


def masked(text: str, values: Iterable[str]) -> str:
    """`text` with each of `values` replaced by `***`, longest first (so a value that
    contains another is masked whole)."""
    for value in sorted(set(values), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in ALLOWED_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type and message only: a traceback's locals can hold payload data.
            entry["exc"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in ALLOWED_FIELDS
            if record.__dict__.get(name) is not None
        )
        line = f"{time} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            fields += f" exc={record.exc_info[0].__name__}: {record.exc_info[1]}"
        return f"{line}  {fields}" if fields else line


class ContextLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger carrying ids (event, job, handler) on every line, plus the caller's own
    `extra=` (the stdlib adapter of Python 3.11 would drop the caller's)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def configure_logging(log_format: str = "json", level: int | str = logging.INFO) -> None:
    """Root logging to stderr in `log_format`; `level` as a number or a name ("debug")."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # RQ logs job descriptions and arguments at INFO; ours carry what is needed.
    logging.getLogger("rq").setLevel(logging.WARNING)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    # Our clients log each upstream call with its request-id; httpx's own line repeats it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One line per delivery comes from the receiver itself, with the event id. uvicorn
    # formats an access line (client address, path) for every answer whenever its access
    # logger has a handler, even one that drops it; with none, it skips that work.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.setLevel(logging.WARNING)
