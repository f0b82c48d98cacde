"""The effects ledger: what makes an upstream effect happen once although a job may run
many times (retries, a worker killed mid-call, redeliveries, `replay --force`).

Each effect has a key that is the same on every run of its job: `ctx.idempotency_key(step)`,
from (event id, route, step). `perform` writes the *intent* before the upstream call and
the *outcome* after it:

- outcome recorded (done or skipped)       -> nothing is sent again, the outcome is returned
- intent without outcome (the answer was lost: a timeout, a crash) -> `reconcile(intent,
  claimed)` reads upstream; what it finds becomes the outcome, else the call is made again
- nothing recorded                         -> intent, call, outcome

`claimed` holds the upstream ids already recorded as the outcome of some other effect of
the same scope (e.g. one KPI and date), so reconciliation never adopts another job's
resource. A lock per effect keeps two workers from performing one effect at once.

```python
outcome = ctx.ledger.perform(
    ctx.effect("report", intent={"value": 3}, scope="ogsm:indicator:456:2024-10-01"),
    act=lambda: {"id": ogsm.indicator_reports.create(456, "2024-10-01", 3)["id"], "value": 3},
    reconcile=lambda intent, claimed: find_report(intent, claimed),
)
```
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import Redis

from .. import keys
from ..exceptions import HandlerError

RETENTION = 90 * 24 * 3600  # seconds the ledger, counts and watermarks are kept after a write
LOCK_TTL = 60  # seconds; longer than the upstream calls made under one lock
LOCK_WAIT = 15.0

# A lock is free, or held by the same owner (a rerun of a job whose worker died).
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

EffectResult = dict[str, Any]
Reconcile = Callable[[Mapping[str, Any], Collection[str]], EffectResult | None]


@dataclass(frozen=True)
class Effect:
    """One upstream effect: its stable `key`, what it is about to do (`intent`: JSON, no
    member data), where its outcome is indexed (`event_id` + `label`, `scope`), and the
    job performing it (`owner`). `ctx.effect(step, ...)` fills these in for a handler."""

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


class EffectsLedger:
    """Intent and outcome of each effect, in Redis. See the module docstring."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention: int = RETENTION,
        lock_ttl: int = LOCK_TTL,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        self.redis = redis
        self.retention = retention
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self._take = redis.register_script(_TAKE)
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def _key(effect_key: str) -> str:
        return keys.effect_key(effect_key)

    @staticmethod
    def _event_key(event_id: str) -> str:
        return keys.effects_of_key(event_id)

    @staticmethod
    def _claims_key(scope: str) -> str:
        return keys.claims_key(scope)

    def outcome(self, effect_key: str) -> EffectOutcome | None:
        """The recorded outcome of an effect, or None while it has none."""
        state, result = self.redis.hmget(self._key(effect_key), ["state", "result"])
        if state not in (b"done", b"skipped"):
            return None
        return EffectOutcome(_text(state), orjson.loads(result or b"{}"), fresh=False)

    def effects_of(self, event_id: str) -> dict[str, EffectOutcome]:
        """The outcomes recorded for one event, by label (the handler's name)."""
        recorded = self.redis.hgetall(self._event_key(event_id))
        outcomes = {}
        for label, value in recorded.items():
            entry = orjson.loads(value)
            outcomes[_text(label)] = EffectOutcome(entry["state"], entry["result"], fresh=False)
        return outcomes

    def claimed(self, scope: str) -> set[str]:
        """Upstream ids recorded as the outcome of some effect of `scope`."""
        return {_text(member) for member in self.redis.smembers(self._claims_key(scope))} if scope else set()

    @contextmanager
    def locked(self, name: str, *, owner: str = "", wait: float | None = None) -> Iterator[None]:
        """Hold the Redis lock `name`; a job that cannot get it in time is retried later.

        `owner` is the job id: a rerun of a job whose worker died takes over the locks
        that job still held instead of waiting for them to expire.
        """
        key = keys.lock_key(name)
        token = owner or uuid.uuid4().hex
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        while not self._take(keys=[key], args=[token, int(self.lock_ttl * 1000)]):
            if time.monotonic() >= deadline:
                raise HandlerError(f"another worker holds the lock on {name}; trying again later")
            time.sleep(0.02)
        try:
            yield
        finally:
            self._release(keys=[key], args=[token])

    def perform(
        self, effect: Effect, act: Callable[[], EffectResult], *, reconcile: Reconcile | None = None
    ) -> EffectOutcome:
        """Make the effect happen once; see the module docstring."""
        with self.locked(f"effect:{effect.key}", owner=effect.owner):
            key = self._key(effect.key)
            state, intent = self.redis.hmget(key, ["state", "intent"])
            if state in (b"done", b"skipped"):
                recorded = self.outcome(effect.key)
                assert recorded is not None
                return recorded
            if state == b"intent" and reconcile is not None:
                found = reconcile(orjson.loads(intent or b"{}"), self.claimed(effect.scope))
                if found is not None:
                    return self._record(effect, "done", found, reconciled=True)
            self.redis.hset(
                key,
                mapping={"state": "intent", "intent": orjson.dumps(effect.intent), "intent_at": time.time()},
            )
            self.redis.expire(key, self.retention)
            return self._record(effect, "done", act())

    def skip(self, effect: Effect, reason: str) -> EffectOutcome:
        """Record that this effect deliberately posts nothing (a replay then also posts nothing)."""
        return self._record(effect, "skipped", {"reason": reason})

    def _record(
        self, effect: Effect, state: str, result: EffectResult, *, reconciled: bool = False
    ) -> EffectOutcome:
        encoded = orjson.dumps(result)
        with self.redis.pipeline(transaction=True) as pipe:
            key = self._key(effect.key)
            pipe.hset(
                key,
                mapping={
                    "state": state,
                    "result": encoded,
                    "done_at": time.time(),
                    "reconciled": int(reconciled),
                },
            )
            pipe.expire(key, self.retention)
            if effect.event_id and effect.label:
                event_key = self._event_key(effect.event_id)
                pipe.hset(event_key, effect.label, orjson.dumps({"state": state, "result": result}))
                pipe.expire(event_key, self.retention)
            if effect.scope and state == "done" and result.get("id") is not None:
                claims = self._claims_key(effect.scope)
                pipe.sadd(claims, str(result["id"]))
                pipe.expire(claims, self.retention)
            pipe.execute()
        return EffectOutcome(state, result, fresh=True, reconciled=reconciled)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
