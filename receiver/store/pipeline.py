"""What a delivery goes through once verified: route it, build its jobs, and store them
with the dedup mark (and the capture, when on) in one atomic step. The receiver's
webhook endpoint and `replay --direct` both use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from ..crypto import Sealer
from ..model.routes import Config, RouteTable
from ..settings import Settings
from .capture import CaptureWriter
from .dedup import Admission, AdmitOutcome, EventStore
from .enqueue import JobBuilder, JobWrite


@dataclass
class Pipeline:
    """What a delivery goes through after verification: route, build jobs, store."""

    router: RouteTable
    builder: JobBuilder
    store: EventStore
    capture: CaptureWriter | None = None

    def jobs_for(
        self,
        source: str,
        payload: dict[str, Any],
        body: bytes,
        received_at: datetime,
        *,
        replay: bool = False,
        sealed_line: str | None = None,
    ) -> list[JobWrite]:
        """The jobs of one event; a replay pins the handlers' clock to `received_at`."""
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        routes = self.router.match(payload["type"], obj if isinstance(obj, dict) else {})
        return self.builder.build(
            source,
            payload["id"],
            payload["type"],
            body,
            received_at,
            routes,
            clock="received_at" if replay else None,
            sealed_line=sealed_line,
        )

    async def admit(
        self,
        source: str,
        payload: dict[str, Any],
        body: bytes,
        received_at: datetime,
        *,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
        replay: bool = False,
        force_tag: str | None = None,
    ) -> tuple[AdmitOutcome, int]:
        """Store the event and queue its jobs in one step (see dedup.py).

        `headers`: the delivery's, for capture (when on). `replay`: pin the clock; with
        `force_tag` the jobs run again under ids suffixed with it, even if the id was seen.
        """
        capture = None
        if self.capture is not None and headers is not None:
            capture = self.capture.write(source, body, received_at, headers)
        jobs = self.jobs_for(
            source,
            payload,
            body,
            received_at,
            replay=replay,
            sealed_line=capture.token if capture is not None else None,
        )
        if force_tag is not None:
            jobs = [replace(job, job_id=f"{job.job_id}_{force_tag}") for job in jobs]
        outcome = await self.store.admit(
            Admission(source, payload["id"], jobs, capture=capture, force=force_tag is not None)
        )
        return outcome, len(jobs)


def build_pipeline(settings: Settings, config: Config, redis: AsyncRedis) -> Pipeline:
    """Routing, job building, storage and capture, as the settings ask (also for replays)."""
    sealer = Sealer(settings.encryption_keys) if settings.encryption_keys else None
    builder = JobBuilder(config.routes, settings.queue_name, sealer)
    store = EventStore(redis, builder.templates, settings.dedup_ttl)
    return Pipeline(RouteTable(config.routes), builder, store, CaptureWriter.from_settings(settings))
