"""With `OSMA_ROUTER_ENCRYPTION_KEYS` set, no member data is readable in Redis, whatever
path an event takes: accepted, run, failed, retried (by its policy and from the failed
registry), captured, replayed (over HTTP and onto the queue), an Osmos batch whose record
fails, and, for what was stored
before encryption was turned on, rekeyed. After each step every key and every value
(strings, hashes, lists, sets, sorted sets, streams; decompressed and base64-decoded the
ways RQ stores them) is searched for a member's name that sits in the event bodies and in
a handler's exception message."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet
from redis import Redis
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from tests.at_rest_support import plaintext_hits
from tests.support import SECRET, env_for, handled, make_event, osma_router

KEY = Fernet.generate_key().decode()
TOKEN = "osmos-at-rest-token-1234"
FIRST, LAST = "Wilhelmina", "Throgmorton"
NAME = f"{FIRST} {LAST}"
WORDS = [NAME.encode(), FIRST.encode(), LAST.encode()]
MEMBER = {"id": "mem_rest", "object": "member", "first_name": FIRST, "last_name": LAST}
TASK = {"id": "tsk_rest", "object": "task", "name": NAME}  # `sample.leaky` raises with it
ROUTES = """
[[routes]]
on = "member.*"
handler = "sample.record"
label = "member"

[[routes]]
on = "task.completed"
handler = "sample.leaky"
retries = 0

[[routes]]
on = "task.updated"
handler = "sample.leaky"
succeed_on = 2
retries = 1
backoff = [1]

[[routes]]
on = "osmos.crm.record"
handler = "sample.leaky"
retries = 0

[connectors.crm]
header = "Authorization"
token = "env:REST_OSMOS_TOKEN"
event_type = "osmos.crm.record"
fields = [{ name = "name", type = "string", nullable = false }]
"""


def assert_nothing_in_clear(redis: Redis, after: str) -> None:
    hits = plaintext_hits(redis, WORDS)
    assert hits == [], f"after {after}, member data in clear: {hits}"


def wait_for_scheduled(redis: Redis) -> None:
    registry = ScheduledJobRegistry("osma-router", connection=redis, serializer=JSONSerializer)
    due = [registry.get_scheduled_time(job_id).timestamp() for job_id in registry.get_job_ids()]
    if due:
        time.sleep(max(0.0, max(due) - time.time()) + 0.2)


def test_no_member_data_in_clear_in_redis_after_any_path(
    start_receiver, redis, redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("REST_OSMOS_TOKEN", TOKEN)
    routes = write_routes(tmp_path)
    keyed = env_for(redis_server.url, routes, OSMA_ROUTER_ENCRYPTION_KEYS=KEY, REST_OSMOS_TOKEN=TOKEN)
    receiver = start_receiver(ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=KEY, OSMA_ROUTER_CAPTURE="on")
    member = make_event("member.created", event_id="evt_rest_member", obj=MEMBER)
    failing = make_event("task.completed", event_id="evt_rest_fails", obj=TASK)
    retried = make_event("task.updated", event_id="evt_rest_retried", obj=TASK)
    for body in (member, failing, retried):
        assert receiver.post(body).status_code == 202
    assert receiver.post(member).status_code == 200  # a duplicate, captured as one
    assert_nothing_in_clear(redis, "accepted deliveries, captured, a duplicate")

    receiver.drain()
    assert "evt_rest_member|sample.record|member|1" in handled(redis)
    assert redis.zcard("rq:failed:osma-router") == 1 and redis.zcard("rq:scheduled:osma-router") == 1
    assert_nothing_in_clear(redis, "a job succeeded, one failed, one waits for its retry")

    wait_for_scheduled(redis)
    receiver.drain()
    assert "evt_rest_retried|sample.leaky|attempt|2" in handled(redis)
    assert_nothing_in_clear(redis, "the retry succeeded")

    retry = osma_router(["failed", "retry", "--all"], keyed)
    assert retry.returncode == 0, retry.stderr
    receiver.drain()
    assert "evt_rest_fails|sample.leaky|attempt|2" in handled(redis)
    assert redis.zcard("rq:failed:osma-router") == 1
    assert_nothing_in_clear(redis, "a failed job retried from the failed registry failed again")

    batch = orjson.dumps([{"name": NAME}, {"name": "Someone Else"}])
    headers = {"authorization": TOKEN, "content-type": "application/json"}
    assert receiver.http.post("/ingest/osmos/crm", content=batch, headers=headers).status_code == 202
    assert_nothing_in_clear(redis, "an Osmos batch was stored")
    receiver.drain()
    assert redis.zcard("rq:failed:osma-router") == 3  # its two records failed, each a job of its own
    assert_nothing_in_clear(redis, "an Osmos batch's records failed")

    capture = tmp_path / "capture.jsonl"
    export = osma_router(["capture", "export", str(capture)], keyed)
    assert export.returncode == 0, export.stderr
    assert NAME.encode() in capture.read_bytes()  # decrypted on the way out, as asked
    over_http = osma_router(["replay", str(capture), "--to", receiver.url, "--secret", SECRET], keyed)
    assert over_http.returncode == 0, over_http.stderr + over_http.stdout
    assert_nothing_in_clear(redis, "a replay over HTTP (duplicates, captured)")
    direct = osma_router(["replay", str(capture), "--direct", "--force"], keyed)
    assert direct.returncode == 0, direct.stderr + direct.stdout
    assert_nothing_in_clear(redis, "a forced replay onto the queue")
    receiver.drain()
    wait_for_scheduled(redis)
    receiver.drain()
    assert_nothing_in_clear(redis, "the replayed jobs ran, failed and were retried")

    before_keys = start_receiver(ROUTES)  # as it was before encryption was turned on
    assert (
        before_keys.post(make_event("task.completed", event_id="evt_rest_old_fail", obj=TASK)).status_code
        == 202
    )
    before_keys.drain()  # failed, its message and traceback kept in clear
    assert (
        before_keys.post(make_event("member.updated", event_id="evt_rest_old", obj=MEMBER)).status_code == 202
    )
    assert plaintext_hits(redis, WORDS)  # the test would prove nothing otherwise

    rekey = osma_router(["rekey"], keyed)
    assert rekey.returncode == 0, rekey.stderr
    lines = dict(line.split(": ", 1) for line in rekey.stdout.splitlines())
    assert "2 found in clear, 2 sealed" in lines["job payloads"]  # the queued one, the failed one
    assert "1 found in clear, 1 sealed" in lines["failure messages"]
    assert_nothing_in_clear(redis, "rekey")
    receiver.drain()
    assert "evt_rest_old|sample.record|member|1" in handled(redis)
    shown = osma_router(["failed", "list"], keyed)
    assert f"ValueError: cannot file the visit of {NAME}" in shown.stdout  # still readable with the key
    assert_nothing_in_clear(redis, "the rekeyed job ran")


def write_routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes-cli.toml"
    path.write_text(ROUTES)
    return path
