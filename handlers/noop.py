"""`noop`: does nothing and succeeds. For trying routes out and for benchmarks."""

from __future__ import annotations

from receiver import Context, Event, HandlerGroup


def register(group: HandlerGroup) -> None:
    @group.on("*", name="noop")
    def noop(event: Event, ctx: Context) -> None:
        ctx.log.debug("noop handled an event")
