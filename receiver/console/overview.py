"""The overview: deliveries per minute for the last hour, queues, workers, job
outcomes and upstream calls. A handful of pipelined Redis reads, no scan."""

from __future__ import annotations

import time
from collections import Counter

from starlette.responses import Response

from ..keys import JOB_COUNTS_KEY, RATE_LIMIT_WAITS_KEY, UPSTREAM_CALLS_KEY
from ..store.activity import read_activity
from ..store.queues import live_worker_keys, queue_counts
from .charts import colour, stacked_bars
from .pages import Console, PageRequest, render


def _split(stored: dict[bytes, bytes]) -> list[tuple[str, str, int]]:
    rows = []
    for raw, value in stored.items():
        name, _, kind = raw.decode().rpartition("|")
        rows.append((name, kind, int(float(value))))
    return sorted(rows)


def overview(page: PageRequest, console: Console) -> Response:
    redis = console.redis
    minutes = read_activity(redis, time.time(), 60)
    totals: Counter[str] = Counter()
    for minute in minutes:
        totals.update(minute.outcomes)
    queues = queue_counts(redis, console.queues)
    workers = live_worker_keys(redis)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(JOB_COUNTS_KEY)
    pipe.hgetall(UPSTREAM_CALLS_KEY)
    pipe.hgetall(RATE_LIMIT_WAITS_KEY)
    jobs, upstream, waits = pipe.execute()
    return render(
        console,
        page,
        "overview.html",
        title="Overview",
        chart=stacked_bars([(m.start, m.outcomes) for m in minutes]),
        totals=sorted(totals.items()),
        colour=colour,
        queues=queues,
        workers=len(workers),
        jobs=_split(jobs),
        upstream=_split(upstream),
        waits=_split(waits),
        refresh=True,
    )
