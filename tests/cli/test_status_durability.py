"""Durability (docs/operations.md, "Durability"): `osma-router status` warns about a Redis
without its AOF, and the effects ledger waits for a replica to hold an intent before the
upstream call, with two real redis-server processes (a primary and its replica)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from receiver import keys
from receiver.store.ledger import REPLICA_WAIT_MS, Effect, EffectsLedger
from receiver.store.server import RedisServer, find_redis_server
from tests.ops_support import wait_for
from tests.support import env_for, osma_router

# --- status ------------------------------------------------------------------------------


def test_status_warns_in_one_last_line_when_redis_runs_without_the_aof(tmp_path, redis, redis_server):
    env = env_for(redis_server.url)  # the suite's Redis runs with appendonly no
    result = osma_router(["status"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [lines[-1]] and "appendonly no" in lines[-1]
    assert lines[-2].startswith("capture  ")  # everything before it is as it was
    as_json = json.loads(osma_router(["status", "--json"], env, tmp_path).stdout)
    assert as_json["warnings"] == [lines[-1].removeprefix("warning: ")]


def test_status_does_not_warn_when_the_aof_is_on(tmp_path) -> None:
    with RedisServer(binary=find_redis_server(prefer_embedded=False), appendonly=True) as server:
        env = env_for(server.url)
        result = osma_router(["status"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "warning:" not in result.stdout and result.stdout.splitlines()[-1].startswith("capture  ")
        assert "AOF on" in result.stdout.splitlines()[0]
        assert json.loads(osma_router(["status", "--json"], env, tmp_path).stdout)["warnings"] == []


# --- the ledger waits for a replica ----------------------------------------------------------


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    binary = find_redis_server(prefer_embedded=False)
    with RedisServer(binary=binary) as primary, RedisServer(binary=binary) as replica:
        yield primary, replica


def replicate(primary: RedisServer, replica: RedisServer) -> None:
    Redis.from_url(primary.url).config_set("repl-diskless-sync-delay", 0)  # sync at once, not in 5 s
    Redis.from_url(replica.url).execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
    wait_for(
        lambda: (
            Redis.from_url(replica.url).info("replication").get("master_link_status") == "up"
            and Redis.from_url(primary.url).info("replication").get("connected_slaves") == 1
        ),
        timeout=30,
        what="the replica to be in sync",
    )


def calls(redis: Redis, command: str) -> int:
    return int(redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_without_a_replica_no_wait_is_issued(primary_and_replica) -> None:
    primary, _ = primary_and_replica
    redis = Redis.from_url(primary.url)
    ledger = EffectsLedger(redis, lock_ttl=5)
    redis.config_resetstat()
    for number in range(3):
        outcome = ledger.perform(Effect(f"alone-{number}", intent={"n": number}), act=lambda: {"id": 1})
        assert outcome.done
    assert calls(redis, "wait") == 0
    assert calls(redis, "info") == 2  # the ledger's, once for three effects, and this reading's


def test_with_a_replica_the_intent_is_on_it_before_the_upstream_call(primary_and_replica) -> None:
    primary, replica = primary_and_replica
    replicate(primary, replica)
    redis, copy = Redis.from_url(primary.url), Redis.from_url(replica.url)
    ledger = EffectsLedger(redis, lock_ttl=5)
    redis.config_resetstat()
    seen_on_the_replica: list[bytes | None] = []

    def act() -> dict[str, int]:
        seen_on_the_replica.append(copy.hget(keys.effect_key("replicated"), "state"))
        return {"id": 7}

    assert ledger.perform(Effect("replicated", intent={"value": 3}), act=act).done
    assert seen_on_the_replica == [b"intent"]
    assert calls(redis, "wait") == 1
    # A recorded effect is not performed again, and so waits for nothing.
    assert not ledger.perform(Effect("replicated", intent={"value": 3}), act=act).fresh
    assert calls(redis, "wait") == 1 and len(seen_on_the_replica) == 1


def test_a_replica_that_does_not_answer_delays_the_call_and_warns(primary_and_replica, caplog) -> None:
    primary, replica = primary_and_replica
    replicate(primary, replica)
    redis = Redis.from_url(primary.url)
    ledger = EffectsLedger(redis, lock_ttl=5)
    assert ledger.perform(Effect("warm-up"), act=lambda: {"id": 1}).done  # replicas asked here
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # frozen: still connected, acknowledges nothing
    try:
        called: list[float] = []
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="osma_router.ledger"):
            outcome = ledger.perform(
                Effect("frozen-replica", intent={"value": 1}),
                act=lambda: called.append(time.monotonic()) or {"id": 2},
            )
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert outcome.done and len(called) == 1
    assert called[0] - started >= REPLICA_WAIT_MS / 1000 * 0.9
    warnings = [r for r in caplog.records if r.name == "osma_router.ledger" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no replica acknowledged" in warnings[0].getMessage()
    assert "frozen-replica" not in warnings[0].getMessage()
