"""Turning an accepted event into RQ jobs, cheaply.

RQ's `Queue.enqueue` builds a `Job`, serialises it and makes several round trips; done
per request it costs most of the receiver's time. Instead, each route's job hash is built
once with RQ's own `Job.to_dict()` (so the worker reads exactly what RQ would have
written) and a delivery only adds the fields that differ: id, data, description, times.
Likewise each route's part of the job data is serialised once, at start-up.
The writes themselves happen in `dedup.py`'s script, in the same atomic step as dedup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import orjson
from redis import Redis
from rq.job import Job, JobStatus, Retry
from rq.serializers import JSONSerializer

from ..crypto import Sealer
from ..model.routes import Route, job_id_head

JOB_FUNCTION = "receiver.jobs.run_handler"
RESULT_TTL = 0  # a finished job's hash holds the event body: drop it at once
FAILURE_TTL = 30 * 24 * 3600
SPEC_VERSION = 1


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which costs
# about a microsecond per record on the receiver's hot path; nothing changes these.
@dataclass(slots=True)
class JobWrite:
    """What the atomic script writes for one job."""

    job_id: str
    queue: str
    template: int
    data: bytes
    description: str


def route_template(route: Route, queue: str) -> tuple[bytes | str | int | float, ...]:
    """The constant fields of this route's job hash, as RQ itself would write them."""
    intervals = route.retry_intervals()
    job = Job.create(
        JOB_FUNCTION,
        args=[None],
        connection=Redis(),  # never used: no command is sent while building the template
        serializer=JSONSerializer,
        id="template",
        timeout=route.timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=route.retries, interval=intervals) if route.retries else None,
    )
    job.origin = queue
    job._status = JobStatus.QUEUED  # RQ sets it the same way in _prepare_for_queue
    fields = job.to_dict()
    for varying in ("data", "created_at", "enqueued_at", "description"):
        fields.pop(varying, None)
    flat: list[bytes | str | int | float] = []
    for name, value in fields.items():
        if isinstance(value, Enum):
            value = value.value
        if value != "":  # RQ reads an absent field as empty: send less on every delivery
            flat.extend((name, value))
    return tuple(flat)


class JobBuilder:
    """Builds the job writes of one event; templates are made once per route."""

    def __init__(self, routes: Sequence[Route], default_queue: str, sealer: Sealer | None) -> None:
        self.default_queue = default_queue
        self.sealer = sealer
        self.templates: list[tuple[bytes | str | int | float, ...]] = []
        self._template_index: dict[str, int] = {}
        # Per route key: its spec as JSON (serialised once), queue and template number.
        self._constant: dict[str, tuple[orjson.Fragment, str, int]] = {}
        self._second: tuple[int, str] = (-1, "")  # see _isoformat
        for route in routes:
            self._template_index[route.key] = len(self.templates)
            self.templates.append(route_template(route, self.queue_of(route)))
            spec = orjson.Fragment(orjson.dumps(route_spec(route)))
            self._constant[route.key] = (spec, self.queue_of(route), self._template_index[route.key])

    def queue_of(self, route: Route) -> str:
        return route.queue or self.default_queue

    def _isoformat(self, moment: datetime) -> str:
        """`moment.astimezone(UTC).isoformat()`, which formats every field through printf
        on each call; for a UTC time the part up to the second is formatted once a second."""
        if moment.tzinfo is not UTC:
            return moment.astimezone(UTC).isoformat()
        second = int(moment.timestamp())
        if second <= 0:  # up to 1970-01-01T00:00:01 int() rounds towards zero, not down
            return moment.isoformat()
        cached, head = self._second
        if second != cached:
            head = moment.replace(microsecond=0).isoformat().removesuffix("+00:00")
            self._second = (second, head)
        micro = moment.microsecond
        return f"{head}.{micro:06d}+00:00" if micro else f"{head}+00:00"

    def build(
        self,
        source: str,
        event_id: str,
        event_type: str,
        body: bytes,
        received_at: datetime,
        routes: Sequence[Route],
        *,
        clock: str | None = None,
        sealed_line: str | None = None,
    ) -> list[JobWrite]:
        """One job write per route; `clock="received_at"` pins handlers' clock (replays).

        `sealed_line`: the capture's token of this delivery (capture on); the jobs carry it
        instead of a token of their own, so a delivery costs one encryption, not two.
        """
        if not routes:
            return []
        if sealed_line is not None:
            payload_field, payload = "sealed_line", sealed_line
        elif self.sealer is not None:
            payload_field, payload = "sealed", self.sealer.seal(body)
        else:
            payload_field, payload = "body", body.decode("utf-8")
        received = self._isoformat(received_at)
        head = job_id_head(source, event_id)
        writes = []
        for route in routes:
            route_json, queue, template = self._constant[route.key]
            spec: dict[str, Any] = {
                "v": SPEC_VERSION,
                "source": source,
                "event_id": event_id,
                "event_type": event_type,
                "received_at": received,
                "route": route_json,
                payload_field: payload,
            }
            if clock is not None:
                spec["clock"] = clock
            writes.append(
                JobWrite(
                    job_id=head + route.key,
                    queue=queue,
                    template=template,
                    data=orjson.dumps([JOB_FUNCTION, None, [spec], {}]),
                    # No event data in the description: it shows in `rq info` and logs.
                    description=f"{route.handler} for {source} event {event_type}",
                )
            )
        return writes


def route_spec(route: Route) -> Mapping[str, Any]:
    return {
        "key": route.key,
        "index": route.index,
        "handler": route.handler,
        "on": list(route.on),
        "where": dict(route.where),
        "params": dict(route.params),
        "retries": route.retries,
        "backoff": list(route.backoff),
    }
