"""Job entry points. RQ stores jobs by the import path of their function, so the names
in this module never change once released: `receiver.jobs.run_handler`,
`receiver.jobs.run_osmos_chunk`, `receiver.jobs.flush_measurement`."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from rq.job import Retry, get_current_job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from .model.routes import DEFAULT_BACKOFF, DEFAULT_RETRIES
from .store.ledger import Effect, EffectOutcome, EffectResult
from .store.watermarks import Watermarks
from .worker.context import Context
from .worker.execution import execute, job_context
from .worker.osmos import execute_chunk

FLUSH_FAILURE_TTL = 30 * 24 * 3600  # as handler jobs: `failed retry` can run it for 30 days


def run_handler(spec: dict[str, Any]) -> None:
    """Run one handler for one event (the spec is built by `receiver.store.enqueue`)."""
    execute(spec)


def run_osmos_chunk(spec: dict[str, Any]) -> None:
    """Run one route's handler for each record of one chunk of an Osmos batch (the spec is
    built by `receiver.store.osmos_chunks`); a record that fails becomes a `run_handler`
    job of its own."""
    execute_chunk(spec)


def flush_measurement(spec: dict[str, Any]) -> None:
    """Post the pending value of a coalesced KPI or goal measurement when its window closes.

    The spec is built by `ogsm.indicator_report` / `ogsm.goal_report` (`coalesce = N`,
    `handlers/ogsm_reports.py`), which keep the window's latest value in the Redis hash
    `spec["pending"]` (`value`, `order`, `due`: the window end whose job posts it). Under
    the lock of the KPI and date (`spec["scope"]`, the handlers' own), this posts it through
    the effects ledger, one effect per KPI, date and window, so a flush that runs twice
    posts once; an answer lost in a crash is reconciled from OGSM's list. It never posts a
    value older than one already posted (the handlers' watermark `spec["mark"]`).
    """
    with job_context(spec) as ctx:
        _flush(ctx, spec)


def _flush(ctx: Context, spec: dict[str, Any]) -> None:
    target, target_id, at, due = str(spec["target"]), int(spec["id"]), str(spec["at"]), int(spec["due"])
    scope, key, mark = str(spec["scope"]), str(spec["pending"]), str(spec["mark"])
    counting = spec["kind"] == "count"
    marks = Watermarks(ctx.redis)
    ledger = ctx.ledger
    effect_key = f"osma-router:flush|{spec['name']}|{due}"
    with ctx.locked(scope):
        stored = ctx.redis.hgetall(key)
        mine = bool(stored) and int(stored.get(b"due", b"0")) == due
        value = orjson.loads(stored[b"value"]) if mine else None
        order = float(stored[b"order"]) if mine else 0.0

        def stale() -> bool:
            # A count equal to the one posted adds nothing; a value as recent as it may differ.
            posted = marks.get(mark)
            return posted is not None and (order <= posted if counting else order < posted)

        outcome = ledger.outcome(effect_key)  # set when an earlier run of this flush got that far
        if outcome is None:
            if not mine:
                ctx.log.info("nothing pending for this window: nothing posted", extra={"reason": "empty"})
                return
            effect = Effect(
                effect_key,
                intent={"target": target, "id": target_id, "at": at, "value": value, "order": order},
                scope=scope,
                owner=ctx.execution_id,
            )
            if stale():
                outcome = ledger.skip(effect, "a newer measurement was already posted for this date")
            else:
                outcome = ledger.perform(
                    effect,
                    lambda: _create(ctx, target, target_id, at, value, order),
                    reconcile=lambda intent, claimed: _find(ctx, target, target_id, at, intent, claimed),
                )
        posted = _posted(outcome)
        if posted is not None:  # also after a crash between the outcome and this mark
            marks.advance(mark, posted)
        if not mine:
            return
        if stale() or (posted is not None and order <= posted):
            ctx.redis.delete(key)
        else:
            # A newer value came in after this window's measurement went out (its answer was
            # lost and the lock lapsed, or a late clock put it in a window already flushed).
            _reschedule(ctx, spec, key)


def _posted(outcome: EffectOutcome) -> float | None:
    """The order (count, or event time) of the value a flush posted; None if it skipped."""
    if not outcome.done:
        return None
    return float(outcome.result.get("order", 0.0))


def _create(ctx: Context, target: str, target_id: int, at: str, value: Any, order: float) -> EffectResult:
    report = ctx.ogsm.reports(target).create(target_id, at, value)
    return {"id": report.get("id") if isinstance(report, dict) else None, "value": value, "order": order}


def _find(
    ctx: Context, target: str, target_id: int, at: str, intent: Mapping[str, Any], claimed: Collection[str]
) -> EffectResult | None:
    """A measurement of that target, date and value that no other effect has claimed."""
    value = intent.get("value")
    for report in ctx.ogsm.reports(target).list(target_id, at=at):
        if report.get("current_value") == value and str(report.get("id")) not in claimed:
            return {"id": report.get("id"), "value": value, "order": intent.get("order", 0.0)}
    return None


def _reschedule(ctx: Context, spec: dict[str, Any], key: str) -> None:
    every = int(spec["every"])
    due = max(int(spec["due"]) + every, (int(time.time()) // every + 1) * every)
    job_id = f"{spec['name']}_{due}"  # as `handlers/ogsm_reports.py` names the first one
    job = get_current_job()
    queue = Queue(
        job.origin if job else ctx.settings.queue_name, connection=ctx.redis, serializer=JSONSerializer
    )
    queue.enqueue_at(
        datetime.fromtimestamp(due, UTC),
        flush_measurement,
        {**spec, "due": due},
        job_id=job_id,
        description=f"flush of {spec['target']} {spec['id']} on {spec['at']}",
        retry=Retry(max=DEFAULT_RETRIES, interval=[int(seconds) for seconds in DEFAULT_BACKOFF]),
        result_ttl=0,
        failure_ttl=FLUSH_FAILURE_TTL,
    )
    ctx.redis.hset(key, mapping={"due": due, "job": job_id})
