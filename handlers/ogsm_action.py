"""`ogsm.action`: keep an OGSM action in step with an Osma task.

```toml
[[routes]]
handler = "ogsm.action"                 # on task.created, .updated, .completed, .deleted
where = { template = "follow_up_call" }
strategy_ids = [7]                      # the action's strategies in OGSM
labels = ["osma"]
title_from = ["description", "template"]   # the first of these task fields that is set
on_delete = "archive"                   # or "delete"
# statuses = { ready = "todo", in_progress = "doing", completed = "done" }
# progress = { ready = 0, in_progress = 50, completed = 100 }
# write_back = true                     # also store the action id in the task's metadata
# metadata_key = "ogsm_action_id"
```

- `task.created` creates the action (title, strategies, labels, status, progress);
  `task.updated` / `task.completed` update its status and progress (or create it when
  no action is known yet); `task.deleted` archives or deletes it.
- The mapping task id -> action id is kept in Redis, one key per task that lives
  `MAPPING_TTL` after the task's last event, and, with `write_back`, in the task's Osma
  metadata under `metadata_key` (read back from the event when Redis lacks it).
- Every OGSM call goes through the effects ledger: a retried create reconciles by
  looking for its action in OGSM before posting again. An event older than the last one
  applied to the task (by the task's `updated_at`) changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver import Context, Effect, EffectResult, Event, HandlerGroup, Rejected, Watermarks

from .osma_metadata import entity_time, task_of, write_task_metadata

EVENTS = ("task.created", "task.updated", "task.completed", "task.deleted")
MAPPING_TTL = 400 * 24 * 3600  # seconds a task's action id is kept after the task's last event
DEFAULT_STATUSES = {"ready": "todo", "in_progress": "doing", "completed": "done"}
DEFAULT_PROGRESS = {"ready": 0, "in_progress": 50, "completed": 100}


@dataclass(frozen=True)
class ActionParams:
    strategy_ids: Sequence[int] = ()
    labels: Sequence[str] = ()
    title_from: Sequence[str] = ("description", "template")
    statuses: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_STATUSES))
    progress: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PROGRESS))
    on_delete: str = "archive"
    write_back: bool = True
    metadata_key: str = "ogsm_action_id"

    def __post_init__(self) -> None:
        if not _all(self.strategy_ids, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0):
            raise ValueError("`strategy_ids` must be a list of OGSM strategy ids (whole numbers)")
        if not _all(self.labels, lambda v: isinstance(v, str) and bool(v)):
            raise ValueError("`labels` must be a list of label names")
        if not self.title_from or not _all(self.title_from, lambda v: isinstance(v, str) and bool(v)):
            raise ValueError('`title_from` must be a list of task field paths, e.g. ["description"]')
        if not isinstance(self.statuses, Mapping) or not all(
            isinstance(v, str) for v in self.statuses.values()
        ):
            raise ValueError("`statuses` must map Osma task statuses to OGSM status names")
        if not isinstance(self.progress, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100 for v in self.progress.values()
        ):
            raise ValueError("`progress` must map Osma task statuses to a percentage from 0 to 100")
        if self.on_delete not in ("archive", "delete"):
            raise ValueError(f'`on_delete` must be "archive" or "delete", got {self.on_delete!r}')
        if not isinstance(self.write_back, bool):
            raise TypeError("`write_back` must be true or false")
        if not isinstance(self.metadata_key, str) or not 0 < len(self.metadata_key) <= 50:
            raise ValueError("`metadata_key` must be a metadata key of 1 to 50 characters")


def _all(values: Any, check: Any) -> bool:
    return isinstance(values, (list, tuple)) and all(check(v) for v in values)


def _digest(text: str) -> str:
    # Titles can be task data: the ledger keeps a digest, never the text.
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class ActionSync:
    """One event's work on one task's action; see the module docstring."""

    def __init__(self, event: Event, ctx: Context, task_id: str) -> None:
        self.event = event
        self.ctx = ctx
        self.params: ActionParams = ctx.params
        self.task_id = task_id
        self.actions = ctx.ogsm.actions
        self.mapping = f"osma_router:ogsm_action:{self.params.metadata_key}:{task_id}"
        # Releases before per-task keys kept every task in one hash that never expired:
        # read from it still, and move the task's entry out when it is written again.
        self.legacy_mapping = f"osma_router:ogsm_action:{self.params.metadata_key}"
        self.scope = f"ogsm:actions:{self.params.metadata_key}"

    def known_action(self) -> str | None:
        redis = self.ctx.redis
        stored = redis.getex(self.mapping, ex=MAPPING_TTL)  # each event of the task keeps it
        if stored is not None:
            return stored.decode() if isinstance(stored, bytes) else str(stored)
        if redis.type(self.legacy_mapping) in (b"hash", "hash"):
            stored = redis.hget(self.legacy_mapping, self.task_id)
        if stored is None:
            metadata = self.event.object.get("metadata")
            stored = metadata.get(self.params.metadata_key) if isinstance(metadata, Mapping) else None
        if not stored:
            return None
        found = stored.decode() if isinstance(stored, bytes) else str(stored)
        self.remember(found)  # from the old hash or the task's metadata: kept per task again
        return found

    def effect(self, step: str, **intent: Any) -> Effect:
        return self.ctx.effect(step, {"task": self.task_id, **intent}, scope=self.scope)

    def title(self) -> str:
        for path in self.params.title_from:
            value = self.event.get(path)
            if isinstance(value, str) and value.strip():
                return value.strip()[:255]
        return self.task_id

    def status_fields(self) -> dict[str, Any]:
        status = self.event.object.get("status")
        if self.event.type == "task.completed":
            status = "completed"
        fields: dict[str, Any] = {}
        if isinstance(status, str) and status in self.params.statuses:
            fields["status"] = {"name": self.params.statuses[status]}
        if isinstance(status, str) and status in self.params.progress:
            fields["progress"] = self.params.progress[status]
        return fields

    def create(self) -> str:
        title = self.title()
        fields = {
            "title": title,
            "strategies": [{"id": i} for i in self.params.strategy_ids],
            "labels": [{"name": n} for n in self.params.labels],
            **self.status_fields(),
        }

        def post() -> EffectResult:
            return {"id": self.actions.create(fields)["id"]}

        def reconcile(intent: Any, claimed: Any) -> EffectResult | None:
            for action in self.actions.list():
                if (
                    str(action.get("id")) not in claimed
                    and isinstance(action.get("title"), str)
                    and _digest(action["title"]) == intent.get("title")
                ):
                    return {"id": action["id"]}
            return None

        outcome = self.ctx.ledger.perform(
            self.effect("create", title=_digest(title)), post, reconcile=reconcile
        )
        action_id = str(outcome.result["id"])
        self.remember(action_id)
        return action_id

    def remember(self, action_id: str) -> None:
        with self.ctx.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.mapping, action_id, ex=MAPPING_TTL)
            pipe.hdel(self.legacy_mapping, self.task_id)
            pipe.execute()

    def update(self, action_id: str) -> None:
        fields = self.status_fields()
        if fields:
            self.ctx.ledger.perform(
                self.effect("update", action=action_id, **fields),
                lambda: {"id": self.actions.update(action_id, fields)["id"]},
            )

    def remove(self, action_id: str) -> None:
        def act() -> EffectResult:
            try:
                if self.params.on_delete == "delete":
                    self.actions.delete(action_id)
                else:
                    self.actions.update(action_id, {"archived": True})
            except Rejected as exc:
                if exc.status_code != 404:
                    raise
            return {"id": action_id}

        self.ctx.ledger.perform(self.effect(self.params.on_delete, action=action_id), act)

    def write_back(self, action_id: str) -> None:
        metadata = self.event.object.get("metadata")
        current = metadata.get(self.params.metadata_key) if isinstance(metadata, Mapping) else None
        if self.params.write_back and current != action_id:
            write_task_metadata(self.ctx, self.task_id, {self.params.metadata_key: action_id})


def register(group: HandlerGroup) -> None:
    @group.on(*EVENTS, name="ogsm.action", params=ActionParams)
    def action(event: Event, ctx: Context) -> None:
        """Create, update, archive or delete the OGSM action of the event's Osma task."""
        task_id = task_of(event)
        if task_id is None:
            ctx.log.info("not a task event: no action to keep in step", extra={"reason": "not_a_task"})
            return
        sync = ActionSync(event, ctx, task_id)
        mark = f"ogsm:action:{sync.params.metadata_key}:{task_id}"
        marks = Watermarks(ctx.redis)
        moment = entity_time(event)
        with ctx.locked(mark):
            if marks.behind(mark, moment):
                ctx.log.info(
                    "older than the task state already applied: nothing changed", extra={"reason": "stale"}
                )
                return
            action_id = sync.known_action()
            if event.type == "task.deleted":
                if action_id is not None:
                    sync.remove(action_id)
            elif action_id is None:
                action_id = sync.create()
                sync.write_back(action_id)
            else:
                sync.update(action_id)
                sync.write_back(action_id)
            marks.advance(mark, moment)
