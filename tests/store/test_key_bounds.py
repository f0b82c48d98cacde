"""Keys that once grew for ever: the effects ledger's claims (one set per scope, kept alive
by every claim: all OGSM actions ever created) now hold only the retention's worth of ids."""

from __future__ import annotations

import time

from receiver.keys import claims_key, legacy_claims_key
from receiver.store.ledger import Effect, EffectsLedger

SCOPE = "ogsm:actions:ogsm_action_id"


def claim(ledger: EffectsLedger, name: str, upstream_id: str):
    return ledger.perform(Effect(f"bound:{name}", scope=SCOPE), lambda: {"id": upstream_id})


def test_claims_older_than_the_retention_are_dropped(redis):
    ledger = EffectsLedger(redis, retention=1)
    claim(ledger, "first", "101")
    assert ledger.claimed(SCOPE) == {"101"}
    assert 0 < redis.ttl(claims_key(SCOPE)) <= 1
    time.sleep(1.2)
    assert ledger.claimed(SCOPE) == set()  # past the retention, as the effect itself
    claim(ledger, "second", "102")
    assert [m for m, _ in redis.zrange(claims_key(SCOPE), 0, -1, withscores=True)] == [b"102"]


def test_claims_kept_by_an_earlier_release_are_still_read(redis):
    redis.sadd(legacy_claims_key(SCOPE), "7")
    redis.expire(legacy_claims_key(SCOPE), 3600)
    ledger = EffectsLedger(redis)
    claim(ledger, "new", "8")
    assert ledger.claimed(SCOPE) == {"7", "8"}
    assert redis.smembers(legacy_claims_key(SCOPE)) == {b"7"}  # no longer written: it expires
