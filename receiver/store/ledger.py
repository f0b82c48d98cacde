"""The effects ledger: what makes an upstream effect happen once although a job may run
many times (retries, a worker killed or frozen mid-call, redeliveries, `replay --force`).

Each effect has a key that is the same on every run of its job: `ctx.idempotency_key(step)`,
from (event id, route, step). `perform` writes the *intent* before the upstream call and
the *outcome* after it:

- outcome recorded (done or skipped)       -> nothing is sent again, the outcome is returned
- intent without outcome (the answer was lost: a timeout, a crash) -> `reconcile(intent,
  claimed)` reads upstream; what it finds becomes the outcome, else the call is made again
- nothing recorded                         -> intent, call, outcome

`claimed` holds the upstream ids already recorded as the outcome of some other effect of
the same scope (e.g. one KPI and date), so reconciliation never adopts another job's
resource.

Locks (docs/contract.md, "Effects under real conditions"):

- A lock belongs to one *execution* (one run of a job), never to a job id: a rerun of a
  job whose worker froze does not walk into a lock the frozen run still holds.
- While its execution is alive the lock is renewed (`LockKeeper`, a thread per process),
  and once more right before each upstream call. A frozen process renews nothing, so its
  locks expire `lock_ttl` seconds after their last renewal.
- `lock_ttl` is also the bound within which an upstream is assumed to finish a request it
  received. After a call whose answer was lost the lock is not released: it expires
  `lock_ttl` after the renewal made right before the call. So a replacement execution
  reconciles only once the first call has finished, and never posts beside it.
- Fencing: writing the intent and recording the outcome both check, inside Redis, that
  the execution still holds the lock. One that lost it (frozen past the TTL) records
  nothing and makes no further call: `LockLost`.

Osma keeps the first answer per `idempotency-key`, errors included. `perform_keyed` gives
each attempt after a failed one a new key generation (`<key>.g2`, ...), recorded in the
effect, once reconciliation found that the effect did not happen.

```python
outcome = ctx.ledger.perform(
    ctx.effect("report", intent={"value": 3}, scope="ogsm:indicator:456:2024-10-01"),
    act=lambda: {"id": ogsm.indicator_reports.create(456, "2024-10-01", 3)["id"], "value": 3},
    reconcile=lambda intent, claimed: find_report(intent, claimed),
)
```
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import Redis
from redis.exceptions import ResponseError

from .. import keys
from ..exceptions import ClaimHeld, LockLost, RateLimited, Rejected

RETENTION = 90 * 24 * 3600  # seconds the ledger, counts and watermarks are kept after a write
LOCK_TTL = 60  # seconds; also the bound within which an upstream finishes a request
# Seconds to wait in-process for a busy lock before the job is deferred until it expires:
# enough for another live job of the same KPI to finish (milliseconds), short enough that a
# lock left by a dead worker does not hold this worker (it was 15 s: a minute of such locks
# stalled every other job behind them).
LOCK_WAIT = 2.0
# With replicas, how long a claim waits (WAIT 1 <ms>) for one of them to hold the intent
# before the upstream call: a failover then cannot forget it (docs/operations.md, "Durability").
REPLICA_WAIT_MS = 1000
# Set on an exception raised by an upstream call: the call may still be in flight upstream.
_IN_FLIGHT = "_osma_router_call_in_flight"

# Take a free lock. KEYS: lock. ARGV: token, ttl ms. Answers 1, or the ms it has left.
_TAKE = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return -1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return -1
end
return math.max(ttl, 1)
"""
# Renew locks still held. KEYS: locks. ARGV: ttl ms, then one token per lock.
# Answers one 1 (renewed) or 0 (lost) per lock.
_RENEW = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
# Renew the lock and write the intent, only while holding the lock.
# KEYS: lock, effect. ARGV: token, ttl ms, intent json, now, retention s, bump generation (0/1).
# Answers the key generation to send under, or 0 when the lock is lost.
_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local generation = tonumber(redis.call('HGET', KEYS[2], 'generation') or '1')
if ARGV[6] == '1' then generation = generation + 1 end
redis.call('HSET', KEYS[2], 'state', 'intent', 'intent', ARGV[3], 'intent_at', ARGV[4],
  'generation', generation, 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return generation
"""
# Record an outcome, only while holding the lock (no lock key: unconditional).
# KEYS: lock or '', effect, [event index, claims set]. ARGV: token, state, result json,
# now, reconciled, retention s, label or '', event entry json, claimed id or ''.
_RECORD = """
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'result', ARGV[3], 'done_at', ARGV[4],
  'reconciled', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[7], ARGV[8])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
if ARGV[9] ~= '' then  -- claims older than the retention go: the set stays bounded
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[9])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[6]))
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
return 1
"""

log = logging.getLogger("osma_router.ledger")

EffectResult = dict[str, Any]
Reconcile = Callable[[Mapping[str, Any], Collection[str]], EffectResult | None]


def job_effect_key(event_id: str, route_key: str, step: str = "main") -> str:
    """The key of effect `step` of the job of (event, route): the same on every run
    (`ctx.idempotency_key(step)`); hashed when too long or not printable."""
    raw = f"{event_id}|{route_key}|{step}"
    if len(raw) <= 200 and raw.isprintable():
        return f"osma-router:{raw}"
    return "osma-router:" + hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class Effect:
    """One upstream effect: its stable `key`, what it is about to do (`intent`: JSON, no
    member data), where its outcome is indexed (`event_id` + `label`, `scope`), and the
    execution performing it (`owner`). `ctx.effect(step, ...)` fills these in for a handler."""

    key: str
    intent: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = ""
    label: str = ""
    scope: str = ""
    owner: str = ""


@dataclass(frozen=True)
class EffectOutcome:
    """`state` is "done" or "skipped"; `result` holds what upstream gave back (an id...);
    `fresh` is False when the outcome had been recorded by an earlier run."""

    state: str
    result: EffectResult
    fresh: bool = True
    reconciled: bool = False

    @property
    def done(self) -> bool:
        return self.state == "done"


@dataclass
class _Held:
    key: str
    token: str
    lost: bool = False


class LockKeeper:
    """Renews, every third of the TTL, the locks this process's executions hold.

    One daemon thread per process and Redis client. A frozen process (SIGSTOP, a VM pause,
    a long GC) renews nothing, which is the point: its locks expire and others go on.
    """

    _keepers: weakref.WeakKeyDictionary[Redis, LockKeeper] = weakref.WeakKeyDictionary()
    _keepers_lock = threading.Lock()

    def __init__(self, redis: Redis, ttl: float) -> None:
        self.redis = redis
        self.ttl = ttl
        self._held: dict[int, _Held] = {}
        self._lock = threading.Lock()
        self._renew = redis.register_script(_RENEW)
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, redis: Redis, ttl: float) -> LockKeeper:
        with cls._keepers_lock:
            keeper = cls._keepers.get(redis)
            if keeper is None or keeper.ttl != ttl:
                keeper = cls._keepers[redis] = cls(redis, ttl)
            return keeper

    def hold(self, held: _Held) -> None:
        with self._lock:
            self._held[id(held)] = held
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lock-keeper", daemon=True)
                self._thread.start()

    def drop(self, held: _Held) -> None:
        with self._lock:
            self._held.pop(id(held), None)

    def renew_now(self) -> None:
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        answers = self._renew(
            keys=[h.key for h in held], args=[int(self.ttl * 1000), *[h.token for h in held]]
        )
        for entry, renewed in zip(held, answers, strict=True):
            if not renewed:
                entry.lost = True

    def _run(self) -> None:
        while True:
            time.sleep(max(self.ttl / 3, 0.05))
            try:
                self.renew_now()
            except Exception:  # Redis away for a moment: the next round tries again
                continue


class EffectsLedger:
    """Intent and outcome of each effect, in Redis. See the module docstring."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention: int = RETENTION,
        lock_ttl: float = LOCK_TTL,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        self.redis = redis
        self.retention = retention
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self._keeper = LockKeeper.of(redis, lock_ttl)
        self._take = redis.register_script(_TAKE)
        self._release = redis.register_script(_RELEASE)
        self._claim = redis.register_script(_CLAIM)
        self._record_script = redis.register_script(_RECORD)
        self._held_by_token: dict[tuple[str, str], _Held] = {}
        self._replicated: bool | None = None  # whether claims WAIT for a replica; asked once

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.lock_ttl * 1000))

    def outcome(self, effect_key: str) -> EffectOutcome | None:
        """The recorded outcome of an effect, or None while it has none."""
        state, result = self.redis.hmget(keys.effect_key(effect_key), ["state", "result"])
        if state not in (b"done", b"skipped"):
            return None
        return EffectOutcome(_text(state), orjson.loads(result or b"{}"), fresh=False)

    def effects_of(self, event_id: str) -> dict[str, EffectOutcome]:
        """The outcomes recorded for one event, by label (the handler's name)."""
        recorded = self.redis.hgetall(keys.effects_of_key(event_id))
        outcomes = {}
        for label, value in recorded.items():
            entry = orjson.loads(value)
            outcomes[_text(label)] = EffectOutcome(entry["state"], entry["result"], fresh=False)
        return outcomes

    def claimed(self, scope: str) -> set[str]:
        """Upstream ids recorded as the outcome of some effect of `scope`."""
        if not scope:
            return set()
        floor = time.time() - self.retention
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.claims_key(scope), floor, "+inf")
            pipe.smembers(keys.legacy_claims_key(scope))
            current, legacy = pipe.execute()
        return {_text(m) for m in [*current, *legacy]}

    @contextmanager
    def locked(self, name: str, *, owner: str = "", wait: float | None = None) -> Iterator[None]:
        """Hold the Redis lock `name` for execution `owner`, renewed while inside.

        A lock another execution holds is waited for up to `wait` (default `lock_wait`)
        seconds; then `ClaimHeld` says when it expires, and the job runs again then
        without using up an attempt. The same execution may take a lock it holds again.
        """
        key = keys.lock_key(name)
        token = owner or uuid.uuid4().hex
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        while (left := int(self._take(keys=[key], args=[token, self._ttl_ms]))) >= 0:
            if time.monotonic() >= deadline:
                seconds = max(left, 1) / 1000
                raise ClaimHeld(
                    f"another execution holds the lock on {name} for {seconds:.1f} s more; "
                    "running again once it is free",
                    retry_after=seconds,
                )
            time.sleep(min(0.05, max(left, 1) / 1000))
        nested = (key, token) in self._held_by_token
        held = self._held_by_token.setdefault((key, token), _Held(key, token))
        if not nested:
            self._keeper.hold(held)
        keep = False
        try:
            yield
        except LockLost:
            raise
        except BaseException as exc:
            # An upstream call may be in flight (its answer was lost): the claim stands until
            # it expires, `lock_ttl` after its last renewal, so no one reconciles beside it.
            keep = getattr(exc, _IN_FLIGHT, False)
            raise
        finally:
            if not nested:
                self._keeper.drop(held)
                self._held_by_token.pop((key, token), None)
                if not keep and not held.lost:
                    self._release(keys=[key], args=[token])

    def perform(
        self, effect: Effect, act: Callable[[], EffectResult], *, reconcile: Reconcile | None = None
    ) -> EffectOutcome:
        """Make the effect happen once; see the module docstring."""
        return self._perform(effect, lambda key: act(), reconcile, keyed=False)

    def perform_keyed(
        self, effect: Effect, act: Callable[[str], EffectResult], *, reconcile: Reconcile
    ) -> EffectOutcome:
        """`perform` for an upstream with idempotency keys that keeps the first answer per
        key, errors included (Osma): `act(key)` sends with `key`. After an attempt whose
        answer did not apply the effect, `reconcile` reads back; if the effect is absent,
        the next call goes out under a new key generation (`<key>.g2`, `.g3`, ...)."""
        return self._perform(effect, act, reconcile, keyed=True)

    def _perform(
        self,
        effect: Effect,
        act: Callable[[str], EffectResult],
        reconcile: Reconcile | None,
        *,
        keyed: bool,
    ) -> EffectOutcome:
        lock = f"effect:{effect.key}"
        owner = effect.owner or uuid.uuid4().hex
        with self.locked(lock, owner=owner):
            key = keys.effect_key(effect.key)
            state, intent = self.redis.hmget(key, ["state", "intent"])
            if state in (b"done", b"skipped"):
                recorded = self.outcome(effect.key)
                assert recorded is not None
                return recorded
            retrying = state == b"intent"
            if retrying and reconcile is not None:
                found = reconcile(orjson.loads(intent or b"{}"), self.claimed(effect.scope))
                if found is not None:
                    return self._record(effect, "done", found, reconciled=True, owner=owner, lock=lock)
            generation = self._claim_intent(
                [keys.lock_key(lock), key],
                [
                    owner,
                    self._ttl_ms,
                    orjson.dumps(effect.intent),
                    time.time(),
                    self.retention,
                    int(keyed and retrying),
                ],
            )
            if generation == 0:
                raise LockLost(f"the lock on {lock} expired while this execution was stopped; not calling")
            try:
                result = act(effect.key if generation == 1 else f"{effect.key}.g{generation}")
            except (Rejected, RateLimited):
                raise  # a 4xx or a 429: the request was not carried out, nothing is in flight
            except BaseException as exc:
                setattr(exc, _IN_FLIGHT, True)
                raise
            return self._record(effect, "done", result, owner=owner, lock=lock)

    def _claim_intent(self, script_keys: list[str], script_args: list[Any]) -> int:
        """Run the claim script; with replicas, wait until one of them holds the intent too.

        WAIT counts the writes of its own connection, so it goes in one pipeline with the claim
        (one connection, one round trip). A replica that does not answer in time costs
        `REPLICA_WAIT_MS` and a warning, never the effect: the call goes ahead.
        """
        if self._replicated is None:
            self._replicated = _has_replicas(self.redis)
        if not self._replicated:
            return int(self._claim(keys=script_keys, args=script_args))
        with self.redis.pipeline(transaction=False) as pipe:
            self._claim(keys=script_keys, args=script_args, client=pipe)
            pipe.wait(1, REPLICA_WAIT_MS)
            generation, acked = pipe.execute(raise_on_error=False)
        if isinstance(generation, Exception):
            raise generation
        if isinstance(acked, ResponseError):  # WAIT refused (a managed Redis may disable it)
            self._replicated = False
            log.warning(
                "Redis refused WAIT: effects are called without waiting for a replica",
                extra={"reason": type(acked).__name__},
            )
        elif int(generation) != 0 and int(acked) < 1:
            log.warning(
                "no replica acknowledged the effect's intent in time: calling upstream anyway",
                extra={"reason": "replica_wait_timeout", "duration_ms": REPLICA_WAIT_MS},
            )
        return int(generation)

    def skip(self, effect: Effect, reason: str) -> EffectOutcome:
        """Record that this effect deliberately posts nothing (a replay then also posts nothing)."""
        return self._record(effect, "skipped", {"reason": reason}, owner=effect.owner, lock=None)

    def _record(
        self,
        effect: Effect,
        state: str,
        result: EffectResult,
        *,
        owner: str,
        lock: str | None,
        reconciled: bool = False,
    ) -> EffectOutcome:
        indexed = bool(effect.event_id and effect.label)
        claimed = result.get("id") if effect.scope and state == "done" else None
        recorded = self._record_script(
            keys=[
                keys.lock_key(lock) if lock is not None else "",
                keys.effect_key(effect.key),
                keys.effects_of_key(effect.event_id) if indexed else "",
                keys.claims_key(effect.scope) if claimed is not None else "",
            ],
            args=[
                owner,
                state,
                orjson.dumps(result),
                time.time(),
                int(reconciled),
                self.retention,
                effect.label if indexed else "",
                # The key too: `trace` reads the effect's generation and reconciliation there.
                orjson.dumps({"state": state, "result": result, "key": effect.key}) if indexed else "",
                str(claimed) if claimed is not None else "",
            ],
        )
        if not recorded:
            raise LockLost(
                f"the lock on {lock} expired while this execution was stopped; "
                "its outcome is left to the execution that holds it now"
            )
        return EffectOutcome(state, result, fresh=True, reconciled=reconciled)


def _has_replicas(redis: Redis) -> bool:
    """Whether this Redis has replicas connected (`INFO replication`, `connected_slaves`)."""
    try:
        info = redis.info("replication")
    except ResponseError:  # INFO disabled: act as without replicas
        return False
    return int(info.get("connected_slaves", 0) or 0) > 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
