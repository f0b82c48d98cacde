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
    """`deliveries`: counts by source and outcome; `reasons`: the part of them that has a
    reason, by source, outcome and reason (`receiver.web.metrics`)."""

    def __init__(
        self,
        deliveries: Counter,
        reasons: Counter,
        redis: AsyncRedis,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._deliveries = deliveries
        self._reasons = reasons
        self._redis = redis
        self._clock = clock
        self._flushed: dict[str, float] = {}

    def _counts(self) -> dict[str, float]:
        """Every (source, outcome, reason) count: those without a reason are the rest."""
        totals = _totals(self._deliveries, ("source", "outcome"))
        counts: dict[str, float] = {}
        for (source, outcome, reason), value in _totals(
            self._reasons, ("source", "outcome", "reason")
        ).items():
            counts[activity_field(source, outcome, reason)] = value
            totals[(source, outcome)] = totals.get((source, outcome), 0.0) - value
        for (source, outcome), value in totals.items():
            if value > 0:
                counts[activity_field(source, outcome, "")] = value
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


def _totals(counter: Counter, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    totals: dict[tuple[str, ...], float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = tuple(sample.labels[name] for name in labels)
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals
