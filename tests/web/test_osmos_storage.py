"""What an Osmos batch costs Redis and what it leaves, over real HTTP and a real Redis: the
growth bound (2 × body + 100 bytes a record, plain and encrypted), the Redis budget for
batches (a batch over it is refused, webhooks are not), repeated rows, a failing record
leaving its chunk as a job of its own (`failed list` / `failed retry`), and Redis back
to its baseline, apart from dedup marks, once the jobs ran."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from redis import Redis
from rq.registry import FailedJobRegistry

from receiver.crypto import Sealer
from receiver.settings import Secret
from tests.osmos_support import marks, queued_jobs, queued_records
from tests.support import env_for, handled, make_event, osma_router

TOKEN = "osmos-storage-token-1234"
HEADERS = {"authorization": TOKEN, "content-type": "application/json"}
CONNECTORS = """
[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "name", type = "string", nullable = false },
  { name = "email", type = "string", nullable = true },
  { name = "visits", type = "integer", nullable = true },
  { name = "score", type = "number", nullable = false },
]

[connectors.rows]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.rows.record"
fields = [{ name = "code", type = "string" }]
"""
RECORD_ROUTE = '[[routes]]\non = "osmos.*"\nhandler = "sample.record"\nlabel = "all"\n'
BROKEN_ROUTE = (
    '[[routes]]\non = "osmos.crm.record"\nwhere = { customer_id = "cus_00000001" }\n'
    'handler = "sample.broken"\nretries = 0\n'
)


@pytest.fixture
def osmos(start_receiver, monkeypatch):
    monkeypatch.setenv("CRM_OSMOS_TOKEN", TOKEN)

    def start(routes: str = RECORD_ROUTE + CONNECTORS, **env: str) -> Any:
        return start_receiver(routes, **env)

    return start


def customers(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Records like the issue's measurement: five fields, about 130 bytes each."""
    return [
        {
            "customer_id": f"cus_{i:08d}",
            "name": f"Customer number {i}",
            "email": f"customer{i}@example.com",
            "visits": i % 500,
            "score": round(i / 7, 3),
        }
        for i in range(start, start + n)
    ]


def post(receiver: Any, body: bytes, connector: str = "crm") -> Any:
    return receiver.http.post(f"/ingest/osmos/{connector}", content=body, headers=HEADERS, timeout=120)


def used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def row_id(record: dict[str, Any], occurrence: int = 1) -> str:
    """docs/osmos.md: without `key`, the n-th identical row of a batch takes C from the
    canonical JSON followed by `#n` (standard library only)."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return f"osmos_rows_{h(canonical if occurrence == 1 else canonical + b'#%d' % occurrence)}"


# -- the growth bound ---------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("encoding", ["listpack", "hashtable"])
def test_a_batch_grows_redis_by_at_most_twice_its_body_and_100_bytes_a_record(
    osmos, redis, encrypted, encoding
):
    env = {"OSMA_ROUTER_ENCRYPTION_KEYS": Fernet.generate_key().decode()} if encrypted else {}
    receiver = osmos(**env)
    listpack_entries = redis.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"]
    if encoding == "hashtable":  # what marks cost once a window holds many records (the worst case)
        redis.config_set("hash-max-listpack-entries", "0")
    try:
        records = customers(20_000)
        body = orjson.dumps(records)
        assert post(receiver, b"[]").status_code == 202
        before = used_memory(redis)
        assert post(receiver, body).status_code == 202
        growth = used_memory(redis) - before
    finally:
        redis.config_set("hash-max-listpack-entries", listpack_entries)
    bound = 2 * len(body) + 100 * len(records)
    assert growth <= bound, (
        f"{growth:,} bytes for {len(records):,} records ({growth / len(records):.0f} a record)"
    )
    assert len(queued_records(redis, sealer=None if not encrypted else _sealer(env))) == len(records)


def _sealer(env: dict[str, str]) -> Sealer:
    return Sealer([Secret(env["OSMA_ROUTER_ENCRYPTION_KEYS"])])


def test_once_the_jobs_ran_only_the_dedup_marks_are_left(osmos, redis):
    receiver = osmos()
    assert post(receiver, b"[]").status_code == 202
    records = customers(3_000)
    assert post(receiver, orjson.dumps(records)).status_code == 202
    assert len(queued_jobs(redis)) == 3
    receiver.drain()
    assert len(handled(redis)) == 3_000
    assert not list(redis.scan_iter("osma_router:osmos:chunk:*"))
    assert not list(redis.scan_iter("rq:job:*"))
    assert len(marks(redis, "crm")) == 3_000


# -- the budget ---------------------------------------------------------------------------


def test_a_batch_over_the_budget_gets_503_with_retry_after_and_webhooks_still_get_202(osmos, redis):
    first, second = orjson.dumps(customers(10_000)), orjson.dumps(customers(10_000, start=10_000))
    bound = 2 * len(first) + 100 * 10_000
    budget = used_memory(redis) + bound + 200_000  # room for the first batch, not for two
    receiver = osmos(RECORD_ROUTE + CONNECTORS + _webhook_route(), OSMA_ROUTER_OSMOS_REDIS_BUDGET=str(budget))
    assert post(receiver, first).status_code == 202
    held = sorted(marks(redis, "crm"))
    redis.config_set("maxmemory", str(budget + 1_000_000))  # Redis itself close to full
    try:
        refused = post(receiver, second)
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "unavailable"
        assert int(refused.headers["retry-after"]) > 0
        assert sorted(marks(redis, "crm")) == held and len(queued_jobs(redis)) == 10  # nothing of it stored
        webhook = receiver.post(make_event(event_id="evt_still_welcome"))
        assert webhook.status_code == 202, webhook.text
    finally:
        redis.config_set("maxmemory", "0")
    assert post(receiver, second[: second.index(b"},{") + 1] + b"]").status_code == 202  # a smaller part fits


def _webhook_route() -> str:
    return '[[routes]]\non = "task.completed"\nhandler = "sample.record"\nlabel = "webhook"\n'


# -- repeated rows ------------------------------------------------------------------------


def test_without_a_key_repeated_rows_are_rows_of_their_own(osmos, redis):
    receiver = osmos()
    a, b = {"code": "A"}, {"code": "B"}
    body = orjson.dumps([a, a, b, a])
    response = post(receiver, body, "rows")
    assert response.status_code == 202 and response.json() == {"status": "accepted", "records": 4}
    expected = [row_id(a), row_id(a, 2), row_id(b), row_id(a, 3)]
    assert [r.event_id for r in queued_records(redis)] == expected
    assert post(receiver, body, "rows").status_code == 202  # the same batch again: all duplicates
    assert len(queued_records(redis)) == 4
    receiver.drain()
    assert sorted(handled(redis)) == sorted(f"{i}|sample.record|all|1" for i in expected)


def test_with_a_key_an_identical_row_is_one_record_and_a_changed_one_a_new_event(osmos, redis):
    receiver = osmos()
    record = customers(1)[0]
    changed = dict(record, visits=999)
    response = post(receiver, orjson.dumps([record, record, changed, dict(record)]))
    assert response.status_code == 202 and response.json()["records"] == 4
    ids = [r.event_id for r in queued_records(redis)]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert ids[0].split("_")[2] == ids[1].split("_")[2]  # one key, two versions


# -- a failing record ---------------------------------------------------------------------


def test_a_failing_record_leaves_its_chunk_and_failed_list_and_retry_name_it_alone(
    osmos, redis, redis_server, tmp_path: Path
):
    routes = RECORD_ROUTE + BROKEN_ROUTE + CONNECTORS
    receiver = osmos(routes)
    records = customers(3)
    assert post(receiver, orjson.dumps(records)).status_code == 202
    redis.set("test:broken", "1")
    receiver.drain()
    (record_id,) = {r.split("|")[0] for r in handled(redis) if "|sample.broken|" in r}
    assert record_id.startswith("osmos_crm_")
    assert len([r for r in handled(redis) if "|sample.record|" in r]) == 3  # the others ran
    (job_id,) = FailedJobRegistry("osma-router", connection=redis).get_job_ids()
    assert job_id.startswith(f"osmos_e-{record_id}_")

    env = env_for(redis_server.url, tmp_path / "routes.toml", CRM_OSMOS_TOKEN=TOKEN)
    (tmp_path / "routes.toml").write_text(routes)
    listed = osma_router(["failed", "list"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if job_id in line]
    assert record_id in row and "sample.broken" in row and "HandlerError" in row

    redis.delete("test:broken")
    before = handled(redis)
    retried = osma_router(["failed", "retry", job_id], env, tmp_path)
    assert retried.returncode == 0, retried.stderr
    receiver.drain()
    assert handled(redis)[len(before) :] == [f"{record_id}|sample.broken|attempt|2"]  # that record alone
    assert FailedJobRegistry("osma-router", connection=redis).count == 0
    assert not list(redis.scan_iter("osma_router:osmos:chunk:*"))


def test_a_failing_record_is_retried_on_its_own_with_the_routes_policy(osmos, redis):
    routes = (
        '[[routes]]\non = "osmos.crm.record"\nhandler = "sample.flaky"\nsucceed_on = 2\n'
        "retries = 2\nbackoff = [0]\n" + CONNECTORS
    )
    receiver = osmos(routes)
    records = customers(2)
    assert post(receiver, orjson.dumps(records)).status_code == 202
    receiver.drain()
    runs = handled(redis)
    ids = sorted({run.split("|")[0] for run in runs})
    assert len(ids) == 2
    for event_id in ids:  # each record: attempt 1 in the chunk, attempt 2 as a job of its own
        assert [run for run in runs if run.startswith(event_id)] == [
            f"{event_id}|sample.flaky|attempt|1",
            f"{event_id}|sample.flaky|attempt|2",
        ]
    assert FailedJobRegistry("osma-router", connection=redis).count == 0
    assert not list(redis.scan_iter("osma_router:osmos:chunk:*"))
