"""An example osma-router plugin: a daily tally of completed tasks per template."""

from dataclasses import dataclass

from receiver import Context, Event, HandlerGroup, PermanentError

group = HandlerGroup("care")  # its handlers are named care.<function name>


@dataclass(frozen=True)
class TallyParams:
    """Route parameters, checked when the routes file loads."""

    key_prefix: str = "care:tally"


@group.on("task.completed", params=TallyParams)
def tally(event: Event, ctx: Context) -> None:
    template = event.get("template")
    if not isinstance(template, str):
        raise PermanentError("the task has no template")  # retrying cannot help
    day = event.occurred_at.date().isoformat()
    key = f"{ctx.params.key_prefix}:{day}:{template}"
    # A set of task ids: a redelivered or retried event is counted once.
    ctx.redis.sadd(key, str(event.object.get("id")))
    ctx.log.info("tallied a completed task")
