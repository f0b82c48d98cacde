"""Nothing the service writes to Redis grows without bound. A representative flow runs
(webhooks accepted and captured, a duplicate, a job that succeeds, one that fails, one
retried, a coalesced KPI measurement flushed, an OGSM action kept in step with its task,
an Osmos batch), then every key in Redis must either expire (a TTL) or be one of the
bounded kinds listed below, and every key must match a row of the key table in
docs/operations.md ("Keys in Redis")."""

from __future__ import annotations

import fnmatch
import re
import time
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet
from redis import Redis
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from receiver.testing import task_event

ROOT = Path(__file__).resolve().parents[2]
KEY = Fernet.generate_key().decode()
TOKEN = "osmos-ttl-token-1234"
QUEUE = "osma-router"
ROUTES = """
[[routes]]
on = "member.*"
handler = "sample.record"
label = "member"

[[routes]]
on = "task.completed"
where = { template = "fails" }
handler = "sample.leaky"
retries = 0

[[routes]]
on = "task.completed"
where = { template = "flaky" }
handler = "sample.flaky"
succeed_on = 2
retries = 1
backoff = [1]

[[routes]]
on = "task.completed"
where = { template = "bp" }
handler = "ogsm.indicator_report"
indicator_id = 456
value = "count"
period = "month"
coalesce = 1

[[routes]]
on = "task.*"
where = { template = "call" }
handler = "ogsm.action"
strategy_ids = [7]

[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
label = "crm"

[connectors.crm]
header = "Authorization"
token = "env:TTL_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [{ name = "customer_id", type = "string", nullable = false }]
"""

# Keys that may live without a TTL, and why each is bounded (docs/operations.md says the same).
BOUNDED = {
    "rq:queues": "the names of the queues",
    "rq:queue:*": "a queue's backlog: every entry is a job that must still run",
    "rq:scheduled:*": "retries waiting: one entry per live job",
    "rq:wip:*": "jobs running now, cleaned by RQ's maintenance",
    "rq:failed:*": "entries scored by their expiry, removed by RQ's maintenance",
    "rq:finished:*": "as above",
    "rq:deferred:*": "as above",
    "rq:canceled:*": "as above",
    "rq:workers": "live workers, removed when a worker stops or its heartbeat lapses",
    "rq:workers:*": "as above",
    "osma_router:metrics:jobs": "a counter hash: one field per handler and outcome",
    "osma_router:metrics:upstream": "a counter hash: one field per upstream and status",
    "osma_router:metrics:rate_limit_waits": "a counter hash: two fields per upstream",
    "osma_router:osmos:inflight": "the batches being stored right now",
    "osma_router:osmos:reserved": "one field per batch being stored",
    "osma_router:osmos:holder:*": "one per configured connector",
    "osma_router:osmos:chunk:*:*": "a stored batch's records while its jobs still have to run",
    "osma_router:recent": "capped by count",
}
NOT_THE_SERVICES = ("test:*",)  # the sample plugin's own records


def live_job(redis: Redis, key: bytes) -> bool:
    """A job hash without a TTL is fine while the job still has to run."""
    status = redis.hget(key, "status")
    return status in (b"queued", b"scheduled", b"started", b"deferred")


def key_table() -> dict[str, str]:
    """docs/operations.md's key table: pattern (`<name>` parts match anything) -> the rest of its row."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Keys in Redis", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for first, rest in re.findall(r"^\| (`[^|]+`) \|(.*)$", section, re.MULTILINE):
        for name in re.findall(r"`([^`]+)`", first):
            rows[re.sub(r"<[^>]+>", "*", name)] = rest
    assert rows, "docs/operations.md has no key table"
    return rows


def wait_for_scheduled(redis: Redis) -> None:
    registry = ScheduledJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    due = [registry.get_scheduled_time(job_id).timestamp() for job_id in registry.get_job_ids()]
    if due:
        time.sleep(max(0.0, max(due) - time.time()) + 0.3)


@pytest.fixture
def osma_router_routes() -> str:
    return ROUTES


@pytest.fixture
def osma_router_env(osma_router_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("TTL_OSMOS_TOKEN", TOKEN)
    return {**osma_router_env, "OSMA_ROUTER_CAPTURE": "on", "OSMA_ROUTER_ENCRYPTION_KEYS": KEY}


def run_flow(osma_router, fake_osma, fake_ogsm, redis: Redis) -> None:
    fake_ogsm.add_indicator(id=456)
    fake_ogsm.add_strategy(id=7)
    member = task_event("member.created", {"id": "mem_ttl", "object": "member"}, event_id="evt_ttl_member")
    task = fake_osma.add_task(template="call", description="Call back")
    for event in (
        member,
        member,  # a duplicate, captured as one
        task_event("task.completed", {"id": "tsk_f", "template": "fails"}),
        task_event("task.completed", {"id": "tsk_r", "template": "flaky"}),
        task_event("task.completed", {"id": "tsk_b1", "template": "bp"}),
        task_event("task.completed", {"id": "tsk_b2", "template": "bp"}),
        task_event("task.created", {**task, "updated_at": "2026-11-20T10:00:00+00:00"}),
    ):
        assert osma_router.post(event).status_code in (200, 202)
    batch = osma_router.http.post(
        "/ingest/osmos/crm",
        content=orjson.dumps([{"customer_id": "c1"}, {"customer_id": "c2"}]),
        headers={"authorization": TOKEN, "content-type": "application/json"},
    )
    assert batch.status_code == 202, batch.text
    osma_router.drain()
    wait_for_scheduled(redis)  # the flaky job's retry and the KPI's flush
    osma_router.drain()
    assert [r["current_value"] for r in fake_ogsm.indicator_reports(456)] == [2]
    assert len(fake_ogsm.actions()) == 1
    assert redis.zcard(f"rq:failed:{QUEUE}") == 1 and redis.zcard(f"rq:scheduled:{QUEUE}") == 0


def test_every_key_expires_or_is_bounded_and_is_documented(
    osma_router, fake_osma, fake_ogsm, osma_router_redis
):
    redis = osma_router_redis
    run_flow(osma_router, fake_osma, fake_ogsm, redis)
    patterns = list(key_table())
    unbounded, undocumented = [], []
    for raw in sorted(redis.scan_iter(count=1000)):
        key = raw.decode()
        if any(fnmatch.fnmatchcase(key, p) for p in NOT_THE_SERVICES):
            continue
        if not any(fnmatch.fnmatchcase(key, p) for p in patterns):
            undocumented.append(key)
        if redis.ttl(raw) >= 0:
            continue
        if key.startswith("rq:job:") and live_job(redis, raw):
            continue
        if not any(fnmatch.fnmatchcase(key, p) for p in BOUNDED):
            unbounded.append(f"{key} ({redis.type(raw).decode()})")
    assert unbounded == [], f"keys with no TTL and no bound: {unbounded}"
    assert undocumented == [], f"keys missing from docs/operations.md's key table: {undocumented}"


def test_the_bounded_kinds_are_documented_as_such():
    rows = key_table()
    for pattern in BOUNDED:
        assert pattern in rows, f"{pattern} is not a row of the key table"
        assert "no TTL" in rows[pattern], f"{pattern}: the table should say why it needs no TTL"


ACTION = '[[routes]]\nhandler = "ogsm.action"\nstrategy_ids = [7]\nwrite_back = false\n'


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_an_action_mapping_has_a_ttl_and_one_kept_by_an_earlier_release_moves(
    osma_router, fake_osma, fake_ogsm, osma_router_redis
):
    redis = osma_router_redis
    fake_ogsm.add_strategy(id=7)
    old, new = fake_osma.add_task(description="Old task"), fake_osma.add_task(description="New task")
    legacy = "osma_router:ogsm_action:ogsm_action_id"
    created = fake_ogsm.add_action(title="Old task", strategies=[{"id": 7}])
    redis.hset(legacy, old["id"], str(created["id"]))  # as an earlier release kept it
    for task, kind in ((new, "task.created"), (old, "task.completed")):
        event = task_event(kind, {**task, "updated_at": "2026-11-20T10:00:00+00:00"})
        assert osma_router.post(event).status_code == 202
    osma_router.drain()
    assert len(fake_ogsm.actions()) == 2  # the old task's action was found, not made again
    for task in (old, new):
        assert 0 < redis.ttl(f"{legacy}:{task['id']}") <= 400 * 24 * 3600
    assert redis.get(f"{legacy}:{old['id']}") == str(created["id"]).encode()
    assert not redis.exists(legacy)  # its last entry moved out
