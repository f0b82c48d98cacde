"""What a delivery goes through once verified: route it, build its jobs, and store them
with the dedup mark (and the capture, when on) in one atomic step. The receiver's
webhook endpoint and `replay --direct` both use it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from redis.asyncio import Redis as AsyncRedis

from ..crypto import Sealer
from ..model.routes import Config, RouteTable
from ..settings import Settings
from .capture import CaptureWriter
from .dedup import Admission, AdmitOutcome, EventStore
from .enqueue import JobBuilder, JobWrite


class Admitted(NamedTuple):
    """What storing one delivery came to: the dedup outcome, the jobs queued, and how many
    matching routes the event's `live_mode` held back (docs/contract.md, "Event envelope")."""

    outcome: AdmitOutcome
    jobs: int
    held_back: int


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
        return self._jobs(source, payload, body, received_at, replay=replay, sealed_line=sealed_line)[0]

    def _jobs(
        self,
        source: str,
        payload: dict[str, Any],
        body: bytes,
        received_at: datetime,
        *,
        replay: bool,
        sealed_line: str | None,
    ) -> tuple[list[JobWrite], int]:
        """`jobs_for`, and how many matching routes the event's `live_mode` held back."""
        data = payload.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        routes, held_back = self.router.route(
            payload["type"], obj if isinstance(obj, dict) else {}, payload.get("live_mode")
        )
        jobs = self.builder.build(
            source,
            payload["id"],
            payload["type"],
            body,
            received_at,
            routes,
            clock="received_at" if replay else None,
            sealed_line=sealed_line,
        )
        return jobs, held_back

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
    ) -> Admitted:
        """Store the event and queue its jobs in one step (see dedup.py).

        `headers`: the delivery's, for capture (when on). `replay`: pin the clock; with
        `force_tag` the jobs run again under ids suffixed with it, even if the id was seen.
        The answer also says how many matching routes the event's `live_mode` held back.
        """
        capture = None
        if self.capture is not None and headers is not None:
            capture = self.capture.write(source, body, received_at, headers)
        jobs, held_back = self._jobs(
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
            Admission(
                source,
                payload["id"],
                jobs,
                capture=capture,
                force=force_tag is not None,
                received_at=received_at,
                event_type=str(payload["type"]),
            )
        )
        return Admitted(outcome, len(jobs), held_back)


def build_pipeline(settings: Settings, config: Config, redis: AsyncRedis) -> Pipeline:
    """Routing, job building, storage and capture, as the settings ask (also for replays)."""
    sealer = Sealer(settings.encryption_keys) if settings.encryption_keys else None
    builder = JobBuilder(config.routes, settings.queue_name, sealer)
    store = EventStore(redis, builder.templates, settings.dedup_ttl)
    router = RouteTable(config.routes, settings.service_mode)
    return Pipeline(router, builder, store, CaptureWriter.from_settings(settings))
