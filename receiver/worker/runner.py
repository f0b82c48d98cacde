"""The worker: RQ's `SimpleWorker` (no fork per job: forking cost ~4x throughput),
with JSON jobs, job counts kept in Redis for `/metrics`, heartbeats while a job runs,
and frequent maintenance so a job whose worker died runs again within a minute.

Each run of a job ends in one log line. A failed, retried or deferred run's line says in
its message which handler, which event, which attempt and why:
`job failed: handler=ogsm.indicator_report event=evt_1 attempt 1/5: Rejected: ...`. The
error's message is written with the event's field values masked (a handler may put them
in its exceptions; member data never reaches a log). A listener (`deliver` in tests)
gets the same `JobEnded`, with the exception itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from ..exceptions import ClaimHeld
from ..keys import JOB_COUNTS_KEY, job_count_field
from ..logs import masked, masked_values
from .execution import WorkerRuntime, stored_exc_text
from .jobinfo import event_of, handler_of, spec_of
from .shutdown import GracefulShutdown

log = logging.getLogger("osma_router.worker")

# An execution whose heartbeat is older than this is abandoned; maintenance then
# retries it. The heartbeat TTL plus the maintenance interval (half of it) stays under
# the 60 s promise. OSMA_ROUTER_HEARTBEAT_TTL scales them all (tests that kill workers).
HEARTBEAT_TTL = 30
PUBSUB_WAKE_UP = 1.0  # seconds; see RouterWorker.subscribe
MESSAGE_LIMIT = 500  # characters of an error's message in a log line


@dataclass(frozen=True)
class JobEnded:
    """One run of a job, as the worker saw it end.

    `outcome`: "succeeded"; "retried" (it runs again in `retry_in` seconds); "deferred"
    (a lock it needs is held: it runs again in `retry_in` seconds without using an attempt);
    "failed" (for good: the failed registry). `attempt` of `attempts` (None when the job
    does not say). `error`: the exception the run raised, as raised.
    """

    job_id: str
    handler: str
    route_key: str
    event_id: str | None
    outcome: str
    attempt: int
    attempts: int | None
    error: BaseException | None = None
    retry_in: float | None = None


JobListener = Callable[[JobEnded], None]


class RouterWorker(GracefulShutdown, SimpleWorker):
    """A `SimpleWorker` that runs osma-router jobs; see the module docstring."""

    def __init__(
        self,
        queues: Sequence[str],
        connection: Redis,
        *,
        heartbeat_ttl: int = HEARTBEAT_TTL,
        runtime: WorkerRuntime | None = None,
        listener: JobListener | None = None,
        **kwargs: Any,
    ) -> None:
        self.heartbeat_ttl = heartbeat_ttl
        self.runtime = runtime  # opens a sealed event to mask its values in an error's message
        self.listener = listener
        self.heartbeat_every = max(1, heartbeat_ttl // 3)
        super().__init__(
            list(queues),
            connection=connection,
            serializer=JSONSerializer,
            maintenance_interval=max(1, heartbeat_ttl // 2),
            worker_ttl=heartbeat_ttl + 5,
            log_job_description=False,
            **kwargs,
        )
        self._outcome_job: Job | None = None
        self._error: BaseException | None = None  # what the job being recorded raised
        self._running: tuple[Job, Any] | None = None
        self._beat_lock = threading.Lock()
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None

    def subscribe(self) -> None:
        """RQ's command channel listener, waking every second instead of every minute.

        RQ unsubscribes and then stops the listener thread, which redis-py (8.2 on) joins
        without a timeout. A listener that reads the unsubscribe confirmation in between
        waits for a new subscription for its whole `sleep_time`: RQ's 60 s made about one
        worker exit in ten hang for a minute under load. One second bounds that wait.
        """
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=PUBSUB_WAKE_UP, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        with self._beat_lock:
            self._running = (job, execution)
        self._ensure_heartbeat_thread()
        try:
            self.perform_job(job, queue, execution)
        finally:
            with self._beat_lock:
                self._running = None
        self.set_state(WorkerStatus.IDLE)

    def _ensure_heartbeat_thread(self) -> None:
        # One thread for the worker's life, not one per job: jobs are often ~1 ms.
        if self._beater is None or not self._beater.is_alive():
            self._beater = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)
            self._beater.start()

    def stop_heartbeats(self) -> None:
        self._stop_beating.set()

    def _beat(self) -> None:
        while not self._stop_beating.wait(self.heartbeat_every):
            with self._beat_lock:
                if self._running is None:
                    continue
                job, execution = self._running
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception:
                    log.warning("heartbeat failed", extra={"job_id": job.id})

    # Job counts go into the pipeline RQ already uses to record the outcome.
    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        self._outcome_job = job
        try:
            super().handle_job_success(job, queue, started_job_registry, execution)
        finally:
            self._outcome_job = None

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        self._outcome_job = job
        exc_string = stored_exc_text(job, exc_string)  # with keys: the type only, the rest is sealed
        try:
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        finally:
            self._outcome_job = None
            self._error = None

    def increment_successful_job_count(self, pipeline: Any = None) -> None:
        super().increment_successful_job_count(pipeline)
        self._count_job("succeeded", pipeline)

    def increment_failed_job_count(self, pipeline: Any = None) -> None:
        super().increment_failed_job_count(pipeline)
        job = self._outcome_job
        self._count_job("retried" if job is not None and job.should_retry else "failed", pipeline)

    def _count_job(self, outcome: str, pipeline: Any) -> None:
        job = self._outcome_job
        handler = handler_of(job) if job is not None else "unknown"
        target = pipeline if pipeline is not None else self.connection
        target.hincrby(JOB_COUNTS_KEY, job_count_field(handler, outcome), 1)
        if job is None:
            log.log(logging.WARNING if outcome == "failed" else logging.INFO, f"job {outcome}")
            return
        ended = self._ended(job, handler, outcome)
        self._log(job, ended)
        if self.listener is not None:
            self.listener(ended)

    def _ended(self, job: Job, handler: str, outcome: str) -> JobEnded:
        error = self._error if outcome != "succeeded" else None
        done = int(job.meta.get("attempts", 0))  # the attempt of the last failure recorded
        if isinstance(error, ClaimHeld):
            outcome, attempt = "deferred", done + 1  # that attempt runs again, not used up
        else:
            attempt = done if error is not None and done else done + 1
        route = spec_of(job).get("route", {})
        retries = route.get("retries") if isinstance(route, dict) else None
        if isinstance(retries, int):
            attempts: int | None = retries + 1
        elif outcome == "retried":
            attempts = attempt + int(job.retries_left or 0)
        else:
            attempts = None
        return JobEnded(
            job_id=job.id,
            handler=handler,
            route_key=str(route.get("key", "")) if isinstance(route, dict) else "",
            event_id=event_of(job),
            outcome=outcome,
            attempt=attempt,
            attempts=attempts,
            error=error,
            # Read before RQ takes one off `retries_left` and schedules the next run.
            retry_in=float(job.get_retry_interval()) if job.should_retry and error is not None else None,
        )

    def _log(self, job: Job, ended: JobEnded) -> None:
        ids = {"job_id": ended.job_id, "handler": ended.handler, "event_id": ended.event_id}
        if ended.outcome == "succeeded":
            log.info("job succeeded", extra={**ids, "outcome": "succeeded", "attempt": ended.attempt})
            return
        of = f"/{ended.attempts}" if ended.attempts else ""
        event = f" event={ended.event_id}" if ended.event_id else ""
        text = f"job {ended.outcome}: handler={ended.handler}{event} attempt {ended.attempt}{of}"
        error_type = type(ended.error).__name__ if ended.error is not None else None
        message = self._safe_message(job, ended.error) if ended.error is not None else None
        if ended.error is not None:
            text += f": {error_type}: {message}" if message else f": {error_type}"
        else:
            text += ": no exception recorded (the worker running it went away)"
        if ended.retry_in is not None:
            text += f"; runs again in {ended.retry_in:g} s"
        log.log(
            logging.WARNING if ended.outcome == "failed" else logging.INFO,
            text,
            extra={
                **ids,
                "outcome": ended.outcome,
                "attempt": ended.attempt,
                "error_type": error_type,
                "error": message,
                "retry_in": ended.retry_in,
            },
        )

    def _safe_message(self, job: Job, error: BaseException) -> str:
        """The error's first line, with the values of the job's event masked."""
        lines = str(error).strip().splitlines()
        message = lines[0][:MESSAGE_LIMIT] if lines else ""
        spec = spec_of(job)
        if not any(name in spec for name in ("body", "sealed", "sealed_line")):
            return message  # the service's own jobs (a measurement's flush) carry no event
        try:
            if self.runtime is not None:
                body = self.runtime.open_body(spec)
            elif "body" in spec:
                body = str(spec["body"]).encode("utf-8")
            else:
                return "(message withheld: the event to mask it against is sealed)"
            values = masked_values(orjson.loads(body))
        except Exception:
            # The job could not read its event either: the handler never ran, the error
            # is the service's own (no key to open it, a body that is not JSON).
            return message
        return masked(message, values)

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # RQ's own line carries the job's arguments (the event body): the job's outcome line
        # (`_count_job`, called next through `handle_job_failure`) says what went wrong.
        self._error = exc_info[1] if len(exc_info) > 1 else None


def run_worker(
    runtime: WorkerRuntime,
    queues: Sequence[str],
    *,
    burst: bool = False,
    listener: JobListener | None = None,
) -> bool:
    """Work `queues` (until empty with `burst`); `listener` hears how each job run ended."""
    WorkerRuntime.install(runtime)
    worker = RouterWorker(
        queues,
        connection=runtime.redis,
        heartbeat_ttl=runtime.settings.heartbeat_ttl,
        runtime=runtime,
        listener=listener,
    )
    worker.shutdown_grace = runtime.settings.shutdown_grace  # SIGTERM: see shutdown.py
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="WARNING"))
    finally:
        worker.stop_heartbeats()
        runtime.upstream.close(runtime.loop)  # made again on first use if the runtime runs on
