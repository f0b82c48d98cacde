"""What the pytest plugin's `deliver(event)` does: POST the event to a live receiver, run
the jobs it queued in this process, and say what they did.

- The jobs run with a burst worker, here. A retry runs at once instead of after its
  backoff, up to the route's attempts; the backoff it skipped is reported
  (`JobRun.backoff`), not slept. The service's own scheduled jobs (a coalesced
  measurement's flush) run at once too, so the test sees the measurement.
- A job deferred because another execution holds a lock it needs (docs/contract.md,
  "Effects under real conditions") waits for real, until that lock expires (the plugin sets
  `OSMA_ROUTER_LOCK_TTL=1`), and at most `wait` seconds in all.
- The answer is a `Delivery`: the receiver's response, each job (handler, state, attempts,
  errors) and the effects the ledger recorded for the event. When a job failed, `deliver`
  raises `HandlerFailed` from the handler's own exception instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from redis import Redis
from rq.registry import ScheduledJobRegistry

from ..exceptions import HandlerFailed
from ..model.plugins import HandlerRegistry
from ..model.routes import load_config
from ..model.signature import sign
from ..settings import Settings
from ..store.ledger import EffectOutcome, EffectsLedger
from ..web.app import create_app
from ..web.state import build_state
from ..worker.execution import WorkerRuntime
from ..worker.runner import JobEnded, run_worker
from .server import LiveServer

SECRET = "whsec_osma_router_pytest"
WAIT = 30.0  # seconds `deliver` waits in all for jobs deferred behind a held lock
MAX_ROUNDS = 1000  # burst workers per delivery: a job that keeps rescheduling itself stops here


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "osma-signature": sign(body, secret, int(time.time()))}


@dataclass(frozen=True)
class JobError:
    """What a failed attempt raised: the exception's type name and first line."""

    type: str
    message: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass
class JobRun:
    """One job that `deliver` ran, over all its attempts.

    `state`: "finished", "failed" (for good), or "waiting" (still deferred behind a held
    lock when `deliver` stopped waiting). `attempts`: how many it used, of `max_attempts`
    (None when the job does not say). `errors`: what each failed attempt raised; `error`:
    the last one while the job did not finish. `backoff`: the seconds each retry would
    have waited in production (run at once here). `exception`: the last exception raised.
    """

    job_id: str
    handler: str
    route_key: str
    event_id: str | None
    state: str = "queued"
    attempts: int = 0
    max_attempts: int | None = None
    errors: list[JobError] = field(default_factory=list)
    backoff: list[float] = field(default_factory=list)
    deferred: int = 0  # runs put off behind a held lock (they use no attempt)
    exception: BaseException | None = field(default=None, repr=False)

    @property
    def error(self) -> JobError | None:
        return self.errors[-1] if self.errors and self.state != "finished" else None

    @property
    def finished(self) -> bool:
        return self.state == "finished"


@dataclass
class Delivery:
    """What `deliver(event)` gives back: the receiver's `response` (`status_code`, `json()`
    and `text` forward to it), the `jobs` it ran, and the `effects` the ledger recorded
    for the event, by handler name."""

    response: httpx.Response
    event_id: str | None
    jobs: list[JobRun]
    effects: dict[str, EffectOutcome]

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def text(self) -> str:
        return self.response.text

    def json(self) -> Any:
        return self.response.json()

    @property
    def failures(self) -> list[JobRun]:
        return [job for job in self.jobs if not job.finished]

    def job(self, handler: str) -> JobRun:
        """The one job of `handler` (an AssertionError if there is not exactly one)."""
        matching = [job for job in self.jobs if job.handler == handler]
        if len(matching) != 1:
            ran = ", ".join(job.handler for job in self.jobs) or "none"
            why = ""
            if not self.jobs and self.status_code == 202 and self.json().get("jobs") == 0:
                why = "; the receiver queued none: no route matched the event (see its `on` and `where`)"
            raise AssertionError(f"{len(matching)} jobs of {handler} ran (jobs that ran: {ran}){why}")
        return matching[0]

    def raise_for_failures(self) -> None:
        """Raise `HandlerFailed` from the first failed job's exception, if a job failed."""
        __tracebackhide__ = True  # pytest shows the test's line and the handler's, not these
        failures = self.failures
        if not failures:
            return
        first = failures[0]
        error = first.error or JobError("unknown", "")
        failed = HandlerFailed(
            handler=first.handler,
            event_id=first.event_id,
            attempt=max(first.attempts, 1),
            attempts=first.max_attempts,
            error_type=error.type,
            error_message=error.message,
            others=len(failures) - 1,
        )
        raise failed from first.exception


class JobRecorder:
    """Listens to a worker (`run_worker(listener=...)`): one `JobRun` per job id."""

    def __init__(self) -> None:
        self.runs: dict[str, JobRun] = {}

    def __call__(self, ended: JobEnded) -> None:
        run = self.runs.get(ended.job_id)
        if run is None:
            run = JobRun(ended.job_id, ended.handler, ended.route_key, ended.event_id)
            self.runs[ended.job_id] = run
        run.max_attempts = ended.attempts
        if ended.error is not None:
            run.exception = _without_rq_frames(ended.error)
        if ended.outcome == "deferred":
            run.state = "waiting"
            run.deferred += 1
            run.errors.append(_error_of(ended.error))
            return
        run.attempts = max(run.attempts, ended.attempt)
        if ended.outcome == "succeeded":
            run.state = "finished"
            return
        run.errors.append(_error_of(ended.error))
        if ended.outcome == "retried":
            run.state = "retrying"
            run.backoff.append(ended.retry_in or 0.0)
        else:
            run.state = "failed"

    def waiting(self, job_id: str) -> bool:
        run = self.runs.get(job_id)
        return run is not None and run.state == "waiting"


def _without_rq_frames(error: BaseException) -> BaseException:
    """`error` with its traceback starting past RQ's worker, at osma-router's job entry
    point: a failed test shows the way to the handler's line, not RQ's internals."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None and _in_rq(tb.tb_frame.f_globals.get("__name__")):
        tb = tb.tb_next
    return error.with_traceback(tb)


def _in_rq(module: object) -> bool:
    return isinstance(module, str) and (module == "rq" or module.startswith("rq."))


def _error_of(error: BaseException | None) -> JobError:
    if error is None:
        return JobError("unknown", "no exception was recorded")
    lines = str(error).strip().splitlines()
    return JobError(type(error).__name__, lines[0] if lines else "")


class RouterUnderTest:
    """A receiver serving real HTTP on a loopback port, and a way to run its jobs."""

    def __init__(self, settings: Settings, registry: HandlerRegistry) -> None:
        self.settings = settings
        self.registry = registry
        config = load_config(settings.config_path, registry)
        self.state = build_state(settings, config=config, registry=registry)
        self.server = LiveServer(create_app(self.state)).start()
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.queues = [settings.queue_name] + sorted({r.queue for r in config.routes if r.queue})

    def post(self, event: Mapping[str, Any] | bytes, secret: str = SECRET) -> httpx.Response:
        body = event if isinstance(event, bytes) else orjson.dumps(event)
        return self.http.post("/webhooks/osma", content=body, headers=signed_headers(body, secret))

    def drain(self) -> None:
        """Run every queued job with a burst worker in this process (scheduled jobs wait
        for their time, as in production)."""
        redis = Redis.from_url(self.settings.require_redis_url())
        runtime = WorkerRuntime.build(self.settings, redis, self.registry)
        try:
            run_worker(runtime, self.queues, burst=True)
        finally:
            redis.close()

    def run_jobs(self, *, wait: float = WAIT) -> list[JobRun]:
        """Run every job, retries and scheduled jobs at once; see the module docstring."""
        recorder = JobRecorder()
        redis = Redis.from_url(self.settings.require_redis_url())
        runtime = WorkerRuntime.build(self.settings, redis, self.registry)
        deadline = time.monotonic() + wait
        try:
            for _ in range(MAX_ROUNDS):
                run_worker(runtime, self.queues, burst=True, listener=recorder)
                pause = self._bring_forward(redis, recorder)
                if pause is None:
                    break
                if pause > 0:  # only deferred jobs are left: they wait for real, within `wait`
                    if time.monotonic() + pause > deadline:
                        break
                    time.sleep(pause)
        finally:
            redis.close()
        return list(recorder.runs.values())

    def _bring_forward(self, redis: Redis, recorder: JobRecorder) -> float | None:
        """Make every scheduled job due now, except those deferred behind a lock. Answers
        None when nothing is scheduled, else how long until the next deferred one is due."""
        pause: float | None = None
        for queue in self.queues:
            key = ScheduledJobRegistry.key_template.format(queue)  # a sorted set: job id -> due time
            scheduled: list[tuple[bytes, float]] = redis.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
            for raw_id, when in scheduled:
                job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                if recorder.waiting(job_id):
                    # RQ keeps whole seconds: a bit more, so the job is due when we look.
                    left = max(0.0, float(when) - time.time()) + 0.05
                    pause = left if pause is None else min(pause, left)
                else:
                    redis.zadd(key, {job_id: 0})  # due: the next burst's scheduler enqueues it
                    pause = 0.0
        return pause

    def deliver(
        self, event: Mapping[str, Any] | bytes, *, drain: bool = True, raise_on_failure: bool = True
    ) -> Delivery:
        """POST the event; with `drain`, run its jobs; see the module docstring."""
        __tracebackhide__ = True
        response = self.post(event)
        if response.status_code >= 300:
            raise AssertionError(f"the receiver answered {response.status_code}: {response.text}")
        jobs = self.run_jobs() if drain else []
        event_id = _event_id(response)
        redis = Redis.from_url(self.settings.require_redis_url())
        try:
            effects = EffectsLedger(redis).effects_of(event_id) if event_id else {}
        finally:
            redis.close()
        delivery = Delivery(response, event_id, jobs, effects)
        if raise_on_failure:
            delivery.raise_for_failures()
        return delivery

    def close(self) -> None:
        self.http.close()
        self.server.stop()


def _event_id(response: httpx.Response) -> str | None:
    try:
        value = response.json().get("id")
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None
