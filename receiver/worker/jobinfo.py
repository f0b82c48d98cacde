"""What a queued job says about itself, for logs and counters: its handler and event id,
read from the spec the receiver stored (no event data)."""

from __future__ import annotations

from typing import Any

from rq.job import Job


def spec_of(job: Job) -> dict[str, Any]:
    try:
        args = job.args
        return args[0] if args and isinstance(args[0], dict) else {}
    except Exception:  # an unreadable job (a foreign one, a sealed one without keys) has no spec
        return {}


def handler_of(job: Job) -> str:
    return str(spec_of(job).get("route", {}).get("handler", "unknown"))


def event_of(job: Job) -> str | None:
    value = spec_of(job).get("event_id")
    return str(value) if value is not None else None
