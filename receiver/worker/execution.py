"""Running one handler job inside a worker: rebuild the event, call the handler, and
turn its failure into RQ's retry decision (docs/contract.md, "Retries")."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import traceback
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from redis import Redis
from rq.job import Job, get_current_job

from ..crypto import Sealer
from ..exceptions import ClaimHeld, ConfigError, PermanentError, RateLimited, is_retryable
from ..logs import ContextLogger
from ..model.events import Event, build_event, parse_time
from ..model.plugins import HandlerRegistry
from ..model.routes import Config, load_config
from ..settings import Settings
from ..store.connection import connect
from ..store.failed import SEALED_FIELDS, error_meta, kept_exc_text
from ..upstream.http import record_stats_in
from .clients import Upstream
from .context import Context

log = logging.getLogger("osma_router.worker")

ATTEMPT_HISTORY = 20  # failed runs a job remembers (time and error type each)


@dataclass
class WorkerRuntime:
    """What every job of a worker process shares; built once, at worker start."""

    settings: Settings
    registry: HandlerRegistry
    config: Config
    redis: Redis
    sealer: Sealer | None = None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    upstream: Upstream = field(init=False)

    def __post_init__(self) -> None:
        # The Osma / OGSM clients and their connections, shared by this process's jobs.
        self.upstream = Upstream(self.settings, self.redis)

    _current: ClassVar[WorkerRuntime | None] = None  # one per process, set by the worker

    @classmethod
    def build(
        cls, settings: Settings, redis: Redis, registry: HandlerRegistry | None = None
    ) -> WorkerRuntime:
        registry = registry or HandlerRegistry.discover(settings.plugins)
        config = load_config(settings.config_path, registry, tokens=False)
        sealer = Sealer(settings.encryption_keys) if settings.encryption_keys else None
        return cls(settings=settings, registry=registry, config=config, redis=redis, sealer=sealer)

    @classmethod
    def install(cls, runtime: WorkerRuntime) -> None:
        WorkerRuntime._current = runtime
        record_stats_in(runtime.redis)

    @classmethod
    def current(cls) -> WorkerRuntime:
        if WorkerRuntime._current is None:  # a job run by a plain `rq worker`, not ours
            settings = Settings.from_env()
            WorkerRuntime._current = cls.build(settings, connect(settings, "worker"))
        return WorkerRuntime._current

    def open_body(self, spec: Mapping[str, Any]) -> bytes:
        if "sealed" in spec or "sealed_line" in spec:
            if self.sealer is None:
                raise PermanentError(
                    "this job's event is encrypted but OSMA_ROUTER_ENCRYPTION_KEYS is not set on the worker"
                )
            if "sealed_line" in spec:  # capture on: the token holds the capture line, body inside
                return str(orjson.loads(self.sealer.open(spec["sealed_line"]))["body"]).encode("utf-8")
            return self.sealer.open(spec["sealed"])
        return str(spec["body"]).encode("utf-8")


def event_from_spec(spec: Mapping[str, Any], body: bytes) -> Event:
    received_at = parse_time(spec.get("received_at")) or datetime.now().astimezone()
    return build_event(orjson.loads(body), source=str(spec["source"]), received_at=received_at)


def new_context(
    runtime: WorkerRuntime,
    job: Job | None,
    attempt: int,
    handler: str,
    route_key: str,
    params: Any,
    event_id: str = "",
) -> Context:
    """The `Context` of one execution of a job: its locks belong to this run only."""
    ids = {"event_id": event_id, "handler": handler, "job_id": job.id if job else None}
    return Context(
        event_id=event_id,
        handler=handler,
        route_key=route_key,
        params=params,
        settings=runtime.settings,
        redis=runtime.redis,
        job_id=job.id if job else "",
        attempt=attempt,
        execution_id=f"{job.id if job else 'inline'}:{uuid.uuid4().hex[:12]}",
        upstream=runtime.upstream,
        log=ContextLogger(
            logging.getLogger("osma_router.handler"), {k: v for k, v in ids.items() if v != ""}
        ),
    )


def execute(spec: Mapping[str, Any], runtime: WorkerRuntime | None = None) -> None:
    runtime = runtime or WorkerRuntime.current()
    job = get_current_job()
    route = spec["route"]
    attempt = _attempt(job)
    try:
        body = runtime.open_body(spec)
        event = event_from_spec(spec, body)
        try:
            handler = runtime.registry.get(route["handler"])
            params = handler.check_params(route.get("params", {}))
        except ConfigError as exc:
            raise PermanentError(str(exc)) from None
        pinned = spec.get("clock") == "received_at"
        ctx = new_context(runtime, job, attempt, handler.name, str(route["key"]), params, event.id)
        if pinned:
            ctx.clock = lambda: event.received_at
        result = handler.func(event, ctx)
        if inspect.isawaitable(result):
            runtime.loop.run_until_complete(result)
    except BaseException as exc:
        if job is not None:
            _record_failure(job, exc, attempt, runtime.sealer)
        raise


@contextmanager
def job_context(spec: Mapping[str, Any], runtime: WorkerRuntime | None = None) -> Iterator[Context]:
    """The `Context` of a job the service scheduled for itself, with no event (a coalesced
    measurement's flush): the worker's settings, Redis, clients and ledger, locks owned by
    this execution, and failures shaped into RQ's retry decision as for handler jobs.
    `spec["route"]` names the route and handler it works for (logs, job counts)."""
    runtime = runtime or WorkerRuntime.current()
    job = get_current_job()
    attempt = _attempt(job)
    route = spec.get("route", {})
    handler = str(route.get("handler", ""))
    ctx = new_context(runtime, job, attempt, handler, str(route.get("key", "")), None)
    try:
        yield ctx
    except BaseException as exc:
        if job is not None:
            _record_failure(job, exc, attempt, runtime.sealer)
        raise


def _attempt(job: Job | None) -> int:
    """1 on the first run; failures record their attempt in the job's meta."""
    if job is None:
        return 1
    return int(job.meta.get("attempts", 0)) + 1


def _record_failure(job: Job, exc: BaseException, attempt: int, sealer: Sealer | None) -> None:
    """Shape RQ's retry decision to our policy and keep a one-line reason for `failed list`.

    With keys, the reason and the traceback are sealed (`store/failed.py`), and a payload
    queued in clear before encryption was turned on is sealed in the job RQ saves next.
    """
    if sealer is not None:
        _seal_payload(job, sealer)
    if isinstance(exc, ClaimHeld):
        _defer(job, exc.retry_after)
        job.meta["waiting"] = str(exc)[:500]
        _save_meta(job)
        return
    if not is_retryable(exc):
        job.retries_left = 0  # RQ then moves the job to the failed registry at once
    elif isinstance(exc, RateLimited) and job.retries_left and job.retry_intervals:
        intervals = list(job.retry_intervals)
        index = max(len(intervals) - job.retries_left, 0)
        if index < len(intervals):
            intervals[index] = max(intervals[index], math.ceil(exc.retry_after))
            job.retry_intervals = intervals
    message = str(exc).splitlines()[0] if str(exc) else ""
    kind = type(exc).__name__
    job.meta["attempts"] = attempt
    # Each failed run: when and of which type (no message: that is sealed or masked above),
    # for `trace` and the console. The last ATTEMPT_HISTORY runs are kept.
    history = [entry for entry in job.meta.get("history", []) if isinstance(entry, dict)]
    history.append({"attempt": attempt, "at": datetime.now(UTC).isoformat(timespec="seconds"), "error": kind})
    job.meta["history"] = history[-ATTEMPT_HISTORY:]
    for name in SEALED_FIELDS:
        job.meta.pop(name, None)
    trace = "".join(traceback.format_exception(exc))
    job.meta.update(error_meta(kind, f"{kind}: {message}"[:500], trace, sealer))
    job.meta["retrying"] = bool(job.retries_left)
    _save_meta(job)


def stored_exc_text(job: Job, exc_string: str) -> str:
    """What RQ may keep of a failed run's traceback (its results, the job's `exc_info`):
    the type alone once `_record_failure` sealed the message and traceback in the meta."""
    return kept_exc_text(job.meta or {}, exc_string)


def _seal_payload(job: Job, sealer: Sealer) -> None:
    """A job queued before encryption was on holds its event in clear: RQ writes the job
    back on a retry or a failure, so it writes it sealed (what `rekey` does for the rest)."""
    try:
        spec = job.args[0] if job.args else None
    except Exception:  # not a job of ours
        return
    if isinstance(spec, dict) and isinstance(spec.get("body"), str):
        sealed = {name: value for name, value in spec.items() if name != "body"}
        sealed["sealed"] = sealer.seal(spec["body"].encode("utf-8"))
        job.args = [sealed, *job.args[1:]]


def _defer(job: Job, seconds: float) -> None:
    """Have RQ run the job again in `seconds` without using up one of its attempts.

    RQ retries with `retry_intervals[len(intervals) - retries_left]` and then takes one
    from `retries_left`: give the attempt back and insert the wait where RQ reads next, so
    the route's own backoff still follows for real failures.
    """
    intervals = list(job.retry_intervals or [])
    left = job.retries_left or 0
    index = max(len(intervals) - left, 0)
    intervals.insert(index, max(1, math.ceil(seconds)))
    job.retry_intervals = intervals
    job.retries_left = left + 1


def _save_meta(job: Job) -> None:
    try:
        job.save_meta()  # type: ignore[no-untyped-call]
    except Exception:  # the retry bookkeeping below still happens through RQ
        log.warning("could not save the failure reason of a job", extra={"job_id": job.id})
