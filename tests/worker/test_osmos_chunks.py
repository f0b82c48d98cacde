"""receiver/worker/osmos.py with a real Redis and a real burst worker: a chunk's blob goes
with the last of its jobs (a job run twice lets go once), an interrupted chunk job resumes
where it got to, and a chunk job that fails as a whole shows in `failed list` and keeps its
records for `failed retry`."""

from __future__ import annotations

import signal
import time
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from redis import Redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from receiver.model.routes import job_id_head
from receiver.settings import Settings
from receiver.store.failed import FailedJobs
from receiver.worker.execution import WorkerRuntime
from receiver.worker.osmos import execute_chunk
from receiver.worker.runner import run_worker
from tests.osmos_support import CRM_CONNECTOR, job_spec, queued_jobs, queued_records
from tests.support import env_for, handled, osma_router

TOKEN = "osmos-worker-token-1234"
ROUTES = (
    """
[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
label = "a"

[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
label = "b"
"""
    + CRM_CONNECTOR
)
HEADERS = {"authorization": TOKEN, "content-type": "application/json"}


@pytest.fixture
def receiver(start_receiver, monkeypatch):
    monkeypatch.setenv("CRM_OSMOS_TOKEN", TOKEN)

    def start(**env: str) -> Any:
        return start_receiver(ROUTES, **env)

    return start


def post(receiver: Any, count: int) -> None:
    body = orjson.dumps([{"customer_id": f"cus_{i}"} for i in range(count)])
    assert receiver.http.post("/ingest/osmos/crm", content=body, headers=HEADERS).status_code == 202


def runtime(receiver: Any, redis_server: Any, **env: str) -> WorkerRuntime:
    settings = Settings.from_env(
        env_for(redis_server.url, receiver.settings.config_path, CRM_OSMOS_TOKEN=TOKEN, **env), env_file=None
    )
    return WorkerRuntime.build(settings, Redis.from_url(redis_server.url))


def test_the_chunk_goes_with_the_last_job_that_reads_it(receiver, redis, redis_server):
    live = receiver()
    post(live, 3)
    jobs = queued_jobs(redis)
    assert len(jobs) == 2  # one chunk, two routes
    chunk = job_spec(redis, jobs[0])["chunk"]
    worker = runtime(live, redis_server)
    execute_chunk(job_spec(redis, jobs[0]), worker)
    execute_chunk(job_spec(redis, jobs[0]), worker)  # run twice (RQ ran it again meanwhile)
    assert redis.exists(chunk)  # still read by the other route's job
    execute_chunk(job_spec(redis, jobs[1]), worker)
    assert not redis.exists(chunk)
    assert sorted(entry.split("|")[2] for entry in handled(redis)) == ["a"] * 6 + ["b"] * 3


def test_an_interrupted_chunk_job_resumes_where_it_got_to(receiver, redis, redis_server):
    live = receiver()
    post(live, 5)
    first = queued_jobs(redis)[0]
    job = Job.fetch(first, connection=redis, serializer=JSONSerializer)
    job.meta["done"] = 3  # what a run that was stopped after three records noted
    job.save_meta()
    live.drain()
    runs = handled(redis)
    assert len([entry for entry in runs if "|a|" in entry]) == 2  # records 4 and 5 only
    assert len([entry for entry in runs if "|b|" in entry]) == 5


def test_a_chunk_job_that_cannot_read_its_records_fails_whole_and_runs_after_failed_retry(
    receiver, redis, redis_server
):
    key = Fernet.generate_key().decode()
    live = receiver(OSMA_ROUTER_ENCRYPTION_KEYS=key)
    post(live, 3)
    chunk = job_spec(redis, queued_jobs(redis)[0])["chunk"]
    run_worker(runtime(live, redis_server), ["osma-router"], burst=True)  # a worker without the key
    failed = list(FailedJobs(redis, ["osma-router"]))
    assert len(failed) == 2 and handled(redis) == []
    assert {row.event_id for row in failed} == {"(3 Osmos records)"}
    assert {row.handler for row in failed} == {"sample.record"}
    assert all("OSMA_ROUTER_ENCRYPTION_KEYS" in row.last_error for row in failed)
    assert 0 < redis.ttl(chunk)  # kept as long as the failed jobs are
    assert FailedJobs(redis, ["osma-router"]).retry_all() == 2
    run_worker(runtime(live, redis_server, OSMA_ROUTER_ENCRYPTION_KEYS=key), ["osma-router"], burst=True)
    assert len(handled(redis)) == 6
    assert FailedJobRegistry("osma-router", connection=redis).count == 0 and not redis.exists(chunk)


def test_a_record_whose_job_was_only_half_written_still_leaves_its_chunk(
    start_receiver, monkeypatch, redis, redis_server
):
    """A worker that died after noting a failing record's error in its job's meta, before
    the job itself was saved, left a job hash with a meta and nothing else: the chunk's next
    run must still make that record a job (one RQ holds), not take it for one already made."""
    monkeypatch.setenv("CRM_OSMOS_TOKEN", TOKEN)
    routes = ROUTES.split("[[routes]]")[0] + '[[routes]]\non = "osmos.crm.record"\nhandler = "sample.leaky"\n'
    live = start_receiver(routes + "retries = 0\n" + ROUTES[ROUTES.index("[connectors.crm]") :])
    post(live, 1)
    [record] = queued_records(redis)
    redis.hset(f"rq:job:{job_id_head('osmos', record.event_id)}{record.route}", "meta", '{"attempts": 1}')

    run_worker(runtime(live, redis_server), ["osma-router"], burst=True)

    [failed] = list(FailedJobs(redis, ["osma-router"]))
    assert failed.event_id == record.event_id and failed.handler == "sample.leaky"


def test_a_chunk_job_run_again_after_it_let_go_of_its_chunk_ends_as_done(
    start_receiver, monkeypatch, redis, redis_server
):
    """The worker dies after the chunk's last job let go of it (the blob is gone) and before
    RQ recorded the job as finished. Once its heartbeat is stale the job runs again: it must
    end as done, not fail because its records are no longer in Redis, and run none of them
    again."""
    monkeypatch.setenv("CRM_OSMOS_TOKEN", TOKEN)
    one_route = ROUTES.split("[[routes]]")[1].replace('label = "a"\n', "")
    live = start_receiver("[[routes]]" + one_route + ROUTES[ROUTES.index("[connectors.crm]") :])
    post(live, 3)
    [job_id] = queued_jobs(redis)
    chunk = job_spec(redis, job_id)["chunk"]
    job_key = f"rq:job:{job_id}"
    redis.hset(job_key, "success_callback_name", "tests.support.kill_this_process")
    env = env_for(redis_server.url, live.settings.config_path, CRM_OSMOS_TOKEN=TOKEN)

    killed = osma_router(["worker", "--burst"], env)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not redis.exists(chunk) and len(handled(redis)) == 3
    redis.hdel(job_key, "success_callback_name")
    # As if the minute RQ gives a returned job to finish had passed: its execution is stale.
    for registry in ("rq:wip:osma-router", f"rq:executions:{job_id}"):
        redis.zadd(registry, dict.fromkeys(redis.zrange(registry, 0, -1), 0), xx=True)
    deadline = time.monotonic() + 30
    while redis.exists(job_key) and redis.hget(job_key, "status") != b"failed":
        assert time.monotonic() < deadline, f"the job did not end: {redis.hget(job_key, 'status')!r}"
        redis.zadd("rq:scheduled:osma-router", {job_id: 0}, xx=True)  # its retry's backoff: over
        run_worker(runtime(live, redis_server), ["osma-router"], burst=True)
    failed = list(FailedJobs(redis, ["osma-router"]))
    assert failed == [], [row.last_error for row in failed]
    assert not redis.exists(job_key)  # done (RQ keeps no results)
    assert len(handled(redis)) == 3
