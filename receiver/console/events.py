"""Events: the recent ones with filters, a search by event, job or upstream id, the
event page (its trace: jobs and effects) and the confirm step of a retry.

The list reads the recent-events index (`receiver.store.recent`, capped) and then the
trace of at most TRACE_LIMIT of them; nothing here scans all of Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.responses import RedirectResponse, Response

from ..exceptions import ConfigError
from ..model.capture_file import parse_cli_time
from ..model.routes import event_job_part, type_matches
from ..store.recent import RecentEvent, read_recent, recent_type
from ..store.trace import EventTrace, load_trace
from .pages import Console, PageRequest, render

PAGE_SIZE = 100
TRACE_LIMIT = 500  # traces read for one list or one upstream-id search, at most
MAX_QUERY = 300  # characters of a search: longer is no id of ours
OUTCOMES = ("", "accepted", "duplicated", "failed", "pending", "succeeded")


@dataclass(frozen=True)
class EventFilter:
    type: str = ""
    since: str = ""
    until: str = ""
    outcome: str = ""  # "duplicated": came more than once; "failed"/"pending"/"succeeded": its jobs
    handler: str = ""

    @classmethod
    def read(cls, query: Mapping[str, str]) -> EventFilter:
        values = {name: str(query.get(name, "") or "").strip() for name in cls.__dataclass_fields__}
        if values["outcome"] not in OUTCOMES:
            values["outcome"] = ""
        return cls(**values)

    def window(self) -> tuple[datetime | None, datetime | None]:
        since = parse_cli_time("since", self.since) if self.since else None
        until = parse_cli_time("until", self.until) if self.until else None
        return since, until

    def needs_trace(self) -> bool:
        return bool(self.outcome or self.handler)

    def keeps(self, trace: EventTrace) -> bool:
        states = {job.state for job in trace.jobs}
        if self.handler and self.handler not in {job.handler for job in trace.jobs}:
            return False
        if self.outcome == "duplicated":
            return bool(trace.duplicates)
        if self.outcome == "failed":
            return "failed" in states
        if self.outcome == "pending":
            return bool(states - {"failed", "succeeded"})
        if self.outcome == "succeeded":
            return bool(states) and states == {"succeeded"}
        return True


@dataclass(frozen=True)
class EventRow:
    event: RecentEvent
    trace: EventTrace | None

    @property
    def summary(self) -> str:
        if self.trace is None:
            return ""
        states: dict[str, int] = {}
        for job in self.trace.jobs:
            states[job.state] = states.get(job.state, 0) + 1
        return ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "no jobs"


def event_list(page: PageRequest, console: Console) -> Response:
    chosen = EventFilter.read(page.query)
    try:
        since, until = chosen.window()
    except ConfigError as exc:
        return render(
            console,
            page,
            "events.html",
            status=400,
            title="Events",
            rows=[],
            chosen=chosen,
            error=str(exc),
            outcomes=OUTCOMES,
            handlers=_handlers(console),
        )
    recent = read_recent(console.redis, since=_remembered(console, since), until=until, limit=TRACE_LIMIT * 4)
    if chosen.type:
        recent = [e for e in recent if type_matches(chosen.type, e.type)]
    rows: list[EventRow] = []
    read = 0
    for event in recent:
        if len(rows) >= PAGE_SIZE or read >= TRACE_LIMIT:
            break
        trace = load_trace(console.redis, event.event_id, console.settings, console.config)
        read += 1
        if chosen.needs_trace() and (trace is None or not chosen.keeps(trace)):
            continue
        rows.append(EventRow(event, trace))
    return render(
        console,
        page,
        "events.html",
        title="Events",
        rows=rows,
        chosen=chosen,
        outcomes=OUTCOMES,
        handlers=_handlers(console),
        page_size=PAGE_SIZE,
        trace_limit=TRACE_LIMIT,
        stopped=read >= TRACE_LIMIT and len(rows) < PAGE_SIZE,
        refresh=not page.query,
    )


def _remembered(console: Console, since: datetime | None) -> datetime:
    """`since`, or later: an event older than the dedup window is forgotten by Redis (the
    index is trimmed by count only, so it may still name it)."""
    floor = datetime.now(UTC) - timedelta(seconds=console.settings.dedup_ttl)
    return floor if since is None or since < floor else since


def _handlers(console: Console) -> list[str]:
    return sorted({route.handler for route in console.config.routes})


def event_page(page: PageRequest, console: Console) -> Response:
    event_id = page.path_params["event_id"]
    trace = load_trace(console.redis, event_id, console.settings, console.config)
    if trace is None:
        return render(console, page, "not_found.html", status=404, title="Not found", query=event_id)
    return render(
        console,
        page,
        "event.html",
        title=f"Event {event_id}",
        trace=trace,
        event_type=trace.type or recent_type(console.redis, event_id),
        notice=page.query.get("notice", ""),
    )


def search(page: PageRequest, console: Console) -> Response:
    """An event id, a job id, or an upstream id (an OGSM report id, an Osma task id) of an
    effect of one of the last TRACE_LIMIT events."""
    query = page.query.get("q", "").strip()
    if not query:
        return RedirectResponse("/events", status_code=303)
    if len(query) > MAX_QUERY:
        return render(
            console, page, "not_found.html", status=404, title="Not found", query=query[:MAX_QUERY] + "…"
        )
    if load_trace(console.redis, query, console.settings, console.config) is not None:
        return RedirectResponse(f"/events/{quote(query, safe='')}", status_code=303)
    event_id = _event_of_job(console, query)
    if event_id is not None:
        return RedirectResponse(f"/events/{quote(event_id, safe='')}", status_code=303)
    for event in read_recent(console.redis, limit=TRACE_LIMIT):
        trace = load_trace(console.redis, event.event_id, console.settings, console.config)
        if trace is not None and any(effect.upstream_id == query for effect in trace.effects):
            return RedirectResponse(f"/events/{quote(event.event_id, safe='')}", status_code=303)
    return render(
        console, page, "not_found.html", status=404, title="Not found", query=query, searched=TRACE_LIMIT
    )


def _event_of_job(console: Console, job_id: str) -> str | None:
    """The event of a job id: from the job while RQ holds it, else from the id itself
    (`<source>_<event part>_<route key>[_<replay tag>]`, see `job_id_head`)."""
    try:
        job = Job.fetch(job_id, connection=console.redis, serializer=JSONSerializer)
        spec = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
        event_id = spec.get("event_id")
        if isinstance(event_id, str):
            return event_id
    except (NoSuchJobError, ValueError, TypeError):
        pass
    for route in console.config.routes:
        head, found, _tail = job_id.partition(f"_{route.key}")
        _source, _, part = head.partition("_")
        if found and part:
            break
    else:
        return None
    if part.startswith("e-"):
        return part[2:]
    # A hashed id ("h-..."): compare with the recent events' ids, read once.
    recent = read_recent(console.redis, limit=TRACE_LIMIT)
    return next((e.event_id for e in recent if event_job_part(e.event_id) == part), None)


def retry_confirm(page: PageRequest, console: Console) -> Response:
    """What a retry of a failed job will and will not do: effects its route already
    recorded as done are not posted again."""
    job_id = page.path_params["job_id"]
    event_id = _event_of_job(console, job_id)
    trace = load_trace(console.redis, event_id, console.settings, console.config) if event_id else None
    job = next((j for j in trace.jobs if j.job_id == job_id), None) if trace else None
    if trace is None or job is None:
        return render(console, page, "not_found.html", status=404, title="Not found", query=job_id)
    done = [e for e in trace.effects if e.route == job.route and e.state == "done"]
    pending = [e for e in trace.effects if e.route == job.route and e.state != "done"]
    back = f"/events/{quote(trace.event_id, safe='')}"
    return render(
        console,
        page,
        "retry_confirm.html",
        title="Retry a failed job",
        trace=trace,
        job=job,
        done=done,
        pending=pending,
        back=back,
    )
