"""A plugin the test suite registers through a real entry point (see the dist-info
folder beside it): its handlers record what they saw in Redis for the tests to read."""

from __future__ import annotations

from receiver import Context, Event, HandlerError, HandlerGroup, Rejected

group = HandlerGroup("sample")

SEEN_KEY = "test:handled"


@group.on("task.completed", "task.*")
def record(event: Event, ctx: Context) -> None:
    label = ctx.params.get("label", "") if isinstance(ctx.params, dict) else ""
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}|{label}|{ctx.attempt}")


@group.handler()
def flaky(event: Event, ctx: Context) -> None:
    """Fails until attempt `succeed_on` (a route parameter)."""
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}|attempt|{ctx.attempt}")
    if ctx.attempt < int(ctx.params.get("succeed_on", 1)):
        raise HandlerError(f"attempt {ctx.attempt} fails on purpose")


@group.handler()
def broken(event: Event, ctx: Context) -> None:
    """Fails while the Redis flag `test:broken` is set."""
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}|attempt|{ctx.attempt}")
    if ctx.redis.get("test:broken"):
        raise HandlerError("broken on purpose")


@group.handler()
def rejects(event: Event, ctx: Context) -> None:
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}|attempt|{ctx.attempt}")
    raise Rejected("upstream said 400: bad request", status_code=400, body='{"type":"invalid"}')


@group.handler()
async def async_record(event: Event, ctx: Context) -> None:
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}||{ctx.attempt}")


@group.handler()
def clock(event: Event, ctx: Context) -> None:
    """Records the handler's clock: replays pin it to the event's original received time."""
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}|now|{ctx.now().isoformat()}")


@group.handler()
def leaky(event: Event, ctx: Context) -> None:
    """Fails until attempt `succeed_on` (default: never succeeds) with the member's name from
    the event in its message: the at-rest tests check that no such text stays in clear."""
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}|attempt|{ctx.attempt}")
    if ctx.attempt < int(ctx.params.get("succeed_on", 1_000_000)):
        raise ValueError(f"cannot file the visit of {event.get('name')}")
