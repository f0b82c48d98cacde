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
```

docs/contract.md, "Periods and counts": the period comes from the envelope's `created_at`
(received time when absent), in UTC; `at` is the period's first day (`week` starts on
Monday; `event` is the event's own date). `count` is the number of distinct
`data.object.id` that matched the route in the period, taken when the job runs: the ids
go into a Redis set, so a redelivered or replayed event counts once. Every matching
event posts the current value, through the effects ledger (so a retry or replay posts
nothing twice), and never a value older than one already posted for that KPI and date:
a smaller count, or the value of an event older than the last one applied, posts nothing.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from receiver import Context, EffectResult, Event, HandlerGroup, Watermarks

PERIODS = ("day", "week", "month", "event")
COUNT = "count"
FIELD = "field:"
COUNT_TTL = 400 * 24 * 3600  # a month's set outlives its month and its late replays


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

    def __post_init__(self) -> None:
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
            order_mark, order = f"{scope}:count", float(value)
        else:
            found = _value(event, params.value)
            if found is None:
                ctx.log.warning(
                    "the route's value field is missing or not a number: nothing posted",
                    extra={"reason": "no_value"},
                )
                return
            value = found
            order_mark, order = f"{scope}:time", event.occurred_at.timestamp()

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
