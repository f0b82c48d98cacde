"""`osma.task_metadata`: write back to the Osma task what we did, as task metadata.

```toml
[[routes]]
on = "task.completed"
handler = "osma.task_metadata"
metadata = { ogsm_indicator_report_id = "effect:ogsm.indicator_report", synced_by = "osma-router" }
```

Each value is one of
- `"effect:<handler>"`: the upstream id another route's handler recorded for this event
  in the effects ledger (for example the KPI measurement's id). While that job has not
  run yet, this one fails and is retried; when it deliberately posted nothing, the key
  is left out;
- `"field:<dotted.path>"`: a value of the task (`data.object`), left out when missing;
- anything else: written as it is.

The update goes through the Osma client with `ctx.idempotency_key`, and through the
effects ledger, so a retry, redelivery or replay writes nothing twice; an event older
than one already written back for the task writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from receiver import (
    Context,
    EffectResult,
    Event,
    HandlerError,
    HandlerGroup,
    InvalidRequest,
    Watermarks,
    parse_time,
    validate_metadata,
)

EFFECT = "effect:"
FIELD = "field:"


@dataclass(frozen=True)
class MetadataParams:
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, Mapping) or not self.metadata:
            raise ValueError('`metadata` must be a table of key = value, e.g. { synced_by = "osma-router" }')
        try:
            validate_metadata({k: _placeholder(v) for k, v in self.metadata.items()})
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None
        for key, value in self.metadata.items():
            if value in (EFFECT, FIELD):
                raise ValueError(
                    f"metadata {key!r}: {value!r} needs a handler name or a path after the colon"
                )


def _placeholder(value: Any) -> Any:
    # `effect:` and `field:` values are only known when the job runs.
    return "" if isinstance(value, str) and value.startswith((EFFECT, FIELD)) else value


def task_of(event: Event) -> str | None:
    """The id of the task a `task.*` event is about, or None for other events."""
    task_id = event.object.get("id")
    if not event.type.startswith("task.") or not isinstance(task_id, str) or not task_id:
        return None
    return task_id


def entity_time(event: Event) -> float:
    """When the entity reached the state the event carries: its `updated_at`, else its
    `created_at`, else the event's own time (the ordering guard of docs/contract.md, "Periods and counts")."""
    for name in ("updated_at", "created_at"):
        moment = parse_time(event.object.get(name))
        if moment is not None:
            return moment.timestamp()
    return event.occurred_at.timestamp()


def write_task_metadata(
    ctx: Context, task_id: str, metadata: Mapping[str, Any], step: str = "metadata"
) -> None:
    """Merge `metadata` into the Osma task, once for this (event, route, step).

    Through `ctx.osma_effect`: a retry after a 5xx or a timeout first reads the task back,
    and sends under a new idempotency key generation only if the values are not there
    (Osma would answer the first key's cached 5xx again).
    """
    validate_metadata(metadata)
    wanted = {k: str(v) for k, v in metadata.items()}

    def update(key: str) -> EffectResult:
        task = ctx.osma.tasks.update(task_id, {"metadata": wanted}, idempotency_key=key)
        return {"id": task.get("id") if isinstance(task, dict) else task_id}

    def written() -> EffectResult | None:
        task = ctx.osma.tasks.get(task_id)
        return {"id": task_id} if holds(task, wanted) else None

    # Not indexed under the handler's name: that names the handler's own upstream effect.
    ctx.osma_effect(step, update, written, intent={"task": task_id, "keys": sorted(wanted)})


def holds(task: Any, wanted: Mapping[str, str]) -> bool:
    """Whether the task's metadata already has every wanted value (Osma keeps strings)."""
    metadata = task.get("metadata") if isinstance(task, Mapping) else None
    if not isinstance(metadata, Mapping):
        return False
    return all(str(metadata.get(k)) == v and k in metadata for k, v in wanted.items())


def resolve(event: Event, ctx: Context, wanted: Mapping[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    effects = None
    for key, value in wanted.items():
        if isinstance(value, str) and value.startswith(EFFECT):
            handler = value[len(EFFECT) :]
            effects = effects if effects is not None else ctx.ledger.effects_of(event.id)
            outcome = effects.get(handler)
            if outcome is None:
                raise HandlerError(
                    f"metadata {key!r}: {handler} has not recorded its effect for this "
                    "event yet; retrying later"
                )
            if outcome.done and outcome.result.get("id") is not None:
                values[key] = str(outcome.result["id"])
        elif isinstance(value, str) and value.startswith(FIELD):
            found = event.get(value[len(FIELD) :])
            if found is not None and not isinstance(found, (dict, list)):
                values[key] = str(found)
        else:
            values[key] = str(value)
    return values


def register(group: HandlerGroup) -> None:
    @group.on("task.*", name="osma.task_metadata", params=MetadataParams)
    def task_metadata(event: Event, ctx: Context) -> None:
        """Write the route's `metadata` to the event's Osma task."""
        task_id = task_of(event)
        if task_id is None:
            ctx.log.info("not a task event: no metadata to write", extra={"reason": "not_a_task"})
            return
        mark = f"osma:task_metadata:{ctx.route_key}:{task_id}"
        marks = Watermarks(ctx.redis)
        with ctx.locked(mark):
            if ctx.ledger.outcome(ctx.idempotency_key("metadata")) is not None:
                return
            moment = entity_time(event)
            if marks.behind(mark, moment):
                ctx.ledger.skip(ctx.effect("metadata"), "a newer event was written back")
                return
            values = resolve(event, ctx, ctx.params.metadata)
            if values and holds(event.object, values):
                # The task already says so: typically the `task.updated` our own write caused.
                # Writing again would cause another one, and so on for ever.
                ctx.ledger.skip(ctx.effect("metadata"), "the task already holds these values")
                ctx.log.info("the task already holds the metadata: nothing written", extra={"reason": "same"})
            elif values:
                write_task_metadata(ctx, task_id, values)
            marks.advance(mark, moment)
