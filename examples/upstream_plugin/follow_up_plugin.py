"""An example plugin that calls Osma: a follow-up task when a reading is high."""

from dataclasses import dataclass

from receiver import Context, Event, HandlerGroup

group = HandlerGroup("care")


@dataclass(frozen=True)
class FollowUpParams:
    """Route parameters, checked when the routes file loads."""

    systolic_above: int = 140
    template: str = "call_member"


@group.on("task.completed", params=FollowUpParams)
def follow_up(event: Event, ctx: Context) -> None:
    systolic = event.get("data.blood_pressure.systolic")
    if systolic is None or int(systolic) <= ctx.params.systolic_above:
        return
    ctx.osma.tasks.create(
        {"template": ctx.params.template, "member": event.get("member"),
         "description": "Call the member about a high blood pressure reading"},
        # The same key on every attempt: a retried job never makes a second task.
        idempotency_key=ctx.idempotency_key("follow-up"),
    )
