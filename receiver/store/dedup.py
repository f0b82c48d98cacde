"""Dedup and enqueue as one atomic Redis step, with concurrent deliveries grouped.

For each event the script checks its dedup key; when the id is new it writes the job
hashes, pushes the job ids onto their queues and only then sets the dedup key. A failure
part-way leaves the id unmarked (so the sender's retry enqueues again, under the same
deterministic job ids), never marked without its jobs.

Deliveries that arrive while a call is in flight wait for the next call and share it
(group commit): one round trip for many requests under load, no added latency when idle.
One call at a time: Redis runs scripts one after another anyway, so more calls in flight
only split the same deliveries into smaller calls, each paying the client's fixed cost
(measured pinned: 20 deliveries a call at 64 connections with four in flight, 30 with one,
and about 10 % less CPU per delivery). One call at a time also lets the call keep a
connection of its own and skip redis-py's per-call machinery (held_script.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Generic, TypeVar

import orjson
from redis.asyncio import Redis as AsyncRedis

from ..exceptions import StoreError
from ..keys import RECENT_EVENTS_KEY, RQ_JOB_PREFIX, RQ_QUEUE_PREFIX, RQ_QUEUES_KEY, dedup_key
from ..model.routes import job_id_head
from .capture import CaptureWrite
from .enqueue import JobWrite
from .held_script import HeldScript
from .recent import RECENT_MAX, recent_member

# KEYS: [1] rq:queues, [2] the recent-events index, then per event: its dedup key, [its
#       capture and duplicates keys,] then per job: job key, queue key.
# ARGV: ttl_ms, now, every route's job-hash template as one JSON array of flat field lists
#       (built once at start-up, so each call sends one constant string), then the events
#       as one JSON array (redis-py packs each argument in Python, ~1 µs apiece; orjson
#       writes the whole array in less than one of those), flat:
#       event count, per event: job count, mode (1: force, 2: capture), received (ms, a
#       string), its jobs' marks, its member in the recent-events index,
#       [capture: token, min entry id (ms), max count, ttl_ms, all strings,]
#       per job: template no., job id, data, description.
# The dedup key's value is what `trace` reads (see `DedupMark`): the received time, then
# ":<job id tail>" per job queued, then "#<n>" once the id has come n more times. A
# redelivery rewrites it (KEEPTTL) instead of only finding it: the one command a
# duplicate costs more; a new event costs none (the SET was there already).
# A forced event (a replay, under job ids of its own) queues its jobs even when seen, but
# not a job whose hash is there already (the same call sent again), and leaves an existing
# dedup key's expiry as it is (its job marks are added to the value).
# A new event is added to the recent-events index (the console's list), trimmed to its
# cap by rank once per call.
# A captured delivery is added to the capture stream whether new or duplicate (field
# dup = 0 or 1; duplicates in a stream of their own); the streams are trimmed by age and
# count once per call, with the last capture's limits: first deliveries to the max count,
# duplicates to what room they leave, so a flood of duplicates never evicts a first
# delivery and both together stay within the max count.
ADMIT_SCRIPT = """
local ttl = ARGV[1]
local now = ARGV[2]
local templates = cjson.decode(ARGV[3])
local batch = cjson.decode(ARGV[4])
local a = 1
local k = 3
local results = {}
local trim
local recent_added = false
local nevents = batch[a]; a = a + 1
for e = 1, nevents do
  local seen_key = KEYS[k]; k = k + 1
  local njobs = batch[a]; a = a + 1
  local mode = batch[a]; a = a + 1
  local received, marks, recent = batch[a], batch[a + 1], batch[a + 2]; a = a + 3
  local capture_key, capture
  if mode >= 2 then
    capture_key = {KEYS[k], KEYS[k + 1]}; k = k + 2
    capture = {batch[a], batch[a + 1], batch[a + 2], batch[a + 3]}; a = a + 4
  end
  local seen = redis.call('GET', seen_key)
  local fresh = not seen
  local write = fresh or mode % 2 == 1
  local failed = false
  for j = 1, njobs do
    local job_key, queue_key = KEYS[k], KEYS[k + 1]; k = k + 2
    local template = templates[batch[a]]
    local job_id, data, description = batch[a + 1], batch[a + 2], batch[a + 3]; a = a + 4
    -- A forced job already there was queued by this very call sent before (its reply
    -- lost) or by the same replay run: queued once, whatever the retries.
    if write and not failed and not (mode % 2 == 1 and redis.call('EXISTS', job_key) == 1) then
      local ok = redis.pcall('HSET', job_key, 'data', data, 'description', description,
        'created_at', now, 'enqueued_at', now, unpack(template))
      if type(ok) == 'table' and ok.err then
        failed = ok.err
      else
        redis.call('RPUSH', queue_key, job_id)
        redis.call('SADD', KEYS[1], queue_key)
      end
    end
  end
  if failed then
    results[e] = failed
  else
    if fresh then
      redis.call('SET', seen_key, received .. marks, 'PX', ttl)
      redis.call('ZADD', KEYS[2], received, recent)
      recent_added = true
    else
      local head, count = string.match(seen, '^(.-)#(%d+)$')
      head = head or seen
      if mode % 2 == 1 then head = head .. marks end
      redis.call('SET', seen_key, head .. '#' .. ((tonumber(count) or 0) + 1), 'KEEPTTL')
    end
    if capture then
      -- A duplicate goes to a stream of its own: a flood of them never evicts a first delivery.
      redis.call('XADD', capture_key[fresh and 1 or 2], '*', 'd', capture[1], 'dup', fresh and '0' or '1')
      trim = capture
      trim[5] = capture_key
    end
    results[e] = write and 1 or 0
  end
end
if recent_added then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(RECENT_MAX + 1))
end
if trim then  -- once per call: under load one call carries many deliveries
  local first, duplicates = trim[5][1], trim[5][2]
  for _, key in ipairs(trim[5]) do
    redis.call('XTRIM', key, 'MINID', trim[2])
    redis.call('PEXPIRE', key, trim[4])
  end
  redis.call('XTRIM', first, 'MAXLEN', trim[3])
  -- Duplicates keep only the room first deliveries leave: together at most the max count.
  local room = tonumber(trim[3]) - redis.call('XLEN', first)
  redis.call('XTRIM', duplicates, 'MAXLEN', room > 0 and room or 0)
end
return results
""".replace("RECENT_MAX", str(RECENT_MAX))


class AdmitOutcome(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(slots=True)  # not frozen, like JobWrite: one is made per delivery
class Admission:
    """One event to store: its dedup identity and the jobs to queue with it."""

    source: str
    event_id: str
    jobs: Sequence[JobWrite]
    capture: CaptureWrite | None = None  # set when OSMA_ROUTER_CAPTURE is on
    force: bool = False  # a replay with --force: queue the jobs even if the id was seen
    received_at: datetime | None = None  # kept in the dedup mark (default: when stored)
    event_type: str = ""  # kept in the recent-events index

    def marks(self) -> str:
        """The jobs as the dedup mark keeps them: ":<tail>" each, the tail being what follows
        the event's part of the job id (the route key, and a forced replay's tag)."""
        head = len(job_id_head(self.source, self.event_id))
        return "".join(":" + job.job_id[head:] for job in self.jobs)


@dataclass(frozen=True)
class DedupMark:
    """What an event's dedup key holds (see ADMIT_SCRIPT): when it was first stored, the
    tails of the job ids it queued (forced replays' included), and how many more times it
    came. A mark written as "1" (by `replay --inline`, or before marks said more) has no
    time and no jobs."""

    received_at: datetime | None
    job_tails: tuple[str, ...]
    duplicates: int

    @classmethod
    def parse(cls, value: bytes | str) -> DedupMark:
        text = value.decode() if isinstance(value, bytes) else value
        head, _, count = text.partition("#")
        received, *tails = head.split(":")
        at = None
        if _digits(received) and len(received) >= 12:  # ms since the epoch; "1" is no time
            try:
                at = datetime.fromtimestamp(int(received) / 1000, UTC)
            except (OverflowError, ValueError, OSError):  # not a time this machine can hold
                at = None
        return cls(at, tuple(tail for tail in tails if tail), int(count) if _digits(count) else 0)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def dedup_ttl_ms(dedup_ttl: float) -> int:
    """`OSMA_ROUTER_DEDUP_TTL` (seconds) as the milliseconds a dedup mark lives: a webhook's
    key, a replay's, and an Osmos record's mark window."""
    return max(1, round(dedup_ttl * 1000))


def rq_timestamp(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    """Runs `flush(items)` for submitted items, one call at a time, batching those that
    queue up while a call is in flight."""

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], *, max_batch: int = 256
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._running = False

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
                try:
                    results = await self._flush([item for item, _ in batch])
                except BaseException as exc:  # every waiter must hear of it, whatever it is
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(StoreError(f"{type(exc).__name__}: {exc}"))
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running = False


class EventStore:
    """Stores events and their jobs atomically; see the module docstring."""

    def __init__(
        self,
        redis: AsyncRedis,
        templates: Sequence[Sequence[bytes | str | int | float]],
        dedup_ttl: float,
        *,
        max_batch: int = 256,
    ) -> None:
        self.redis = redis
        self.templates = templates
        # Values as strings: Lua would turn JSON numbers into floats.
        self._templates_json = orjson.dumps(
            [[v.decode() if isinstance(v, bytes) else str(v) for v in fields] for fields in templates]
        )
        self.ttl_ms = str(dedup_ttl_ms(dedup_ttl))
        self._script = HeldScript(redis, ADMIT_SCRIPT)
        # One call at a time, which is also what lets HeldScript keep one connection.
        self._committer: GroupCommitter[Admission, AdmitOutcome] = GroupCommitter(
            self._store_batch, max_batch=max_batch
        )

    async def admit(self, admission: Admission) -> AdmitOutcome:
        """Mark the event seen and queue its jobs, or report it as a duplicate."""
        return await self._committer.submit(admission)

    async def _store_batch(self, batch: list[Admission]) -> list[AdmitOutcome | BaseException]:
        keys: list[str] = [RQ_QUEUES_KEY, RECENT_EVENTS_KEY]
        events: list[str | int] = [len(batch)]
        moment = datetime.now(UTC)
        for admission in batch:
            keys.append(dedup_key(admission.source, admission.event_id))
            capture = admission.capture
            received = admission.received_at or moment
            events += (
                len(admission.jobs),
                (2 if capture is not None else 0) + (1 if admission.force else 0),
                str(int(received.timestamp() * 1000)),  # a string: Lua would print a number as 1.7e+12
                admission.marks(),
                recent_member(admission.event_type, admission.event_id),
            )
            if capture is not None:
                keys += (capture.key, capture.duplicates_key)
                events += (capture.token, str(capture.min_id_ms), str(capture.max_count), str(capture.ttl_ms))
            for job in admission.jobs:
                keys += (RQ_JOB_PREFIX + job.job_id, RQ_QUEUE_PREFIX + job.queue)
                events += (job.template + 1, job.job_id, job.data.decode(), job.description)
        args = (self.ttl_ms, rq_timestamp(moment), self._templates_json, orjson.dumps(events))
        replies = await self._script(keys, args)
        results: list[AdmitOutcome | BaseException] = []
        for reply in replies:
            if reply == 1:
                results.append(AdmitOutcome.ACCEPTED)
            elif reply == 0:
                results.append(AdmitOutcome.DUPLICATE)
            else:
                message = reply.decode() if isinstance(reply, bytes) else str(reply)
                results.append(StoreError(f"redis refused a write: {message}"))
        return results
