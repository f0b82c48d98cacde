"""Flushes this receiver's delivery counts to Redis, minute by minute, for the console.

The hot path only increments its Prometheus counter, as before; this task reads the
counter every few seconds and adds the difference since its last read to the current
minute's hash (`receiver.store.activity`). A Redis that does not answer is skipped:
the difference is added at the next flush that works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import Counter
from redis.asyncio import Redis as AsyncRedis

from ..store.activity import activity_field, add_activity
from ..store.connection import UNAVAILABLE

log = logging.getLogger("osma_router.receiver")

FLUSH_EVERY = 5.0
LAST_FLUSH_TIMEOUT = 5.0


class ActivityRecorder:
    def __init__(
        self, deliveries: Counter, redis: AsyncRedis, clock: Callable[[], float] = time.time
    ) -> None:
        self._deliveries = deliveries
        self._redis = redis
        self._clock = clock
        self._flushed: dict[str, float] = {}

    def _counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for metric in self._deliveries.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    name = activity_field(labels["source"], labels["outcome"], labels["reason"])
                    counts[name] = counts.get(name, 0.0) + sample.value
        return counts

    async def flush(self) -> None:
        current = self._counts()
        delta = {k: int(v - self._flushed.get(k, 0.0)) for k, v in current.items()}
        delta = {k: v for k, v in delta.items() if v > 0}
        if not delta:
            return
        try:
            await add_activity(self._redis, int(self._clock() // 60), delta)
        except UNAVAILABLE:
            return  # counted again at the next flush
        self._flushed = current

    async def run(self) -> None:
        """Flush every few seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(FLUSH_EVERY)
                await self.flush()
        except asyncio.CancelledError:
            try:  # a stopping receiver has its graceful-shutdown time for this
                await asyncio.wait_for(self.flush(), LAST_FLUSH_TIMEOUT)
            except UNAVAILABLE:
                log.info("last activity counts not flushed: Redis did not answer")
            raise
