"""What one event caused, read from what the service already keeps in Redis: its dedup
mark (when it was received, how many times it came, which jobs it queued), its RQ jobs,
and its effects in the ledger. `osma-router trace` prints it; the console shows it.

Ids, states, times, error types and messages only. An error message is returned with
the values of its event masked, as the worker's log line has it (a handler may quote the
event in its exceptions); that is the one use of an event body here, and only of one kept
in clear (with encryption keys, a stored error is its type alone).

- Jobs. Job ids are deterministic per (event, route), so the jobs of an event are found
  from the routes file and the dedup mark without scanning. A job that succeeded leaves
  nothing behind (its hash held the event body and is deleted at once), so a job the
  mark lists and Redis no longer holds is reported as succeeded, with unknown attempts.
  Jobs the mark does not list (a mark written by `replay --inline` or an older release)
  are found only while RQ still holds them.
- Effects. The ledger's per-event index (what handlers record under their name), and
  the effects of each job under the steps the built-in handlers use (their
  `ctx.idempotency_key(step)`), which also finds an effect whose answer was lost
  ("intent": a retry reconciles it). A plugin's own unindexed steps are not found.
- Osmos records (`osmos_<connector>_...`): their jobs while RQ holds them, and their
  effects; a batch keeps no per-record mark to say when it came or how often.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from ..keys import RQ_JOB_PREFIX, dedup_key, effect_key, effects_of_key
from ..logs import masked
from ..model.connectors import SOURCE as OSMOS
from ..model.connectors import Connector, record_ids
from ..model.plugins import HandlerRegistry
from ..model.routes import Config, Route, job_id_head, load_config
from ..settings import Settings
from .batches import mark_hashes
from .dedup import DedupMark, dedup_ttl_ms
from .failed import event_values
from .ledger import job_effect_key

OSMA = "osma"
# The effect steps of the built-in handlers (and the default one), probed per job.
KNOWN_STEPS = ("main", "report", "metadata", "create", "update", "archive", "delete")
_JOB_FIELDS = ("status", "origin", "description", "meta", "enqueued_at", "ended_at")
_EFFECT_FIELDS = ("state", "result", "generation", "reconciled")
# `JobBuilder.build`'s description: "<handler> for <source> event <type>" (no event data).
_DESCRIPTION = re.compile(r"(\S+) for (\S+) event (.+)\Z")
_STATES = {"finished": "succeeded"}  # everything else as RQ names it


@dataclass(frozen=True)
class JobTrace:
    """One job of the event. `state`: queued, started, scheduled (a retry waits until
    `retry_at`), deferred, failed (the failed registry), succeeded, stopped or canceled.
    `attempts`: runs that ended in an error so far (for a failed job: all its runs); None
    for a succeeded job, whose record is gone. `last_error`: "<type>: <message>".
    `history`: each failed run, oldest first, as (attempt, when, error type)."""

    job_id: str
    route: str
    handler: str | None
    state: str
    attempts: int | None
    last_error: str | None
    retry_at: datetime | None
    enqueued_at: datetime | None
    ended_at: datetime | None
    history: tuple[tuple[int, datetime | None, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "route": self.route,
            "handler": self.handler,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "retry_at": _iso(self.retry_at),
            "enqueued_at": _iso(self.enqueued_at),
            "ended_at": _iso(self.ended_at),
            "history": [
                {"attempt": attempt, "at": _iso(at), "error": error} for attempt, at, error in self.history
            ],
        }


@dataclass(frozen=True)
class EffectTrace:
    """One effect in the ledger. `state`: "intent" (about to be sent, or its answer was
    lost: the next run reconciles before sending again), "done" or "skipped" (`reason`).
    `upstream_id`: the id upstream gave the result; `reconciled`: the outcome was found by
    reading upstream rather than from the answer; `generation`: the idempotency key's
    generation used (2 and more: Osma had kept an earlier key's error)."""

    key: str
    route: str | None
    handler: str | None
    state: str
    upstream_id: str | None
    reconciled: bool
    generation: int | None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "route": self.route,
            "handler": self.handler,
            "state": self.state,
            "upstream_id": self.upstream_id,
            "reconciled": self.reconciled,
            "generation": self.generation,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class EventTrace:
    """What one event caused. `received_at`: when it was first stored (None when its dedup
    mark is gone or says no time); `duplicates`: how many more times it came (None when
    not known)."""

    event_id: str
    source: str
    type: str | None
    received_at: datetime | None
    duplicates: int | None
    jobs: tuple[JobTrace, ...]
    effects: tuple[EffectTrace, ...]

    @property
    def times_received(self) -> int | None:
        return None if self.duplicates is None else self.duplicates + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "source": self.source,
            "type": self.type,
            "received_at": _iso(self.received_at),
            "times_received": self.times_received,
            "duplicates": self.duplicates,
            "jobs": [job.as_dict() for job in self.jobs],
            "effects": [effect.as_dict() for effect in self.effects],
        }

    def to_json(self) -> str:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2).decode()


def load_trace(
    redis: Redis, event_id: str, settings: Settings, config: Config | None = None
) -> EventTrace | None:
    """The trace of `event_id`, or None when Redis holds nothing about it. `config`: the
    routes (default: loaded from the settings' routes file)."""
    if config is None:
        config = load_config(settings.config_path, HandlerRegistry.discover(settings.plugins), tokens=False)
    routes = {route.key: route for route in config.routes}
    connector = _connector_of(event_id, config)

    with redis.pipeline(transaction=False) as pipe:
        pipe.get(dedup_key(OSMA, event_id))
        pipe.hgetall(effects_of_key(event_id))
        mark_value, indexed = pipe.execute()
    mark = DedupMark.parse(mark_value) if mark_value is not None else None

    source, received_at, duplicates = OSMA, None, None
    listed: tuple[str, ...] = ()
    if mark is not None:
        received_at, duplicates, listed = mark.received_at, mark.duplicates, mark.job_tails
    elif connector is not None:
        source = OSMOS
        received_at = osmos_received_at(redis, connector, event_id, settings.dedup_ttl)

    head = job_id_head(source, event_id)
    tails = list(dict.fromkeys([*listed, *routes]))
    found = _read_jobs(redis, [head + tail for tail in tails])
    jobs = []
    event_type = connector.event_type if source == OSMOS and connector is not None else None
    for tail, (job_id, fields) in zip(tails, found, strict=True):
        route_key = tail.split("_", 1)[0]
        route = routes.get(route_key)
        if fields is None:
            if tail in listed:
                jobs.append(_succeeded(job_id, route_key, route))
            continue
        description = _DESCRIPTION.match(_text(fields.get("description")) or "")
        if description is not None:
            event_type = event_type or description.group(3)
        handler = route.handler if route is not None else description.group(1) if description else None
        jobs.append(_job(job_id, route_key, handler, fields))
    jobs = _with_retry_times(redis, [_with_error_masked(redis, job) for job in jobs], found)

    effects = _read_effects(redis, event_id, indexed, jobs)
    if mark is None and received_at is None and not jobs and not effects:
        return None
    return EventTrace(event_id, source, event_type, received_at, duplicates, tuple(jobs), tuple(effects))


def osmos_received_at(redis: Redis, connector: Connector, event_id: str, dedup_ttl: float) -> datetime | None:
    """When an Osmos record was accepted, from its live dedup mark: the mark's value is when
    it expires, one dedup window after it was written (store/batch_scripts.py). None when
    the id is not one of the connector's or its mark has expired."""
    digest = record_ids(connector).digest_of(event_id)
    if digest is None:
        return None
    window = dedup_ttl_ms(dedup_ttl)
    now_ms = int(time.time() * 1000)
    with redis.pipeline(transaction=False) as pipe:
        for key in mark_hashes(connector.name, digest, window, now_ms):
            pipe.hget(key, digest)
        expiries = [int(value) for value in pipe.execute() if value is not None]
    live = [expires for expires in expiries if expires > now_ms]
    return datetime.fromtimestamp((max(live) - window) / 1000, UTC) if live else None


def _connector_of(event_id: str, config: Config) -> Connector | None:
    """The Osmos connector whose record ids look like this one (`osmos_<name>_...`)."""
    if not event_id.startswith(OSMOS + "_"):
        return None
    matching = [c for c in config.connectors.values() if event_id.startswith(f"{OSMOS}_{c.name}_")]
    return max(matching, key=lambda c: len(c.name), default=None)


def _read_jobs(redis: Redis, job_ids: Sequence[str]) -> list[tuple[str, dict[str, bytes] | None]]:
    """Each job's bookkeeping fields (never `data`: it holds the event), None when gone."""
    with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(RQ_JOB_PREFIX + job_id, _JOB_FIELDS)
        replies = pipe.execute()
    found: list[tuple[str, dict[str, bytes] | None]] = []
    for job_id, values in zip(job_ids, replies, strict=True):
        fields = dict(zip(_JOB_FIELDS, values, strict=True))
        found.append((job_id, fields if fields["status"] is not None else None))
    return found


def _succeeded(job_id: str, route_key: str, route: Route | None) -> JobTrace:
    return JobTrace(
        job_id, route_key, route.handler if route else None, "succeeded", None, None, None, None, None
    )


def _job(job_id: str, route_key: str, handler: str | None, fields: Mapping[str, bytes | None]) -> JobTrace:
    status = _text(fields.get("status")) or "queued"
    meta = _json(fields.get("meta"))
    attempts = meta.get("attempts", 0)
    last_error = meta.get("last_error")
    return JobTrace(
        job_id=job_id,
        route=route_key,
        handler=handler,
        state=_STATES.get(status, status),
        attempts=attempts if isinstance(attempts, int) else 0,
        last_error=str(last_error).splitlines()[0] if last_error else None,
        retry_at=None,
        enqueued_at=_rq_time(fields.get("enqueued_at")),
        ended_at=_rq_time(fields.get("ended_at")),
        history=_history(meta.get("history")),
    )


def _history(stored: Any) -> tuple[tuple[int, datetime | None, str], ...]:
    if not isinstance(stored, list):
        return ()
    runs = []
    for entry in stored:
        if isinstance(entry, dict) and isinstance(entry.get("attempt"), int):
            at = entry.get("at")
            runs.append(
                (
                    entry["attempt"],
                    _rq_time(at.encode()) if isinstance(at, str) else None,
                    str(entry.get("error", "?")),
                )
            )
    return tuple(runs)


def _with_retry_times(
    redis: Redis, jobs: list[JobTrace], found: Iterable[tuple[str, dict[str, bytes] | None]]
) -> list[JobTrace]:
    """Scheduled jobs get the time their retry is due (the scheduled registry's score)."""
    origins = {job_id: _text(fields.get("origin")) for job_id, fields in found if fields is not None}
    waiting = [job for job in jobs if job.state == "scheduled" and origins.get(job.job_id)]
    if not waiting:
        return jobs
    with redis.pipeline(transaction=False) as pipe:
        for job in waiting:
            pipe.zscore(ScheduledJobRegistry.key_template.format(origins[job.job_id]), job.job_id)
        scores = dict(zip((job.job_id for job in waiting), pipe.execute(), strict=True))
    return [
        _replace_retry(job, scores[job.job_id]) if scores.get(job.job_id) is not None else job for job in jobs
    ]


def _with_error_masked(redis: Redis, job: JobTrace) -> JobTrace:
    """The job with the values of its event masked in its error message."""
    if job.last_error is None:
        return job
    try:
        spec = Job.fetch(job.job_id, connection=redis, serializer=JSONSerializer).args[0]
    except Exception:  # gone meanwhile, or not ours: nothing there to mask against
        return job
    values = event_values(spec) if isinstance(spec, dict) else set()
    return replace(job, last_error=masked(job.last_error, values)) if values else job


def _replace_retry(job: JobTrace, score: float) -> JobTrace:
    return replace(job, retry_at=datetime.fromtimestamp(float(score), UTC))


def _read_effects(
    redis: Redis,
    event_id: str,
    indexed: Mapping[bytes, bytes],
    jobs: Sequence[JobTrace],
) -> list[EffectTrace]:
    """The ledger's effects of the event: its index, and each job's known steps."""
    candidates: dict[str, tuple[str | None, str | None]] = {}  # key -> (route, handler)
    for label, entry in indexed.items():
        key = _json(entry).get("key")
        if isinstance(key, str):
            candidates[key] = (None, _text(label))
    for job in jobs:
        for step in KNOWN_STEPS:
            key = job_effect_key(event_id, job.route, step)
            route, handler = candidates.get(key, (None, None))
            candidates[key] = (job.route, handler or job.handler)
    if not candidates:
        return []
    with redis.pipeline(transaction=False) as pipe:
        for key in candidates:
            pipe.hmget(effect_key(key), _EFFECT_FIELDS)
        replies = pipe.execute()
    effects = []
    for (key, (route, handler)), values in zip(candidates.items(), replies, strict=True):
        fields = dict(zip(_EFFECT_FIELDS, values, strict=True))
        state = _text(fields["state"])
        if state is None:
            continue
        result = _json(fields["result"])
        upstream_id = result.get("id")
        generation = _text(fields["generation"])
        reason = result.get("reason") if state == "skipped" else None
        effects.append(
            EffectTrace(
                key=key,
                route=route or _route_of(key, event_id),
                handler=handler,
                state=state,
                upstream_id=str(upstream_id) if upstream_id is not None else None,
                reconciled=_text(fields["reconciled"]) == "1",
                generation=int(generation) if generation and generation.isdigit() else None,
                reason=str(reason) if reason is not None else None,
            )
        )
    return effects


def _route_of(key: str, event_id: str) -> str | None:
    """The route key inside an effect key `osma-router:<event id>|<route>|<step>`."""
    prefix = f"osma-router:{event_id}|"
    rest = key[len(prefix) :] if key.startswith(prefix) else ""
    return rest.split("|", 1)[0] if "|" in rest else None


def _rq_time(value: bytes | None) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _json(value: bytes | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        loaded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None
