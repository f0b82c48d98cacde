"""The effects ledger's locks and claims against a real Redis: owned by an execution,
renewed while it lives, fenced when lost, kept for the bound after a lost answer, and key
generations for an upstream that caches its first answer (docs/contract.md, "Effects
under real conditions")."""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis

from receiver.exceptions import ClaimHeld, LockLost, Rejected, Unavailable
from receiver.keys import effect_key, lock_key
from receiver.store.ledger import Effect, EffectsLedger


def test_a_rerun_of_the_same_job_does_not_walk_into_a_lock_its_first_run_holds(redis: Redis):
    ledger = EffectsLedger(redis, lock_ttl=5, lock_wait=0.2)
    first_run, rerun = "osma_e-evt_1_r1:aaaa", "osma_e-evt_1_r1:bbbb"
    with ledger.locked("task:1", owner=first_run):
        with pytest.raises(ClaimHeld) as held:
            with ledger.locked("task:1", owner=rerun):
                pass
    assert 0 < held.value.retry_after <= 5


def test_a_lock_is_renewed_while_its_execution_is_inside(redis: Redis):
    ledger = EffectsLedger(redis, lock_ttl=1, lock_wait=0.1)
    with ledger.locked("kpi:456", owner="run-a"):
        time.sleep(2.5)  # more than twice the TTL: without renewal it would have expired
        assert redis.get(lock_key("kpi:456")) == b"run-a"
        with pytest.raises(ClaimHeld):
            with ledger.locked("kpi:456", owner="run-b"):
                pass
    assert not redis.exists(lock_key("kpi:456"))  # released on the way out


def test_the_same_execution_may_take_a_lock_it_holds_again(redis: Redis):
    ledger = EffectsLedger(redis, lock_ttl=5, lock_wait=0.1)
    with ledger.locked("x", owner="run-a"):
        with ledger.locked("x", owner="run-a"):
            pass
        assert redis.get(lock_key("x")) == b"run-a"  # the inner exit does not release it


def test_after_a_lost_answer_the_claim_stands_for_the_bound(redis: Redis):
    """The call may still be in flight upstream: no one reconciles until the lock expires,
    `lock_ttl` after the renewal made right before the call."""
    ledger = EffectsLedger(redis, lock_ttl=2, lock_wait=0.1)
    effect = Effect("evt_1|r1|report", owner="run-a")

    def timed_out() -> dict:
        raise Unavailable("ogsm POST /indicator_reports: timeout")

    with pytest.raises(Unavailable):
        ledger.perform(effect, timed_out)
    left = redis.pttl(lock_key(f"effect:{effect.key}"))
    assert 1000 < left <= 2000, left
    calls = []
    with pytest.raises(ClaimHeld) as held:
        ledger.perform(Effect(effect.key, owner="run-b"), lambda: calls.append(1) or {"id": 1})
    assert calls == [] and held.value.retry_after <= 2
    time.sleep(2.1)
    found = ledger.perform(
        Effect(effect.key, owner="run-c"),
        lambda: calls.append(1) or {"id": 2},
        reconcile=lambda i, c: {"id": 1},
    )
    assert found.reconciled and found.result == {"id": 1} and calls == []


def test_a_4xx_releases_the_claim_at_once(redis: Redis):
    ledger = EffectsLedger(redis, lock_ttl=30, lock_wait=0.1)

    def refused() -> dict:
        raise Rejected("ogsm POST /actions: 422", status_code=422)

    with pytest.raises(Rejected):
        ledger.perform(Effect("evt_2|r1|create", owner="run-a"), refused)
    assert not redis.exists(lock_key("effect:evt_2|r1|create"))


def test_an_execution_that_lost_its_lock_records_nothing(redis: Redis):
    """Fencing: frozen past the TTL, the lock went to another execution; when this one
    wakes, its outcome is not written (the other execution's is)."""
    ledger = EffectsLedger(redis, lock_ttl=5, lock_wait=0.1)
    effect = Effect("evt_3|r1|report", owner="run-a")

    def call_then_lose_the_lock() -> dict:
        redis.set(lock_key(f"effect:{effect.key}"), "run-b", px=5000)  # expired and taken meanwhile
        return {"id": 7}

    with pytest.raises(LockLost):
        ledger.perform(effect, call_then_lose_the_lock)
    assert redis.hget(effect_key(effect.key), "state") == b"intent"
    assert redis.get(lock_key(f"effect:{effect.key}")) == b"run-b"  # not released by the loser


def test_an_execution_that_lost_its_lock_before_calling_does_not_call(redis: Redis):
    """The claim written right before the call is the fence: a lock lost while reading
    upstream (frozen past the TTL, taken by another execution) stops the call."""
    ledger = EffectsLedger(redis, lock_ttl=5, lock_wait=0.1)
    effect = Effect("evt_4|r1|report", owner="run-a")
    redis.hset(effect_key(effect.key), mapping={"state": "intent", "intent": "{}"})  # an earlier lost answer
    calls = []

    def reconcile_while_losing_the_lock(intent, claimed):
        redis.set(lock_key(f"effect:{effect.key}"), "run-b", px=5000)
        return None

    with pytest.raises(LockLost):
        ledger.perform(
            effect, lambda: calls.append(1) or {"id": 1}, reconcile=reconcile_while_losing_the_lock
        )
    assert calls == []
    assert redis.get(lock_key(f"effect:{effect.key}")) == b"run-b"


def test_keyed_effects_move_to_a_new_generation_only_when_the_effect_is_absent(redis: Redis):
    ledger = EffectsLedger(redis, lock_ttl=1, lock_wait=0.1)
    sent: list[str] = []
    applied: dict[str, bool] = {"done": False}

    def call(key: str) -> dict:
        sent.append(key)
        if len(sent) == 1:
            raise Unavailable("osma POST /tasks/tsk_1: 503")
        applied["done"] = True
        return {"id": "tsk_1"}

    def reconcile(intent, claimed):
        return {"id": "tsk_1"} if applied["done"] else None

    with pytest.raises(Unavailable):
        ledger.perform_keyed(Effect("base", owner="run-a"), call, reconcile=reconcile)
    time.sleep(1.1)  # the claim of the lost answer expires
    outcome = ledger.perform_keyed(Effect("base", owner="run-b"), call, reconcile=reconcile)
    assert sent == ["base", "base.g2"] and outcome.done and not outcome.reconciled
    assert redis.hget(effect_key("base"), "generation") == b"2"
    # Done: never sent again, under any generation.
    again = ledger.perform_keyed(Effect("base", owner="run-c"), call, reconcile=reconcile)
    assert sent == ["base", "base.g2"] and not again.fresh


def test_two_executions_of_one_effect_at_once_call_upstream_once(redis: Redis):
    ledger = EffectsLedger(redis, lock_ttl=1, lock_wait=10)
    calls: list[str] = []
    gate = threading.Event()

    def slow_call(name: str) -> dict:
        calls.append(name)
        gate.wait(3)  # longer than the TTL: only renewal keeps the other one out
        return {"id": name}

    results: list[object] = []

    def run(name: str) -> None:
        own = EffectsLedger(Redis(connection_pool=redis.connection_pool), lock_ttl=1, lock_wait=10)
        results.append(own.perform(Effect("evt_5|r1|report", owner=name), lambda: slow_call(name)))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("run-a", "run-b")]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    time.sleep(2.5)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and len(results) == 2
    del ledger
