"""The worker: RQ's `SimpleWorker` (no fork per job: forking cost ~4x throughput),
with JSON jobs, job counts kept in Redis for `/metrics`, heartbeats while a job runs,
and frequent maintenance so a job whose worker died runs again within a minute."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from ..keys import JOB_COUNTS_KEY, job_count_field
from .execution import WorkerRuntime, stored_exc_text
from .jobinfo import event_of, handler_of
from .shutdown import GracefulShutdown

log = logging.getLogger("osma_router.worker")

# An execution whose heartbeat is older than this is abandoned; maintenance then
# retries it. The heartbeat TTL plus the maintenance interval (half of it) stays under
# the 60 s promise. OSMA_ROUTER_HEARTBEAT_TTL scales them all (tests that kill workers).
HEARTBEAT_TTL = 30
PUBSUB_WAKE_UP = 1.0  # seconds; see RouterWorker.subscribe


class RouterWorker(GracefulShutdown, SimpleWorker):
    """A `SimpleWorker` that runs osma-router jobs; see the module docstring."""

    def __init__(
        self, queues: Sequence[str], connection: Redis, *, heartbeat_ttl: int = HEARTBEAT_TTL, **kwargs: Any
    ) -> None:
        self.heartbeat_ttl = heartbeat_ttl
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
        log.log(
            logging.WARNING if outcome == "failed" else logging.INFO,
            f"job {outcome}",
            extra={
                "job_id": job.id if job else None,
                "handler": handler,
                "event_id": event_of(job) if job else None,
                "outcome": outcome,
            },
        )

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # RQ's own line carries the job's arguments (the event body): log ours instead.
        error = exc_info[1] if len(exc_info) > 1 else None
        log.info(
            "handler raised",
            extra={
                "job_id": job.id,
                "handler": handler_of(job),
                "event_id": event_of(job),
                "reason": type(error).__name__ if error is not None else None,
            },
        )


def run_worker(runtime: WorkerRuntime, queues: Sequence[str], *, burst: bool = False) -> bool:
    WorkerRuntime.install(runtime)
    worker = RouterWorker(queues, connection=runtime.redis, heartbeat_ttl=runtime.settings.heartbeat_ttl)
    worker.shutdown_grace = runtime.settings.shutdown_grace  # SIGTERM: see shutdown.py
    try:
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="WARNING"))
    finally:
        worker.stop_heartbeats()
        runtime.upstream.close(runtime.loop)  # made again on first use if the runtime runs on
