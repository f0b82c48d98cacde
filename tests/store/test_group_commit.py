"""Group commit (receiver/store/dedup.py): deliveries that arrive while a call is in
flight share the next call (README, "What the receiver does per delivery")."""

from __future__ import annotations

import asyncio

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from receiver.keys import dedup_key
from receiver.store.dedup import Admission, AdmitOutcome, EventStore
from receiver.store.server import RedisServer

PAUSE_MS = 400


def script_calls(redis: Redis) -> int:
    stats = redis.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


async def admit_while_redis_is_paused(url: str, redis: Redis) -> list[AdmitOutcome]:
    client = AsyncRedis.from_url(url)
    try:
        store = EventStore(client, [], 3600)
        await store.admit(Admission("osma", "evt_warm", []))  # loads the script
        redis.config_resetstat()
        redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        first = asyncio.create_task(store.admit(Admission("osma", "evt_0", [])))
        await asyncio.sleep(0.05)  # its call is sent and waits on the paused Redis
        later = []
        for number in range(1, 6):
            later.append(asyncio.create_task(store.admit(Admission("osma", f"evt_{number}", []))))
            await asyncio.sleep(0.01)
        return await asyncio.gather(first, *later)
    finally:
        await client.aclose()


def test_deliveries_that_arrive_while_a_call_is_in_flight_share_the_next_call(
    redis: Redis, redis_server: RedisServer
) -> None:
    outcomes = asyncio.run(admit_while_redis_is_paused(redis_server.url, redis))

    assert outcomes == [AdmitOutcome.ACCEPTED] * 6
    assert all(redis.exists(dedup_key("osma", f"evt_{number}")) for number in range(6))
    # The first delivery's call, then one for the five that came while it was in flight.
    assert script_calls(redis) == 2
