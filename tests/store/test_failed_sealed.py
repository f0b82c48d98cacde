"""A failed run's exception text with encryption at rest on: a handler's message can hold
member data, so Redis keeps the exception type in clear and the message and traceback
sealed (job meta, RQ's exc_info and results); `failed list` / `failed show` open them."""

from __future__ import annotations

from cryptography.fernet import Fernet
from rq.job import Job
from rq.serializers import JSONSerializer

from receiver.crypto import Sealer
from receiver.settings import Secret
from receiver.store.failed import FailedJobs
from tests.at_rest_support import plaintext_hits
from tests.support import env_for, make_event, osma_router

KEY = Fernet.generate_key().decode()
NAME = "Ottoline Vandersnoot"
TASK = {"id": "tsk_fs", "object": "task", "name": NAME}
FAILS = '[[routes]]\non = "task.completed"\nhandler = "sample.leaky"\nretries = 0\n'
RETRIES = FAILS.replace("retries = 0", "succeed_on = 2\nretries = 1\nbackoff = [60]")
MESSAGE = f"ValueError: cannot file the visit of {NAME}"


def test_a_failed_jobs_message_is_sealed_and_failed_commands_open_it(start_receiver, redis, redis_server):
    receiver = start_receiver(FAILS, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    assert receiver.post(make_event(event_id="evt_fs", obj=TASK)).json()["jobs"] == 1
    receiver.drain()
    assert plaintext_hits(redis, [NAME.encode(), b"Vandersnoot"]) == []
    (row,) = list(FailedJobs(redis, ["osma-router"], Sealer([Secret(KEY)])))
    assert row.last_error == MESSAGE
    job = Job.fetch(row.job_id, connection=redis, serializer=JSONSerializer)
    assert job.meta["last_error"] == "ValueError"  # the type stays readable without the key
    assert (
        NAME not in (job.latest_result().exc_string or "") and "ValueError" in job.latest_result().exc_string
    )

    keyed = env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    listed = osma_router(["failed", "list"], keyed)
    assert listed.returncode == 0 and MESSAGE in listed.stdout, listed.stderr
    shown = osma_router(["failed", "show", row.job_id], keyed)
    assert shown.returncode == 0, shown.stderr
    assert MESSAGE in shown.stdout and "Traceback (most recent call last)" in shown.stdout

    keyless = osma_router(["failed", "list"], env_for(redis_server.url))
    assert keyless.returncode == 0, keyless.stderr
    assert "ValueError (message sealed" in keyless.stdout and NAME not in keyless.stdout


def test_a_retried_jobs_message_is_sealed_while_it_waits(start_receiver, redis):
    receiver = start_receiver(RETRIES, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    receiver.post(make_event(event_id="evt_fs_retry", obj=TASK))
    receiver.drain()  # the first attempt fails; its retry waits a minute, scheduled
    assert redis.zcard("rq:scheduled:osma-router") == 1
    assert plaintext_hits(redis, [NAME.encode(), b"Vandersnoot"]) == []


def test_without_keys_the_message_stays_readable_as_before(start_receiver, redis):
    receiver = start_receiver(FAILS)
    receiver.post(make_event(event_id="evt_fs_clear", obj=TASK))
    receiver.drain()
    (row,) = list(FailedJobs(redis, ["osma-router"]))
    assert row.last_error == MESSAGE
