"""Running an Osmos chunk job: one route's handler for each record of one chunk
(`store/osmos_chunks.py` says how chunks are kept).

Each record is its own event, with its own id, its own `Context` (locks, ledger: effects
are keyed by the record's event id) and, in the main thread, the route's timeout. A record
whose handler raises does not fail the chunk: it leaves the chunk as a handler job of its
own (`record_job`), whose state after this attempt is what RQ would have made of a job of
its own after the same failure: scheduled for its next attempt, or failed, with the
attempt and the error in its meta (`execution._record_failure`, the one retry policy). A
record that already has such a job (this chunk ran before and was interrupted) leaves it
to that job.

The chunk job notes how far it got in its meta about once a second, so a chunk whose
worker died or was stopped resumes there (records since the last note run again: at least
once, and their effects once, through the ledger). When the chunk job ends, it lets go of
the chunk blob; the last of the chunk's jobs removes it. It notes that it ran through before
it lets go, so a run that died after letting go, before RQ recorded the job as done, is
not taken for a chunk whose records went missing when RQ runs it again: that run only lets
go again. A chunk job that fails as a whole
(its blob unreadable, its handler unknown) goes to the failed registry like any job and
keeps its blob as long as RQ keeps the job, for `failed retry`.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from rq.job import Job, get_current_job
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from ..exceptions import ConfigError, PermanentError
from ..keys import JOB_COUNTS_KEY, RQ_JOB_PREFIX, job_count_field
from ..model.connectors import SOURCE, RecordIds
from ..model.events import Event, build_event, parse_time
from ..model.plugins import Handler
from ..store.enqueue import FAILURE_TTL
from ..store.failed import kept_exc_text
from ..store.osmos_chunks import Chunks, EventCoder, park, record_job, unpack_records
from .execution import WorkerRuntime, _attempt, _record_failure, job_context, new_context

log = logging.getLogger("osma_router.worker")

PROGRESS_EVERY = 1.0  # seconds between two notes of how far a chunk job got
KEEP_AFTER_FAILURE = FAILURE_TTL + 24 * 3600  # a failed chunk job's blob outlives the job a little
RAN_THROUGH = "ran_through"  # job meta: every record was run; set before the chunk is let go of


def execute_chunk(spec: Mapping[str, Any], runtime: WorkerRuntime | None = None) -> None:
    """Run the chunk job `spec` (built by `store.osmos_chunks.ChunkJobs`)."""
    runtime = runtime or WorkerRuntime.current()
    job = get_current_job()
    chunks = Chunks(runtime.redis)
    key, route = str(spec["chunk"]), str(spec["route"]["key"])
    if job is not None and job.meta.get(RAN_THROUGH):
        # An earlier run did every record, then its worker died before RQ recorded the job
        # as done, perhaps after letting go of the chunk (whose blob may be gone): there is
        # nothing to run again, only the letting go to make sure of.
        chunks.release(key, route)
        return
    try:
        with job_context(spec, runtime):
            ChunkRun(runtime, spec, job, chunks).run()
    except BaseException:
        if job is not None and not job.should_retry:
            chunks.keep_for(key, KEEP_AFTER_FAILURE)
        raise
    if job is not None:
        job.meta[RAN_THROUGH] = True
        job.save_meta()  # type: ignore[no-untyped-call]
    chunks.release(key, route)


@dataclass(frozen=True)
class ChunkRecord:
    """One record a chunk job runs: its place in the chunk, its id and its JSON."""

    position: int
    event_id: str
    canonical: bytes
    record: Any


def chunk_records(spec: Mapping[str, Any], lines: Sequence[bytes], start: int = 0) -> Iterator[ChunkRecord]:
    """The records the chunk job `spec` runs, from position `start` on, with their event
    ids rebuilt from the lines' bytes (the chunk's `lines`: `unpack_records`)."""
    ids = RecordIds(str(spec["connector"]), spec.get("key"))
    positions = spec.get("positions")
    repeats: Mapping[str, int] = spec.get("repeats") or {}
    for position in positions if positions is not None else range(len(lines)):
        if position < start:
            continue
        canonical = lines[position]
        record = orjson.loads(canonical)
        digest = ids.digest(record, canonical, int(repeats.get(str(position), 1)))
        yield ChunkRecord(position, ids.event_id(digest), canonical, record)


class ChunkRun:
    """One execution of a chunk job."""

    def __init__(
        self, runtime: WorkerRuntime, spec: Mapping[str, Any], job: Job | None, chunks: Chunks
    ) -> None:
        self.runtime = runtime
        self.spec = spec
        self.job = job
        self.chunks = chunks
        self.route = spec["route"]
        self.attempt = _attempt(job)
        self.received_at = parse_time(spec.get("received_at")) or datetime.now(UTC)
        self.coder = EventCoder(str(spec["event_type"]), self.received_at)
        self.timed = threading.current_thread() is threading.main_thread()

    def run(self) -> None:
        spec, runtime = self.spec, self.runtime
        blob = self.chunks.read(str(spec["chunk"]))
        if blob is None:
            raise PermanentError("this chunk's records are no longer in Redis")
        lines = unpack_records(blob, runtime.sealer)
        try:
            handler = runtime.registry.get(str(self.route["handler"]))
            params = handler.check_params(self.route.get("params", {}))
        except ConfigError as exc:
            raise PermanentError(str(exc)) from None
        done = int(self.job.meta.get("done", 0)) if self.job is not None else 0
        noted = time.monotonic()
        for record in chunk_records(spec, lines, done):
            try:
                self._run_record(handler, params, self._event(record.event_id, record.record))
            except Exception as exc:  # this record leaves the chunk; a BaseException stops it all
                self._leave(record.event_id, record.canonical, exc)
            if self.job is not None:
                self.job.meta["done"] = record.position + 1
                if time.monotonic() - noted >= PROGRESS_EVERY:
                    self.job.save_meta()  # type: ignore[no-untyped-call]
                    noted = time.monotonic()

    def _event(self, event_id: str, record: Any) -> Event:
        payload = {
            "id": event_id,
            "type": self.spec["event_type"],
            "object": "event",
            "created_at": self.coder.created_at,
            "data": {"object": record},
        }
        return build_event(payload, source=SOURCE, received_at=self.received_at)

    def _run_record(self, handler: Handler, params: Any, event: Event) -> None:
        runtime = self.runtime
        ctx = new_context(
            runtime, self.job, self.attempt, handler.name, str(self.route["key"]), params, event.id
        )
        if not self.timed:
            self._call(handler, event, ctx)
            return
        timeout = int(self.spec["record_job"]["timeout"])
        with UnixSignalDeathPenalty(timeout, JobTimeoutException):  # type: ignore[no-untyped-call]
            self._call(handler, event, ctx)

    def _call(self, handler: Handler, event: Event, ctx: Any) -> None:
        result = handler.func(event, ctx)
        if inspect.isawaitable(result):
            self.runtime.loop.run_until_complete(result)

    def _leave(self, event_id: str, canonical: bytes, exc: Exception) -> None:
        """Make the failed record a job of its own (see the module docstring)."""
        redis, runtime = self.runtime.redis, self.runtime
        event = self.coder.event(event_id, canonical)
        job = record_job(redis, self.spec, event_id, event, runtime.sealer)
        handler = str(self.route["handler"])
        log.info(
            "handler raised; the record leaves its chunk as a job of its own",
            extra={"job_id": job.id, "handler": handler, "event_id": event_id, "reason": type(exc).__name__},
        )
        # An earlier run of this chunk made it: that job owns the record's retries. Only a
        # job saved whole counts: `_record_failure` writes the meta first, and a worker that
        # died right then left a hash with a meta alone, which RQ never runs.
        if redis.hexists(RQ_JOB_PREFIX + job.id, "data"):
            return
        _record_failure(job, exc, self.attempt, runtime.sealer)
        text = "".join(traceback.format_exception(exc))
        outcome = park(redis, job, kept_exc_text(job.meta or {}, text))
        redis.hincrby(JOB_COUNTS_KEY, job_count_field(handler, outcome), 1)
