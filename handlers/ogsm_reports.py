"""`ogsm.indicator_report` and `ogsm.goal_report`: post a KPI or goal measurement to
OGSM when a matching event comes in.

```toml
[[routes]]
on = "task.completed"
where = { template = "update_blood_pressure" }
handler = "ogsm.indicator_report"      # or "ogsm.goal_report" with goal_id = ...
indicator_id = 456
value = "count"                        # "count", "field:<dotted.path>" or a number
period = "month"                       # "day", "week", "month" or "event"
coalesce = 300                         # optional: at most one measurement per 300 s
```

docs/contract.md, "Periods and counts": the period comes from the envelope's `created_at`
(received time when absent), in UTC; `at` is the period's first day (`week` starts on
Monday; `event` is the event's own date). `count` is the number of distinct
`data.object.id` that matched the route in the period, taken when the job runs: the ids
go into a Redis set, so a redelivered or replayed event counts once. Every matching
event posts the current value, through the effects ledger (so a retry or replay posts
nothing twice), and never a value older than one already posted for that KPI and date:
a smaller count, or the value of an event older than the last one applied, posts nothing.

`coalesce = N` (seconds, 0 by default: one measurement per event) posts at most one
measurement per KPI and date per window of N seconds (windows start at multiples of N
since the epoch), carrying the window's latest value. The event's job keeps that value
in Redis, under the same lock and guards as a direct post, and the first event of a
window schedules one RQ job, `receiver.jobs.flush_measurement`, for the window's end: a
restarted worker loses nothing, and the flush posts through the ledger (once per KPI, date
and window). A count equal to the one already posted posts nothing more. With a constant
`value` it is refused: that is for KPIs whose measurements OGSM adds up, and a window's
events would add up to one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus, Retry, get_current_job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from receiver import Context, EffectResult, Event, HandlerGroup, Watermarks

PERIODS = ("day", "week", "month", "event")
COUNT = "count"
FIELD = "field:"
COUNT_TTL = 400 * 24 * 3600  # a month's set outlives its month and its late replays
# The flush job's import path. RQ stores jobs by it, so it never changes (docs/contract.md,
# "Jobs"); the plugin facade has no scheduling call, hence RQ itself below.
FLUSH_JOB = "receiver.jobs.flush_measurement"
FLUSH_RETRIES, FLUSH_BACKOFF = 4, [5, 20, 80, 320]  # the routes' defaults (docs/contract.md, "Retries")
FLUSH_FAILURE_TTL = 30 * 24 * 3600  # as handler jobs: `failed retry` can run it for 30 days
# A pending value outlives its failed flush job, so that `failed retry` still finds it.
PENDING_TTL = FLUSH_FAILURE_TTL + 24 * 3600
# Seconds past its window's end before an event asks RQ whether the flush job is still
# alive (scheduled, queued, running, waiting for a retry); only then is it rescheduled.
FLUSH_LATE = 5
_ALIVE = {JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED}


def period_start(moment: datetime, period: str) -> date:
    """The `at` date of the period holding `moment` (UTC)."""
    day = moment.astimezone(UTC).date()
    if period in ("day", "event"):
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period {period!r}")


@dataclass(frozen=True)
class ReportParams:
    """Route parameters shared by both report handlers (the target id is added below)."""

    value: Any = COUNT
    period: str = "day"
    coalesce: int = 0  # seconds; 0: one measurement per event

    def __post_init__(self) -> None:
        coalesce = self.coalesce
        if isinstance(coalesce, bool) or not isinstance(coalesce, int) or coalesce < 0:
            raise ValueError(f"`coalesce` must be a whole number of seconds (0: off), got {coalesce!r}")
        if coalesce and not isinstance(self.value, str):
            raise ValueError(
                "`coalesce` keeps one value per window, and a constant `value` is for KPIs whose "
                'measurements OGSM adds up: use `value = "count"` or a field with it, or no `coalesce`'
            )
        if self.period not in PERIODS:
            raise ValueError(f"`period` must be one of {', '.join(PERIODS)}, got {self.period!r}")
        value = self.value
        if isinstance(value, str):
            if value != COUNT and not (value.startswith(FIELD) and len(value) > len(FIELD)):
                raise ValueError(f'`value` must be "count", "field:<dotted.path>" or a number, got {value!r}')
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f'`value` must be "count", "field:<dotted.path>" or a number, got {value!r}')


def _positive_id(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive whole number (the id in OGSM), got {value!r}")


@dataclass(frozen=True, kw_only=True)
class IndicatorReportParams(ReportParams):
    indicator_id: int

    def __post_init__(self) -> None:
        _positive_id("indicator_id", self.indicator_id)
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class GoalReportParams(ReportParams):
    goal_id: int

    def __post_init__(self) -> None:
        _positive_id("goal_id", self.goal_id)
        super().__post_init__()


def number_from(value: Any) -> int | float | None:
    """A field's value as a measurement: a JSON number, or a string holding one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return None
            return number if math.isfinite(number) else None
    return None


def post_measurement(event: Event, ctx: Context, target: str, target_id: int) -> None:
    """Post the route's value for the event's period to one goal or KPI; see the module docstring."""
    params: ReportParams = ctx.params
    at = period_start(event.occurred_at, params.period).isoformat()
    scope = f"ogsm:{target}:{target_id}:{at}"
    ledger = ctx.ledger
    marks = Watermarks(ctx.redis)
    with ctx.locked(scope):  # one measurement of a KPI and date at a time: checks stay true
        if params.value == COUNT:
            object_id = event.object.get("id")
            if not isinstance(object_id, (str, int)) or isinstance(object_id, bool) or object_id == "":
                ctx.log.warning("the event's object has no id: nothing to count, nothing posted")
                return
            value: int | float = _count(ctx, at, str(object_id))
            kind, order = "count", float(value)
        else:
            found = _value(event, params.value)
            if found is None:
                ctx.log.warning(
                    "the route's value field is missing or not a number: nothing posted",
                    extra={"reason": "no_value"},
                )
                return
            value = found
            kind, order = "time", event.occurred_at.timestamp()
        order_mark = f"{scope}:{kind}"

        effect = ctx.effect(
            "report", {"target": target, "id": target_id, "at": at, "value": value}, scope=scope
        )
        outcome = ledger.outcome(effect.key)  # set when an earlier run (retry, redelivery, replay) did it
        if outcome is None:
            if marks.behind(order_mark, order):
                ledger.skip(effect, "a newer measurement was already posted for this date")
                ctx.log.info(
                    "older than what is already posted for this date: nothing posted",
                    extra={"reason": "stale"},
                )
                return
            if params.coalesce:
                if kind == "count" and marks.get(order_mark) == order:
                    ledger.skip(effect, "this count is already posted for this date")
                    return
                job_id = _coalesce(ctx, target, target_id, at, kind, value, order)
                # Recorded so that a replay of this event changes nothing; `effect:` metadata
                # leaves the key out, as the measurement id is not known before the flush.
                ledger.skip(effect, f"coalesced: posted with its window's latest value by job {job_id}")
                return
            outcome = ledger.perform(
                effect,
                lambda: create(ctx, target, target_id, at, value),
                reconcile=lambda intent, claimed: find(
                    ctx, target, target_id, at, claimed, intent.get("value")
                ),
            )
        if outcome.done:  # also after a crash between the outcome and this mark
            posted = outcome.result.get("value", value)
            marks.advance(order_mark, float(posted) if params.value == COUNT else order)


def _coalesce(
    ctx: Context, target: str, target_id: int, at: str, kind: str, value: int | float, order: float
) -> str:
    """Keep `value` as the pending one of its KPI and date unless a newer one is pending, and
    schedule the flush job when none is alive; returns the flush job's id. Runs under the
    lock of the KPI and date, which the flush job also takes."""
    scope = f"ogsm:{target}:{target_id}:{at}"
    key = f"osma_router:coalesce:{scope}:{kind}"
    pending = {_text(name): _text(field) for name, field in ctx.redis.hgetall(key).items()}
    if pending and order < float(pending["order"]):  # an older event: the newer value stays
        value, order = orjson.loads(pending["value"]), float(pending["order"])
    if pending and not _flush_lost(ctx, pending):
        ctx.redis.hset(key, mapping={"value": orjson.dumps(value), "order": repr(order)})
        return pending["job"]
    every: int = ctx.params.coalesce
    # Windows follow the wall clock, not `ctx.now()`: they pace the posts made now, and a
    # replay's pinned clock would put its value in a window already flushed.
    due = (int(time.time()) // every + 1) * every
    # Letters, digits, `_` and `-` only (docs/contract.md, "Jobs"); `receiver/jobs.py`
    # names a rescheduled flush the same way.
    name = f"ogsm-flush_{target}-{target_id}_{at}_{kind}"
    job_id = f"{name}_{due}"
    spec = {
        "v": 1,
        "name": name,
        "target": target,
        "id": target_id,
        "at": at,
        "kind": kind,
        "scope": scope,
        "pending": key,
        "mark": f"{scope}:{kind}",
        "every": every,
        "due": due,
        "route": {"key": ctx.route_key, "handler": ctx.handler},  # for logs and job counts
    }
    job = get_current_job()
    queue = Queue(
        job.origin if job else ctx.settings.queue_name, connection=ctx.redis, serializer=JSONSerializer
    )
    # Scheduled before the value is stored: a crash in between leaves a flush that finds
    # nothing to post, and this job's rerun schedules again, rather than a value no job posts.
    queue.enqueue_at(
        datetime.fromtimestamp(due, UTC),
        FLUSH_JOB,
        spec,
        job_id=job_id,
        description=f"flush of {target} {target_id} on {at}",
        retry=Retry(max=FLUSH_RETRIES, interval=FLUSH_BACKOFF),
        result_ttl=0,
        failure_ttl=FLUSH_FAILURE_TTL,
    )
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(
            key, mapping={"value": orjson.dumps(value), "order": repr(order), "due": due, "job": job_id}
        )
        pipe.expire(key, PENDING_TTL)
        pipe.execute()
    return job_id


def _flush_lost(ctx: Context, pending: dict[str, str]) -> bool:
    """Whether the pending value's flush job is gone (failed for good, deleted): then the
    value would wait for `failed retry`, so this event schedules a new one."""
    if time.time() < float(pending.get("due", "0")) + FLUSH_LATE:
        return False
    try:
        job = Job.fetch(pending.get("job", ""), connection=ctx.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return True
    return job.get_status() not in _ALIVE


def create(ctx: Context, target: str, target_id: int, at: str, value: float) -> EffectResult:
    report = ctx.ogsm.reports(target).create(target_id, at, value)
    return {"id": report.get("id") if isinstance(report, dict) else None, "value": value}


def find(
    ctx: Context, target: str, target_id: int, at: str, claimed: Collection[str], value: Any
) -> EffectResult | None:
    """A measurement of that target, date and value that no other effect has claimed."""
    for report in ctx.ogsm.reports(target).list(target_id, at=at):
        if report.get("current_value") == value and str(report.get("id")) not in claimed:
            return {"id": report.get("id"), "value": value}
    return None


def _count(ctx: Context, at: str, object_id: str) -> int:
    key = f"osma_router:count:{ctx.route_key}:{at}"
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(key, object_id)
        pipe.expire(key, COUNT_TTL)
        pipe.scard(key)
        _, _, count = pipe.execute()
    return int(count)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _value(event: Event, value: Any) -> int | float | None:
    if isinstance(value, str) and value.startswith(FIELD):
        return number_from(event.get(value[len(FIELD) :]))
    return number_from(value)


def register(group: HandlerGroup) -> None:
    @group.handler(name="ogsm.indicator_report", params=IndicatorReportParams)
    def indicator_report(event: Event, ctx: Context) -> None:
        """Post a KPI measurement (`indicator_id`, `value`, `period`)."""
        post_measurement(event, ctx, "indicator", ctx.params.indicator_id)

    @group.handler(name="ogsm.goal_report", params=GoalReportParams)
    def goal_report(event: Event, ctx: Context) -> None:
        """Post a goal measurement (`goal_id`, `value`, `period`)."""
        post_measurement(event, ctx, "goal", ctx.params.goal_id)
