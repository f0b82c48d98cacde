"""Graceful shutdown of a worker that runs jobs in its own process (no fork per job).

On SIGTERM (or Ctrl-C) the worker takes no new job and finishes the current one: RQ's
warm shutdown. If that job is still inside its handler `shutdown_grace` seconds later,
or a second SIGTERM/SIGINT arrives, the handler is interrupted and the job goes back
to the front of its queue for the next worker, without using up one of its retries.
Kubernetes and systemd send SIGKILL after their own grace period: keep theirs longer
than ours (the deploy files use 25 s here, 30 s there). A job that is lost anyway
(SIGKILL, power cut) is run again by RQ's maintenance within a minute.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import timedelta
from types import FrameType
from typing import Any

from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import WorkerStatus

from ..keys import JOB_COUNTS_KEY, job_count_field
from .jobinfo import event_of, handler_of

log = logging.getLogger("osma_router.worker")


class ShutdownInterrupt(BaseException):
    """Raised inside a handler when the worker must stop now; its job is requeued.

    A `BaseException`, so a handler's `except Exception` does not swallow it."""


class GracefulShutdown:
    """Mixin for an RQ worker class that runs jobs in-process (`SimpleWorker`)."""

    shutdown_grace: float | None = None
    _in_handler = False
    _interrupting = False
    _grace_timer: threading.Timer | None = None

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        busy = self.get_state() == WorkerStatus.BUSY  # type: ignore[attr-defined]
        if busy and self.shutdown_grace is not None and self._grace_timer is None:
            log.info(
                f"stop requested: finishing the current job first (at most {self.shutdown_grace:g} s)",
                extra={"reason": signal.Signals(signum).name},
            )
            timer = threading.Timer(self.shutdown_grace, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            self._grace_timer = timer
            timer.start()
        super().request_stop(signum, frame)  # type: ignore[misc]

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.get_state() != WorkerStatus.BUSY:  # type: ignore[attr-defined]
            super().request_force_stop(signum, frame)  # type: ignore[misc]
            return
        requested = getattr(self, "_shutdown_requested_date", None)
        if requested is not None and now() - requested < timedelta(seconds=1):
            return  # the same signal twice (a process group and its pool): RQ ignores it too
        self._stop_requested = True
        if self._in_handler and not self._interrupting:
            self._interrupting = True
            raise ShutdownInterrupt(f"worker stopping ({signal.Signals(signum).name})")
        # Between a handler's end and its bookkeeping: that finishes in moments.

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)  # type: ignore[misc]
        self._in_handler = True

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        self._in_handler = False
        if self._grace_timer is not None and not self._interrupting:
            self._grace_timer.cancel()
        super().handle_execution_ended(job, queue, heartbeat_ttl)  # type: ignore[misc]

    def teardown(self) -> None:
        if self._grace_timer is not None:  # the worker is leaving anyway: no late SIGTERM
            self._grace_timer.cancel()
        super().teardown()  # type: ignore[misc]

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        if self._interrupting:
            self._interrupting = False
            self.requeue_interrupted(job, queue, execution)
            return
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)  # type: ignore[misc]

    def requeue_interrupted(self, job: Job, queue: Queue, execution: Any) -> None:
        """Put an interrupted job back at the front of its queue, in one round trip."""
        handler = handler_of(job)
        connection = self.connection  # type: ignore[attr-defined]
        with connection.pipeline() as pipe:
            pipe.multi()  # RQ's enqueue_job wants the transaction opened before any command
            self.cleanup_execution(job, pipeline=pipe, execution=execution)  # type: ignore[attr-defined]
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.hincrby(JOB_COUNTS_KEY, job_count_field(handler, "requeued"), 1)
            pipe.execute()
        log.warning(
            "job interrupted by shutdown and requeued",
            extra={"job_id": job.id, "handler": handler, "event_id": event_of(job), "outcome": "requeued"},
        )
