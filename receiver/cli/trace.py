"""`osma-router trace EVENT_ID [--json]`: what one event caused (receiver/store/trace.py).
Ids, states, times, error types and messages only: never member or task data."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ..model.connectors import SOURCE as OSMOS
from ..store.connection import connect
from ..store.recent import recent_type
from ..store.trace import EventTrace, load_trace
from .common import add_command, current_settings, fail


def cmd_trace(args: argparse.Namespace) -> int:
    settings = current_settings()
    redis = connect(settings, "command", url=settings.require_redis_url())
    try:
        trace = load_trace(redis, args.event_id, settings)
        if trace is not None and trace.type is None:
            # Its jobs are gone (they succeeded): the recent-events index still knows it.
            trace = replace(trace, type=recent_type(redis, args.event_id))
    finally:
        redis.close()
    if trace is None:
        return fail(f"no event {args.event_id!r} in Redis (never received, or its records have expired)")
    print(trace.to_json() if args.json else render(trace))
    return 0


# An Osmos record runs inside its batch's chunk jobs, which hold ~1,000 records each.
OSMOS_JOBS = (
    "(an Osmos record runs inside its batch's chunk jobs; it has a job of its own, listed "
    "here, only once its handler raised)"
)


def render(trace: EventTrace) -> str:
    """The trace as a person reads it: the event, then a table of jobs and of effects."""
    if trace.source == OSMOS:
        times = "- (an Osmos record's repeats are dropped, not counted)"
    elif trace.times_received is None:
        times = "unknown (its dedup mark has expired)"
    else:
        times = f"{trace.times_received} ({_plural(trace.duplicates or 0, 'duplicate')})"
    lines = [
        f"event     {trace.event_id}",
        f"source    {trace.source}",
        f"type      {trace.type or '-'}",
        f"received  {_time(trace.received_at)}",
        f"times     {times}",
        "",
    ]
    jobs = [
        (
            job.job_id,
            job.route,
            job.handler or "-",
            _state(job.state, job.retry_at),
            _count(job.attempts),
            job.last_error or "-",
        )
        for job in trace.jobs
    ]
    lines += _table("jobs", ("JOB ID", "ROUTE", "HANDLER", "STATE", "ATTEMPTS", "LAST ERROR"), jobs)
    if trace.source == OSMOS:
        lines.append(OSMOS_JOBS)
    effects = [
        (
            effect.key,
            effect.handler or "-",
            effect.state if effect.reason is None else f"{effect.state}: {effect.reason}",
            effect.upstream_id or "-",
            "yes" if effect.reconciled else "no",
            _count(effect.generation),
        )
        for effect in trace.effects
    ]
    lines += [
        "",
        *_table("effects", ("KEY", "HANDLER", "STATE", "UPSTREAM ID", "RECONCILED", "GEN"), effects),
    ]
    return "\n".join(lines)


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return [f"no {title}"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in [header, *rows]
    ]


def _state(state: str, retry_at: datetime | None) -> str:
    return f"{state} (retry at {_time(retry_at)})" if retry_at is not None else state


def _time(moment: datetime | None) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment is not None else "-"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def add_commands(sub: Any) -> None:
    """`osma-router trace`."""
    p = add_command(
        sub,
        "trace",
        cmd_trace,
        "what one event caused: when it was received, how many times it came, each job "
        "(route, handler, state, attempts, last error) and each effect in the ledger (key, "
        "state, upstream id, reconciled); ids and states only, never member data; an "
        "unknown id is one line and exit 1",
    )
    p.add_argument("event_id", metavar="EVENT_ID", help="an Osma event id (evt_...) or an Osmos record id")
    p.add_argument("--json", action="store_true", help="print the same as one JSON document")
