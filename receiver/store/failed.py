"""The dead-letter place: RQ's failed-job registries of our queues, for people; and how
a failed run's error is kept in a job's meta.

A handler's exception message can hold member data (`raise ValueError(task["name"])`),
so with `OSMA_ROUTER_ENCRYPTION_KEYS` set the error is kept as:

- `last_error`: the exception type alone, readable without the key;
- `last_error_sealed`: a Fernet token of the one-line `Type: message`;
- `traceback_sealed`: a Fernet token of the whole traceback;

and RQ's own copy of the traceback (its results stream, the job hash's `exc_info`) is
only the type and `SEALED_NOTE`. Without keys, `last_error` is `Type: message` and RQ
keeps its traceback, in clear, as before. `failed list` / `failed show` open the tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from ..crypto import Sealer
from ..exceptions import NoSuchFailedJob, PermanentError
from ..logs import masked, masked_values
from .osmos_chunks import CHUNK_KIND

SEALED_FIELDS = ("last_error_sealed", "traceback_sealed")
SEALED_NOTE = "(message and traceback sealed: `osma-router failed show` opens them with the key)"
TRACEBACK_LIMIT = 20_000  # characters of a traceback kept (its end: the exception is there)
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")


def error_meta(kind: str, line: str, traceback: str, sealer: Sealer | None) -> dict[str, str]:
    """The meta fields that keep a failed run's error (see the module docstring)."""
    if sealer is None:
        return {"last_error": line}
    return {
        "last_error": kind,
        "last_error_sealed": sealer.seal(line.encode("utf-8")),
        "traceback_sealed": sealer.seal(traceback[-TRACEBACK_LIMIT:].encode("utf-8")),
    }


def kept_exc_text(meta: Mapping[str, Any], exc_string: str) -> str:
    """What RQ may store as a failed run's traceback: only the type once the error is sealed."""
    return sealed_stub(str(meta.get("last_error", ""))) if "last_error_sealed" in meta else exc_string


def sealed_stub(kind: str) -> str:
    return f"{kind or 'error'} {SEALED_NOTE}"


def is_stub(text: str) -> bool:
    return text.endswith(SEALED_NOTE)


def kind_of(text: str) -> str:
    """The exception type named by a `Type: message` line or a traceback's last line."""
    lines = [line for line in text.splitlines() if line.strip()]
    head = lines[-1].split(":", 1)[0].strip() if lines else ""
    return head.rsplit(".", 1)[-1] if _TYPE_NAME.fullmatch(head) else "error"


def event_values(spec: Mapping[str, Any]) -> set[str]:
    """The values `masked` hides of the event a job spec carries in clear; none for a
    sealed event or a job without one."""
    body = spec.get("body")
    if not isinstance(body, str):
        return set()
    try:
        return masked_values(orjson.loads(body))
    except orjson.JSONDecodeError:
        return set()


def _opened(meta: Mapping[str, Any], field: str, sealer: Sealer | None) -> str | None:
    """A sealed field's text, or a note saying why it cannot be read; None when absent."""
    token = meta.get(field)
    if not isinstance(token, str):
        return None
    kind = str(meta.get("last_error") or "error")
    if sealer is None:
        return f"{kind} (message sealed: set OSMA_ROUTER_ENCRYPTION_KEYS to read it)"
    try:
        return sealer.open(token).decode("utf-8", errors="replace")
    except PermanentError:
        return f"{kind} (message sealed with a key that is not in OSMA_ROUTER_ENCRYPTION_KEYS)"


@dataclass(frozen=True)
class FailedJob:
    job_id: str
    queue: str
    event_id: str
    event_type: str
    handler: str
    route: str
    attempts: int
    last_error: str
    ended_at: str
    traceback: str = ""


def _describe(job: Job, queue: str, sealer: Sealer | None, mask: bool) -> FailedJob:
    try:
        spec: dict[str, Any] = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    except Exception:
        spec = {}
    route = spec.get("route", {}) if isinstance(spec.get("route"), dict) else {}
    meta = job.meta or {}
    exc_text = _exc_text(job)
    last_error = _opened(meta, "last_error_sealed", sealer) or str(
        meta.get("last_error") or _last_line(exc_text) or "-"
    )
    traceback = _opened(meta, "traceback_sealed", sealer) if sealer is not None else None
    if mask:  # for a page: the error as the worker's log line has it, and no traceback
        last_error, traceback = masked(last_error, event_values(spec)), ""
    return FailedJob(
        job_id=job.id,
        queue=queue,
        event_id=str(spec.get("event_id") or _records_of(spec)),
        event_type=str(spec.get("event_type", "-")),
        handler=str(route.get("handler", "-")),
        route=str(route.get("key", "-")),
        attempts=int(meta.get("attempts", 1)),
        last_error=last_error.splitlines()[0] if last_error else "-",
        ended_at=job.ended_at.isoformat() if job.ended_at else "-",
        traceback=traceback if traceback is not None else exc_text,
    )


def _records_of(spec: Mapping[str, Any]) -> str:
    """What a job without an event id ran: an Osmos chunk job failed as a whole (its blob
    unreadable, its handler unknown) names how many records wait in it."""
    if spec.get("kind") == CHUNK_KIND:
        return f"({spec.get('records', '?')} Osmos records)"
    return "-"


def _exc_text(job: Job) -> str:
    """RQ's copy of the traceback (only the type and `SEALED_NOTE` once sealed)."""
    try:
        result = job.latest_result()
    except Exception:  # an unreadable result stream: the meta still says what failed
        result = None
    if result is not None and result.exc_string:
        return str(result.exc_string)
    return str(getattr(job, "_exc_info", None) or "")  # the job hash's own `exc_info`


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


PAGE = 500  # failed jobs read in one round trip


class FailedJobs:
    """The failed jobs of `queues`; `sealer` opens sealed errors (see the module docstring).
    `mask`: each last error with the values of its event masked, and no traceback (the
    console's pages, which show no member data)."""

    def __init__(
        self, redis: Redis, queues: Sequence[str], sealer: Sealer | None = None, *, mask: bool = False
    ) -> None:
        self.redis = redis
        self.sealer = sealer
        self.mask = mask
        self.registries = {
            name: FailedJobRegistry(name, connection=redis, serializer=JSONSerializer) for name in queues
        }

    def __iter__(self) -> Iterator[FailedJob]:
        """Oldest first, queue by queue. The ids are read at once (small); the jobs a page
        at a time, each page in one round trip, so a long list starts at once and is never
        held whole."""
        for queue, registry in self.registries.items():
            job_ids = registry.get_job_ids()
            for start in range(0, len(job_ids), PAGE):
                page = Job.fetch_many(job_ids[start : start + PAGE], self.redis, JSONSerializer)
                for job in page:
                    if job is not None:  # gone meanwhile (retried and done, or expired)
                        yield _describe(job, queue, self.sealer, self.mask)

    def count(self) -> int:
        """How many failed jobs the registries hold."""
        return sum(registry.count for registry in self.registries.values())

    def get(self, job_id: str) -> FailedJob:
        for queue, registry in self.registries.items():
            if job_id in registry:
                job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
                return _describe(job, queue, self.sealer, self.mask)
        raise NoSuchFailedJob(f"no failed job with id {job_id!r} (see `osma-router failed list`)")

    def retry(self, job_id: str) -> None:
        for registry in self.registries.values():
            if job_id in registry:
                registry.requeue(job_id)
                return
        raise NoSuchFailedJob(f"no failed job with id {job_id!r} (see `osma-router failed list`)")

    def retry_all(self) -> int:
        count = 0
        for registry in self.registries.values():
            for job_id in registry.get_job_ids():
                registry.requeue(job_id)
                count += 1
        return count
