"""Handlers for the operations tests (shutdown, logs): registered through a real entry
point like `sample_plugin`, and recording what they did in the same Redis list."""

from __future__ import annotations

import logging
import time

from receiver import Context, Event, HandlerError, HandlerGroup

group = HandlerGroup("ops")

SEEN_KEY = "test:handled"
STARTED_KEY = "test:started"
HOLD_KEY = "test:hold"


@group.handler()
def hold(event: Event, ctx: Context) -> None:
    """Runs while the Redis key `test:hold` exists (at most 60 s), then records itself."""
    ctx.redis.rpush(STARTED_KEY, f"{event.id}|{ctx.attempt}")
    deadline = time.monotonic() + 60
    while ctx.redis.exists(HOLD_KEY) and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}||{ctx.attempt}")


@group.handler()
def chatty(event: Event, ctx: Context) -> None:
    """A careless handler: logs the object it got and fails once with a field value in
    the message. None of it may reach the logs."""
    obj = event.object
    # Straight to a logger (ctx.log's adapter would replace `extra` with its own ids).
    logging.getLogger("ops_plugin").info(
        "chatty handler looked at the object", extra={"member": obj, "first_name": obj.get("first_name")}
    )
    ctx.redis.rpush(SEEN_KEY, f"{event.id}|{ctx.handler}||{ctx.attempt}")
    if ctx.attempt == 1:
        raise HandlerError(f"could not use {obj.get('name')} / {obj.get('email')}")
