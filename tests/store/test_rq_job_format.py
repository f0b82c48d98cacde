"""The admit scripts write RQ's job hashes themselves: receiver/store/enqueue.py builds each
route's fields with RQ's `Job.to_dict()`, and the Lua in dedup.py and batch_scripts.py adds
data, description and the times (an Osmos batch gets one job per chunk and route). That is
RQ's internal format, not its API: pyproject.toml pins RQ to the minor version the scripts
were written for, and these tests fail loudly when RQ's job hash changes, for a webhook and
for an Osmos batch alike."""

from __future__ import annotations

import orjson
import pytest
import rq
from redis import Redis
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.serializers import JSONSerializer

from receiver.store.enqueue import FAILURE_TTL, JOB_FUNCTION, RESULT_TTL
from receiver.store.osmos_chunks import CHUNK_JOB_FUNCTION
from tests.support import make_event

# Every field RQ 3.0's Queue.enqueue writes for a job with retries; without retries it leaves
# out retries_left and retry_intervals. The ones RQ fills with "" are left out by the scripts
# (RQ reads an absent field as empty); every other one is written with RQ's own value.
RQ_JOB_FIELDS = frozenset(
    {
        "created_at",
        "data",
        "description",
        "ended_at",
        "enqueued_at",
        "failure_callback_name",
        "failure_ttl",
        "group_id",
        "last_heartbeat",
        "origin",
        "result_ttl",
        "retries_left",
        "retry_intervals",
        "started_at",
        "status",
        "stopped_callback_name",
        "success_callback_name",
        "timeout",
        "worker_name",
    }
)
WHAT_TO_DO = (
    f"RQ {rq.__version__} writes job hashes differently from the RQ the admit scripts were written "
    "for. Do not just widen the rq pin in pyproject.toml: compare RQ's Job.to_dict() and "
    "Job.restore() with what receiver/store/enqueue.py, dedup.py and batch_scripts.py write, "
    "change the scripts, then update RQ_JOB_FIELDS here, the pin and the lock (make lock) together."
)
QUEUE = "osma-router"
TIMEOUT = 90
RETRIES = 3
INTERVALS = [5, 20, 80]
ROUTES = f"""
[[routes]]
on = "*"
handler = "noop"
timeout = {TIMEOUT}
retries = {RETRIES}
backoff = {INTERVALS}

[[routes]]
on = "*"
handler = "noop"
timeout = {TIMEOUT}
retries = 0

[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [{{ name = "customer_id", type = "string", nullable = false }}]
"""
TOKEN = "osmos-test-token-1234"


def rq_enqueued(redis: Redis, *, retries: bool) -> tuple[dict[str, bytes], Job]:
    """The hash RQ itself writes for a job like a route's, through its public API."""
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    job_id = f"rq_reference_{int(retries)}"
    job = queue.enqueue(
        JOB_FUNCTION,
        None,
        job_id=job_id,
        job_timeout=TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=RETRIES, interval=INTERVALS) if retries else None,
        description="reference",
    )
    fields = {name.decode(): value for name, value in redis.hgetall(f"rq:job:{job_id}").items()}
    redis.delete(f"rq:job:{job_id}")
    redis.lrem(f"rq:queue:{QUEUE}", 0, job_id)
    return fields, job


def admitted_jobs(redis: Redis) -> list[tuple[str, dict[str, bytes]]]:
    jobs = []
    for job_id in redis.lrange(f"rq:queue:{QUEUE}", 0, -1):
        fields = redis.hgetall(b"rq:job:" + job_id)
        jobs.append((job_id.decode(), {name.decode(): value for name, value in fields.items()}))
    return jobs


def test_rq_writes_the_job_fields_the_admit_scripts_were_written_for(redis):
    fields, _ = rq_enqueued(redis, retries=True)
    assert set(fields) == RQ_JOB_FIELDS, (
        f"{WHAT_TO_DO} New fields: {sorted(set(fields) - RQ_JOB_FIELDS)}; "
        f"gone: {sorted(RQ_JOB_FIELDS - set(fields))}"
    )
    without_retries, _ = rq_enqueued(redis, retries=False)
    assert set(without_retries) == RQ_JOB_FIELDS - {"retries_left", "retry_intervals"}, WHAT_TO_DO


@pytest.mark.parametrize("source", ["webhook", "osmos"])
def test_admitted_jobs_carry_exactly_the_fields_rq_fills_and_rq_reads_them(
    source, start_receiver, redis, monkeypatch
):
    monkeypatch.setenv("CRM_OSMOS_TOKEN", TOKEN)
    receiver = start_receiver(ROUTES)
    function = {"webhook": JOB_FUNCTION, "osmos": CHUNK_JOB_FUNCTION}[source]
    if source == "webhook":
        answer = receiver.post(make_event(event_id="evt_rq_format"))
    else:
        answer = receiver.http.post(
            "/ingest/osmos/crm",
            content=orjson.dumps([{"customer_id": "cus_1"}]),
            headers={"authorization": TOKEN, "content-type": "application/json"},
        )
    assert answer.status_code == 202, answer.text
    jobs = admitted_jobs(redis)
    assert len(jobs) == 2
    for job_id, ours in jobs:
        retries = ours.get("retries_left") is not None
        theirs, reference = rq_enqueued(redis, retries=retries)
        filled = {name for name, value in theirs.items() if value != b""}
        assert set(ours) == filled, (
            f"{WHAT_TO_DO} Fields RQ fills that the scripts do not write: {sorted(filled - set(ours))}; "
            f"fields the scripts write that RQ does not: {sorted(set(ours) - filled)}"
        )
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        assert (job.func_name, job.origin, job.get_status()) == (function, QUEUE, JobStatus.QUEUED), (
            WHAT_TO_DO
        )
        # Read back as RQ's own types (an Osmos chunk job runs without RQ's time limit, -1).
        numbers = (job.timeout, job.result_ttl, job.failure_ttl)
        assert all(isinstance(n, int) for n in numbers), (WHAT_TO_DO, numbers)
        if source == "webhook":
            assert numbers == (TIMEOUT, RESULT_TTL, FAILURE_TTL), WHAT_TO_DO
        assert (job.retries_left, job.retry_intervals) == (reference.retries_left, reference.retry_intervals)
        assert job.created_at is not None and job.enqueued_at is not None, WHAT_TO_DO
        assert len(job.args) == 1 and job.args[0]["route"]["handler"] == "noop", WHAT_TO_DO
