"""`osma-router rekey` after encryption is turned on: job payloads stored in clear before
(queued, scheduled for a retry, failed) are sealed, counted, and still run; and after a
new key is put first, Osmos record chunks move to it, so the old key can go."""

from __future__ import annotations

import time

import orjson
from cryptography.fernet import Fernet
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from receiver.crypto import Sealer
from receiver.settings import Secret
from receiver.store.failed import FailedJobs
from tests.at_rest_support import plaintext_hits
from tests.support import env_for, handled, make_event, osma_router

KEY = Fernet.generate_key().decode()
NAME = b"Philomena Brackwater"
MEMBER = {"id": "tsk_rk", "object": "task", "member_name": NAME.decode()}
ROUTES = """
[[routes]]
on = "task.created"
handler = "sample.record"
label = "queued"

[[routes]]
on = "task.updated"
handler = "sample.flaky"
succeed_on = 2
retries = 1
backoff = [2]

[[routes]]
on = "task.deleted"
handler = "sample.broken"
retries = 0
"""


def test_rekey_seals_payloads_stored_in_clear_and_the_jobs_still_run(start_receiver, redis, redis_server):
    before = start_receiver(ROUTES)  # encryption not turned on yet
    redis.set("test:broken", "1")
    for kind in ("task.created", "task.updated", "task.deleted"):
        body = make_event(kind, event_id=f"evt_rk_{kind.split('.')[1]}", obj=MEMBER)
        assert before.post(body).json()["jobs"] == 1
    before.drain()  # created: succeeds; updated: fails once, retry scheduled; deleted: failed
    redis.delete("test:handled")
    before.post(make_event("task.created", event_id="evt_rk_queued", obj=MEMBER))  # stays queued
    scheduled = ScheduledJobRegistry("osma-router", connection=redis, serializer=JSONSerializer)
    assert scheduled.count == 1 and len(list(FailedJobs(redis, ["osma-router"]))) == 1
    assert plaintext_hits(redis, [NAME])  # three job hashes hold the body in clear

    rekey = osma_router(["rekey"], env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=KEY))
    assert rekey.returncode == 0, rekey.stderr
    assert "job payloads: 0 re-encrypted, 0 already under the newest key, 3 found in clear, 3 sealed" in (
        rekey.stdout
    )
    assert plaintext_hits(redis, [NAME]) == []

    again = osma_router(["rekey"], env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=KEY))
    assert "job payloads: 0 re-encrypted, 3 already under the newest key, 0 found in clear" in again.stdout

    after = start_receiver(ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    redis.delete("test:broken")
    FailedJobs(redis, ["osma-router"], Sealer([Secret(KEY)])).retry_all()
    time.sleep(
        max(0.0, scheduled.get_scheduled_time(scheduled.get_job_ids()[0]).timestamp() - time.time()) + 0.2
    )
    after.drain()
    assert sorted(handled(redis)) == [
        "evt_rk_deleted|sample.broken|attempt|2",
        "evt_rk_queued|sample.record|queued|1",
        "evt_rk_updated|sample.flaky|attempt|2",
    ]
    assert list(FailedJobs(redis, ["osma-router"])) == [] and scheduled.count == 0
    assert plaintext_hits(redis, [NAME]) == []


TOKEN = "osmos-rekey-token-1234"
OSMOS_ROUTES = """
[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
label = "crm"

[connectors.crm]
header = "Authorization"
token = "env:REKEY_OSMOS_TOKEN"
event_type = "osmos.crm.record"
fields = [{ name = "name", type = "string", nullable = false }]
"""


def test_rekey_moves_osmos_record_chunks_to_the_new_key(start_receiver, redis, redis_server, monkeypatch):
    monkeypatch.setenv("REKEY_OSMOS_TOKEN", TOKEN)
    old = start_receiver(OSMOS_ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=KEY)
    records = orjson.dumps([{"name": NAME.decode()}, {"name": "Someone Else"}])
    headers = {"authorization": TOKEN, "content-type": "application/json"}
    assert old.http.post("/ingest/osmos/crm", content=records, headers=headers).status_code == 202

    new_key = Fernet.generate_key().decode()
    rekey = osma_router(["rekey"], env_for(redis_server.url, OSMA_ROUTER_ENCRYPTION_KEYS=f"{new_key},{KEY}"))
    assert rekey.returncode == 0, rekey.stderr
    assert "Osmos record chunks: 1 re-encrypted, 0 already under the newest key, 0 found in clear" in (
        rekey.stdout
    )
    start_receiver(OSMOS_ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=new_key).drain()  # the old key is gone
    assert len([line for line in handled(redis) if "|sample.record|crm|1" in line]) == 2
    assert plaintext_hits(redis, [NAME]) == []
