"""The admit call's own connection (receiver/store/held_script.py): what redis-py's
script call did on errors, it still does, against a real Redis."""

from __future__ import annotations

import asyncio

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.keys import dedup_key
from receiver.store.dedup import Admission, AdmitOutcome, EventStore
from receiver.store.held_script import HeldScript
from receiver.store.server import RedisServer

ACCEPTED, DUPLICATE = AdmitOutcome.ACCEPTED, AdmitOutcome.DUPLICATE


def admit(store: EventStore, event_id: str) -> asyncio.Future[AdmitOutcome]:
    return asyncio.ensure_future(store.admit(Admission("osma", event_id, [])))


def test_a_script_redis_forgot_is_loaded_again(redis: Redis, redis_server: RedisServer) -> None:
    async def scenario() -> list[AdmitOutcome]:
        client = AsyncRedis.from_url(redis_server.url)
        try:
            store = EventStore(client, [], 3600)
            first = await admit(store, "evt_1")
            redis.script_flush()  # as after a restart without persistence of scripts
            return [first, await admit(store, "evt_2"), await admit(store, "evt_1")]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [ACCEPTED, ACCEPTED, DUPLICATE]
    assert redis.exists(dedup_key("osma", "evt_2"))


def test_a_dropped_connection_is_opened_again_and_the_call_sent_once_more(
    redis: Redis, redis_server: RedisServer
) -> None:
    async def scenario() -> list[AdmitOutcome]:
        client = AsyncRedis.from_url(redis_server.url)
        try:
            store = EventStore(client, [], 3600)
            first = await admit(store, "evt_1")
            killed = redis.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
            return [first, await admit(store, "evt_2")]
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [ACCEPTED, ACCEPTED]
    assert redis.exists(dedup_key("osma", "evt_2"))


def test_calls_share_one_connection(redis: Redis, redis_server: RedisServer) -> None:
    async def scenario() -> tuple[int, int]:
        client = AsyncRedis.from_url(redis_server.url)
        try:
            store = EventStore(client, [], 3600)
            await admit(store, "evt_0")
            before = redis.info("clients")["connected_clients"]
            await asyncio.gather(*(admit(store, f"evt_{n}") for n in range(1, 50)))
            for n in range(50, 60):
                await admit(store, f"evt_{n}")
            return before, redis.info("clients")["connected_clients"]
        finally:
            await client.aclose()

    before, after = asyncio.run(scenario())
    assert after == before


# Busy for ARGV[1] ms (Redis runs nothing else meanwhile), then counts.
SLOW_INCR = """
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
repeat
  t = redis.call('TIME')
until t[1] * 1000 + t[2] / 1000 - start >= tonumber(ARGV[1])
return redis.call('INCR', KEYS[1])
"""


def test_a_reply_that_came_too_late_is_never_read_as_the_next_calls(
    redis: Redis, redis_server: RedisServer
) -> None:
    """A call times out (redis-py's TimeoutError, which the receiver answers with 503) while
    its script still runs; the script then finishes and its reply arrives. Read on the same
    connection, that late reply (2) would answer the next call, whose own answer is 3."""

    async def scenario() -> tuple[BaseException | int, int]:
        client = AsyncRedis.from_url(redis_server.url, socket_timeout=0.2)
        try:
            call = HeldScript(client, SLOW_INCR, retries=0)  # a retry would send it again
            assert await call(["counter"], ["0"]) == 1
            late = (await asyncio.gather(call(["counter"], ["500"]), return_exceptions=True))[0]
            await asyncio.sleep(0.5)  # the slow script ends and its reply comes
            return late, await call(["counter"], ["0"])
        finally:
            await client.aclose()

    late, after = asyncio.run(scenario())
    assert isinstance(late, RedisTimeoutError)
    assert after == 3


def test_a_call_that_timed_out_is_sent_once_more_on_a_new_connection(
    redis: Redis, redis_server: RedisServer
) -> None:
    """The receiver's client retries a timeout once (connection.py): a connection that went
    silent, as after an idle drop by something in between, costs one timeout, not a 503 for
    every delivery of the call. Here the first try waits out a pause; the second runs."""

    async def scenario() -> int:
        client = AsyncRedis.from_url(redis_server.url, socket_timeout=0.3)
        try:
            call = HeldScript(client, SLOW_INCR)
            assert await call(["counter"], ["0"]) == 1
            redis.execute_command("CLIENT", "PAUSE", 400, "WRITE")
            return int(await call(["counter"], ["0"]))
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == 2  # a timed-out call that was paused never ran


def test_an_error_reply_keeps_the_connection(redis: Redis, redis_server: RedisServer) -> None:
    """An error Redis answered (here the script's own) was read whole: the connection stays."""

    async def scenario() -> tuple[BaseException | int, int, int, int]:
        client = AsyncRedis.from_url(redis_server.url)
        try:
            call = HeldScript(client, "if ARGV[1] == 'fail' then error('no') end return 1")
            await call([], ["ok"])
            before = redis.info("stats")["total_connections_received"]
            failed = (await asyncio.gather(call([], ["fail"]), return_exceptions=True))[0]
            again = await call([], ["ok"])
            return failed, again, before, redis.info("stats")["total_connections_received"]
        finally:
            await client.aclose()

    failed, again, before, after = asyncio.run(scenario())
    assert isinstance(failed, ResponseError) and again == 1
    assert after == before
