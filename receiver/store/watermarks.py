"""Watermarks: the highest value applied so far per name, so that state never goes back.

The ordering guard of the built-in handlers: an event older (by `updated_at`/`created_at`)
than one already applied to the same entity does not overwrite it, and a KPI count
never goes down for a date. `behind` and `advance` are meant to be used under the lock
of that name (`EffectsLedger.locked`), so a check and its effect are one step.
"""

from __future__ import annotations

from redis import Redis

from ..keys import watermark_key
from .ledger import RETENTION

# Set the mark to max(mark, value) and keep it for the retention period.
_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]))
local value = tonumber(ARGV[1])
if current == nil or value > current then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class Watermarks:
    """Named high-water marks in Redis."""

    def __init__(self, redis: Redis, *, retention: int = RETENTION) -> None:
        self.redis = redis
        self.retention = retention
        self._advance = redis.register_script(_ADVANCE)

    @staticmethod
    def _key(name: str) -> str:
        return watermark_key(name)

    def get(self, name: str) -> float | None:
        value = self.redis.get(self._key(name))
        return float(value) if value is not None else None

    def behind(self, name: str, value: float) -> bool:
        """Whether `value` is lower than the mark (equal is not behind)."""
        mark = self.get(name)
        return mark is not None and value < mark

    def advance(self, name: str, value: float) -> None:
        self._advance(keys=[self._key(name)], args=[repr(float(value)), self.retention])
