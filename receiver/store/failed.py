"""The dead-letter place: RQ's failed-job registries of our queues, for people."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from ..exceptions import NoSuchFailedJob


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


def _describe(job: Job, queue: str) -> FailedJob:
    try:
        spec: dict[str, Any] = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    except Exception:
        spec = {}
    route = spec.get("route", {}) if isinstance(spec.get("route"), dict) else {}
    meta = job.meta or {}
    last_error = str(meta.get("last_error") or _last_line(job.exc_info) or "-")
    return FailedJob(
        job_id=job.id,
        queue=queue,
        event_id=str(spec.get("event_id", "-")),
        event_type=str(spec.get("event_type", "-")),
        handler=str(route.get("handler", "-")),
        route=str(route.get("key", "-")),
        attempts=int(meta.get("attempts", 1)),
        last_error=last_error.splitlines()[0] if last_error else "-",
        ended_at=job.ended_at.isoformat() if job.ended_at else "-",
    )


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class FailedJobs:
    def __init__(self, redis: Redis, queues: Sequence[str]) -> None:
        self.redis = redis
        self.registries = {
            name: FailedJobRegistry(name, connection=redis, serializer=JSONSerializer) for name in queues
        }

    def __iter__(self) -> Iterator[FailedJob]:
        for queue, registry in self.registries.items():
            for job_id in registry.get_job_ids():
                try:
                    job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
                except NoSuchJobError:
                    continue
                yield _describe(job, queue)

    def get(self, job_id: str) -> FailedJob:
        for queue, registry in self.registries.items():
            if job_id in registry:
                job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
                return _describe(job, queue)
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
