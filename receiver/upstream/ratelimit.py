"""A request budget that every worker process shares: a token bucket kept in Redis and
taken from with one Lua call per request.

Osma allows 100 requests per second per endpoint in live mode and 20 in test mode. Each
request *reserves* its slot (the bucket may go into debt) and the caller sleeps until
then, so waiting callers are served in order without polling. The bucket refills at
80 % of the limit and holds a tenth of it: in any one-second window at most
`burst + refill` (90 % of the limit) requests start, which leaves room for the jitter
between our clock and the server's.
"""

from __future__ import annotations

import hashlib

from redis import Redis

from ..keys import rate_limit_key

OSMA_LIVE_PER_SECOND = 100
OSMA_TEST_PER_SECOND = 20
REFILL_SHARE = 0.8
BURST_SHARE = 0.1

# GCRA: `tat` is the time at which the bucket would be full again. Each request moves it
# one interval on; a request may start once `tat` is within `burst` intervals of now.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + interval
local wait = tat - now - burst * interval
if wait < 0 then wait = 0 end
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RateLimiter:
    """A per-endpoint request budget shared through Redis by every process using `scope`."""

    def __init__(self, redis: Redis, scope: str, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.redis = redis
        self.scope = scope
        self.per_second = per_second
        self.refill = per_second * REFILL_SHARE
        self.burst = max(1.0, per_second * BURST_SHARE)
        self._script = redis.register_script(_RESERVE)

    @classmethod
    def for_osma(cls, redis: Redis, api_key: str) -> RateLimiter:
        """Osma's budget for this key: live (`sk_live_`) or test mode (anything else)."""
        limit = OSMA_LIVE_PER_SECOND if api_key.startswith("sk_live_") else OSMA_TEST_PER_SECOND
        digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]
        return cls(redis, f"osma:{digest}", limit)

    def reserve(self, endpoint: str) -> float:
        """Take one request's slot on `endpoint`; the seconds to wait before sending it."""
        waited = self._script(keys=[rate_limit_key(self.scope, endpoint)], args=[self.refill, self.burst])
        return float(waited)
