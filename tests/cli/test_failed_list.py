"""`osma-router failed list` on a long dead-letter list: rows oldest first, read a page at
a time (one round trip per page), `--limit N` with how many more there are."""

from __future__ import annotations

import time

from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from receiver.store.failed import PAGE, FailedJobs
from receiver.store.server import RedisServer
from tests.support import env_for, make_event, osma_router

FAILS = '[[routes]]\non = "task.completed"\nhandler = "sample.broken"\nretries = 0\n'


def fail_jobs(redis: Redis, count: int) -> list[str]:
    """`count` jobs in the failed registry, as RQ keeps them, oldest first."""
    registry = FailedJobRegistry("osma-router", connection=redis, serializer=JSONSerializer)
    ids = [f"osma_evt_{number:05d}_rlist" for number in range(count)]
    expires = time.time() + 86_400
    with redis.pipeline() as pipe:
        for number, job_id in enumerate(ids):
            job = Job.create(
                "receiver.jobs.run_handler",
                args=[{"event_id": f"evt_{number:05d}"}],
                connection=redis,
                serializer=JSONSerializer,
                id=job_id,
                meta={"attempts": 1},
            )
            job.save(pipeline=pipe)
            pipe.zadd(registry.key, {job_id: expires + number})
        pipe.execute()
    return ids


def test_every_failed_job_is_listed_across_pages_and_a_job_gone_meanwhile_is_left_out(redis: Redis) -> None:
    ids = fail_jobs(redis, 2 * PAGE + 3)
    redis.delete(f"rq:job:{ids[PAGE]}")  # retried and done, or expired, after the ids were read

    listed = [row.job_id for row in FailedJobs(redis, ["osma-router"])]

    assert listed == ids[:PAGE] + ids[PAGE + 1 :]


def test_failed_list_limit_shows_the_oldest_rows_and_how_many_more(
    start_receiver, redis: Redis, redis_server: RedisServer
) -> None:
    receiver = start_receiver(FAILS)
    redis.set("test:broken", "1")
    for number in range(3):
        assert receiver.post(make_event(event_id=f"evt_limit_{number}")).status_code == 202
    receiver.drain()
    env = env_for(redis_server.url, receiver.settings.config_path)

    everything = osma_router(["failed", "list"], env)
    limited = osma_router(["failed", "list", "--limit", "2"], env)
    refused = osma_router(["failed", "list", "--limit", "0"], env)

    assert everything.returncode == 0, everything.stderr
    rows = [line for line in everything.stdout.splitlines() if "evt_limit_" in line]
    assert len(rows) == 3 and "... " not in everything.stdout
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.splitlines()[1:] == [*rows[:2], "... 1 more (--limit 2; oldest first)"]
    assert refused.returncode == 2 and "a positive whole number, not '0'" in refused.stderr
