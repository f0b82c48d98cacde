"""POST /ingest/osmos/{connector} over real HTTP, against a real Redis: answers, schema,
all-or-nothing storage, dedup of re-sent batches, event ids, and a 250k-record batch
through a real `osma-router serve`."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis import Redis

from receiver.crypto import Sealer
from receiver.settings import Secret
from receiver.store.server import RedisServer
from tests.osmos_support import (
    batch_leftovers,
    job_spec,
    marked_ids,
    marks,
    nothing_stored,
    queued_jobs,
    queued_records,
)
from tests.support import env_for, handled, osma_router
from tests.web.osmos_server import start_osmos_server

TOKEN = "osmos-test-token-1234"
CONNECTORS = """
[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "visits", type = "integer", nullable = true },
  { name = "score", type = "number", nullable = true },
  { name = "active", type = "boolean", nullable = true },
  { name = "birthday", type = "date", nullable = true },
  { name = "seen_at", type = "datetime", nullable = true },
]

[connectors.strict]
header = "X-Osmos-Key"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.strict.record"
extra = "reject"
fields = [{ name = "code", type = "string" }]
"""
ROUTES = (
    """
[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
label = "crm"
"""
    + CONNECTORS
)
HEADERS = {"authorization": TOKEN, "content-type": "application/json"}


@pytest.fixture
def osmos(start_receiver, monkeypatch):
    """A live receiver with the connectors above; `osmos(routes=...)` for other routes."""
    monkeypatch.setenv("CRM_OSMOS_TOKEN", TOKEN)

    def start(routes: str = ROUTES, **env: str) -> Any:
        return start_receiver(routes, **env)

    return start


def post(
    receiver: Any, payload: Any, connector: str = "crm", headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    body = payload if isinstance(payload, (bytes, bytearray)) else orjson.dumps(payload)
    return receiver.http.post(
        f"/ingest/osmos/{connector}", content=body, headers=HEADERS if headers is None else headers, **kw
    )


def queued(redis: Redis) -> list[str]:
    """The event id of every record queued, once per matching route (records are queued in
    chunk jobs: tests/osmos_support.py reads them as the worker does)."""
    return [record.event_id for record in queued_records(redis)]


def h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def expected_id(record: dict[str, Any], connector: str = "crm", key: str | None = "customer_id") -> str:
    """The formula of docs/contract.md, computed with the standard library only."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    content = h(canonical.encode("utf-8"))
    if key is None:
        return f"osmos_{connector}_{content}"
    key_json = json.dumps(record.get(key), separators=(",", ":"), ensure_ascii=False)
    return f"osmos_{connector}_{h(key_json.encode('utf-8'))}_{content}"


def customers(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "customer_id": f"cus_{i}",
            "visits": i,
            "score": i / 2,
            "active": i % 2 == 0,
            "birthday": "1980-02-29",
            "seen_at": "2026-11-20T10:00:00Z",
        }
        for i in range(start, start + n)
    ]


# -- accepted batches --------------------------------------------------------------------


def test_valid_batch_is_accepted_and_each_record_becomes_a_queued_event(osmos, redis):
    receiver = osmos()
    records = customers(3)
    response = post(receiver, records)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "records": 3}
    jobs = queued(redis)
    assert len(jobs) == 3 and len(set(jobs)) == 3
    for job_id in queued_jobs(redis):
        assert redis.ttl(f"rq:job:{job_id}") == -1  # committed jobs never expire
        assert redis.ttl(job_spec(redis, job_id)["chunk"]) == -1  # nor the records they run
    assert jobs == [expected_id(r) for r in records]
    assert len(marks(redis, "crm")) == 3
    assert batch_leftovers(redis) == []
    receiver.drain()
    assert sorted(handled(redis)) == sorted(f"{expected_id(r)}|sample.record|crm|1" for r in records)


def test_record_event_has_the_pinned_shape(osmos, redis):
    receiver = osmos()
    record = {"customer_id": "cus_Zoë_東京", "visits": None, "note": "kept as sent"}
    before = datetime.now(UTC)
    assert post(receiver, record).status_code == 202
    (queued_record,) = queued_records(redis)
    spec = queued_record.spec
    event = orjson.loads(queued_record.event)
    assert set(event) == {"id", "type", "object", "created_at", "data"}
    assert event["id"] == queued_record.event_id == expected_id(record)
    assert event["type"] == "osmos.crm.record" and event["object"] == "event"
    assert event["data"] == {"object": record}  # unknown fields are ignored, not dropped
    created = datetime.fromisoformat(event["created_at"])
    assert before.timestamp() - 1 <= created.timestamp() <= time.time() + 1
    assert spec["source"] == "osmos" and spec["event_type"] == "osmos.crm.record"


def test_single_object_is_one_record(osmos, redis):
    receiver = osmos()
    response = post(receiver, {"customer_id": "cus_single"})
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "records": 1}
    assert len(queued(redis)) == 1


def test_empty_array_is_accepted_with_zero_records(osmos, redis):
    response = post(osmos(), [])
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "records": 0}
    assert nothing_stored(redis)


def test_resent_batch_queues_nothing_and_a_changed_record_is_a_new_event(osmos, redis):
    receiver = osmos()
    records = customers(4)
    assert post(receiver, records).status_code == 202
    first = queued(redis)
    again = post(receiver, records)
    assert again.status_code == 202 and again.json() == {"status": "accepted", "records": 4}
    assert queued(redis) == first
    changed = dict(records[1], visits=99)
    assert post(receiver, [records[0], changed]).status_code == 202
    jobs = queued(redis)
    assert len(jobs) == 5
    assert jobs[-1] == expected_id(changed)
    assert expected_id(changed).split("_")[2] == expected_id(records[1]).split("_")[2]  # same K


def test_identical_records_within_one_batch_are_queued_once(osmos, redis):
    receiver = osmos()
    record = customers(1)[0]
    response = post(receiver, [record, record, dict(record)])
    assert response.status_code == 202 and response.json()["records"] == 3
    assert len(queued(redis)) == 1


def test_concurrent_copies_of_one_batch_queue_each_record_once(osmos, redis):
    receiver = osmos()
    body = orjson.dumps(customers(2500))  # more than one staging chunk
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        with httpx.Client(base_url=receiver.url, timeout=60) as client:
            barrier.wait()
            statuses.append(client.post("/ingest/osmos/crm", content=body, headers=HEADERS).status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(202) >= 1 and set(statuses) <= {202, 503}
    jobs = queued(redis)
    assert len(jobs) == 2500 and len(set(jobs)) == 2500
    assert all(redis.exists(f"rq:job:{job}") for job in queued_jobs(redis))
    assert batch_leftovers(redis) == []


def test_connector_without_key_uses_the_content_hash_alone(osmos, redis):
    receiver = osmos()
    response = post(
        receiver,
        [{"code": "A1"}],
        connector="strict",
        headers={"x-osmos-key": TOKEN, "content-type": "application/json"},
    )
    assert response.status_code == 202
    assert marked_ids(redis, "strict", None) == [expected_id({"code": "A1"}, "strict", None)]


def test_where_routes_pick_records_by_field(osmos, redis):
    receiver = osmos(
        ROUTES + '\n[[routes]]\non = "osmos.crm.record"\nwhere = { visits = 2 }\n'
        'handler = "sample.record"\nlabel = "two"\n'
    )
    assert post(receiver, customers(4)).status_code == 202
    assert len(queued(redis)) == 5  # four for the first route, one for `visits = 2`
    receiver.drain()
    assert [entry for entry in handled(redis) if "|two|" in entry] == [
        f"{expected_id(customers(4)[2])}|sample.record|two|1"
    ]


def test_records_with_no_route_are_remembered_without_jobs(osmos, redis):
    receiver = osmos(CONNECTORS)
    assert post(receiver, customers(2)).status_code == 202
    assert queued(redis) == [] and len(marks(redis, "crm")) == 2


def test_encrypted_payloads_are_sealed_and_still_run(osmos, redis):
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    receiver = osmos(OSMA_ROUTER_ENCRYPTION_KEYS=key)
    record = {"customer_id": "cus_secret_member_data"}
    assert post(receiver, record).status_code == 202
    (job_id,) = queued_jobs(redis)
    spec = job_spec(redis, job_id)
    raw = redis.hget(f"rq:job:{job_id}", "data") + redis.hget(spec["chunk"], "records")
    assert b"secret_member_data" not in raw and spec["sealed"] is True
    assert [r.event_id for r in queued_records(redis, sealer=Sealer([Secret(key)]))] == [expected_id(record)]
    receiver.drain()
    assert handled(redis) == [f"{expected_id(record)}|sample.record|crm|1"]


# -- rejected batches --------------------------------------------------------------------


def test_batch_with_two_bad_records_names_exactly_those_and_stores_nothing(osmos, redis):
    receiver = osmos()
    records = customers(5)
    records[1]["visits"] = "3"
    del records[3]["customer_id"]
    response = post(receiver, records)
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["type"] == "invalid_records"
    assert [(e["index"], e["field"]) for e in body["records"]] == [(1, "visits"), (3, "customer_id")]
    assert all(e["message"] for e in body["records"]) and "more" not in body
    assert "3" not in body["records"][0]["message"]  # values are never echoed
    assert nothing_stored(redis)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("visits", 3.5),
        ("visits", 3.0),
        ("visits", True),
        ("visits", "3"),
        ("score", "1.5"),
        ("active", 1),
        ("active", "true"),
        ("birthday", "1980-02-30"),
        ("birthday", "19800229"),
        ("birthday", "1980-02-29T00:00:00Z"),
        ("seen_at", "2026-11-20T10:00:00"),
        ("seen_at", "2026-11-20 10:00:00Z"),
        ("seen_at", "2026-13-20T10:00:00Z"),
        ("customer_id", 42),
        ("customer_id", None),
        ("customer_id", ["cus_1"]),
    ],
)
def test_types_are_strict(osmos, redis, field, value):
    record = customers(1)[0] | {field: value}
    response = post(osmos(), [record])
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["records"]] == [(0, field)]


def test_unknown_fields_are_rejected_when_the_connector_says_so(osmos, redis):
    response = post(
        osmos(),
        [{"code": "A"}, {"code": "B", "extra": 1}],
        connector="strict",
        headers={"X-Osmos-Key": TOKEN, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["records"]] == [(1, "extra")]
    assert nothing_stored(redis)


def test_at_most_a_thousand_entries_then_a_count_of_the_rest(osmos, redis):
    response = post(osmos(), [{"visits": "x"}] * 600)  # two bad fields each
    assert response.status_code == 422
    body = response.json()
    assert len(body["records"]) == 1000 and body["more"] == 200
    assert nothing_stored(redis)


@pytest.mark.parametrize("payload", [b"42", b'"text"', b"null", b"true"])
def test_body_of_the_wrong_shape_is_422_for_the_body_as_a_whole(osmos, redis, payload):
    response = post(osmos(), payload)
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["type"] == "invalid_records"
    assert [(e["index"], e["field"]) for e in body["records"]] == [(None, None)]


def test_array_elements_that_are_not_objects_are_named(osmos, redis):
    response = post(osmos(), [{"customer_id": "a"}, 7, [], "x"])
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["records"]] == [(1, None), (2, None), (3, None)]
    assert nothing_stored(redis)


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"[1,", b"{'a': 1}", b"\xff\xfe", b'["\\ud800"]', b"[" * 2000 + b"]" * 2000]
)
def test_body_that_is_not_json_is_400(osmos, redis, payload):
    response = post(osmos(), payload)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"


def test_record_nested_too_deeply_to_store_is_422_and_nothing_is_stored(osmos, redis):
    deep: Any = 1
    for _ in range(300):  # orjson reads 1,024 levels but writes 254
        deep = [deep]
    records = customers(3)
    records[2]["extra"] = deep
    response = post(osmos(), json.dumps(records).encode())
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["records"]] == [(2, None)]
    assert nothing_stored(redis)


def test_more_than_250000_records_is_413(osmos, redis):
    response = post(osmos(), b"[" + b",".join([b"{}"] * 250_001) + b"]")
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_many_records"


def test_body_over_the_osmos_limit_is_413_also_when_streamed(osmos, redis):
    receiver = osmos(OSMA_ROUTER_OSMOS_MAX_BODY_BYTES="1000")
    big = orjson.dumps(customers(30))
    assert post(receiver, big).json()["error"]["type"] == "body_too_large"

    def stream() -> Any:
        for start in range(0, len(big), 100):
            yield big[start : start + 100]

    response = receiver.http.post("/ingest/osmos/crm", content=stream(), headers=HEADERS)  # chunked
    assert response.status_code == 413 and response.json()["error"]["type"] == "body_too_large"
    assert post(receiver, customers(1)).status_code == 202


def test_osmos_limit_is_separate_from_the_webhook_limit(osmos, redis):
    receiver = osmos(OSMA_ROUTER_MAX_BODY_BYTES="1000")
    assert post(receiver, customers(100)).status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json"},
        {"authorization": "wrong", "content-type": "application/json"},
        {"authorization": TOKEN + "x", "content-type": "application/json"},
        {"authorization": "", "content-type": "application/json"},
        {"x-osmos-key": TOKEN, "content-type": "application/json"},
    ],
)
def test_missing_or_wrong_auth_header_is_401(osmos, redis, headers):
    response = post(osmos(), customers(1), headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["error"]["type"] == "unauthorized" and TOKEN not in response.text
    assert nothing_stored(redis)


def test_auth_header_name_is_case_insensitive(osmos, redis):
    headers = {"AUTHORIZATION": TOKEN, "Content-Type": "application/json; charset=utf-8"}
    assert post(osmos(), customers(1), headers=headers).status_code == 202


def test_unknown_connector_is_404_before_auth(osmos, redis):
    response = post(osmos(), customers(1), connector="nope", headers={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "unknown_connector"


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_wrong_content_type_is_415_after_auth(osmos, redis, content_type):
    headers = {"authorization": TOKEN} | ({"content-type": content_type} if content_type else {})
    response = post(osmos(), customers(1), headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "unsupported_media_type"
    assert post(osmos(), customers(1), headers={"content-type": "text/plain"}).status_code == 401


def test_checks_run_in_the_pinned_order(osmos, redis):
    receiver = osmos(OSMA_ROUTER_OSMOS_MAX_BODY_BYTES="10")
    assert (
        post(
            receiver, b"not json at all", headers={"authorization": TOKEN, "content-type": "text/plain"}
        ).status_code
        == 415
    )
    assert post(receiver, b"not json at all").status_code == 413
    small = osmos()
    assert post(small, b"[" + b"1," * 250_001 + b"1]").json()["error"]["type"] == "too_many_records"


def test_get_is_405(osmos, redis):
    assert osmos().http.get("/ingest/osmos/crm", headers=HEADERS).status_code == 405


# -- Redis trouble -----------------------------------------------------------------------


def test_redis_down_is_503_and_a_retry_succeeds(osmos, redis, redis_server: RedisServer):
    receiver = osmos()
    redis_server.stop()
    try:
        response = post(receiver, customers(3))
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "unavailable"
    finally:
        redis_server.start()
    assert post(receiver, customers(3)).status_code == 202
    assert len(queued(Redis.from_url(redis_server.url))) == 3


def test_redis_failing_mid_batch_is_503_with_nothing_half_stored(osmos, redis):
    receiver = osmos(OSMA_ROUTER_OSMOS_REDIS_BUDGET="100000000000")  # not the budget: Redis itself refuses
    receiver.http.post("/ingest/osmos/crm", content=b"[]", headers=HEADERS)
    used = int(redis.info("memory")["used_memory"])
    redis.config_resetstat()
    redis.config_set("maxmemory", str(used + 300_000))  # room for a chunk or two, not twelve
    try:
        response = post(receiver, customers(12_000), timeout=60)
    finally:
        redis.config_set("maxmemory", "0")
    assert response.status_code == 503
    stats = redis.info("commandstats")
    # A chunk was staged before Redis refused (sweep, begin, a staging call went through).
    assert stats["cmdstat_hset"]["calls"] >= 1
    assert stats["cmdstat_evalsha"]["calls"] - stats["cmdstat_evalsha"]["failed_calls"] >= 3
    assert stats["cmdstat_evalsha"]["failed_calls"] >= 1
    assert nothing_stored(redis)
    assert post(receiver, customers(3)).status_code == 202


# -- metrics -----------------------------------------------------------------------------


def test_metrics_count_osmos_records(osmos, redis):
    receiver = osmos()
    post(receiver, customers(3))
    post(receiver, customers(4))  # three duplicates, one new
    post(receiver, customers(1), headers={"content-type": "application/json"})
    text = receiver.http.get("/metrics").text
    assert 'osma_router_deliveries_total{outcome="accepted",source="osmos"} 4.0' in text
    assert 'osma_router_deliveries_total{outcome="duplicate",source="osmos"} 3.0' in text
    assert 'osma_router_deliveries_total{outcome="rejected",source="osmos"} 1.0' in text
    assert (
        'osma_router_delivery_reasons_total{outcome="rejected",reason="unauthorized",source="osmos"} 1.0'
        in text
    )


# -- check-config ------------------------------------------------------------------------


def test_check_config_lists_connectors_with_the_token_masked(tmp_path, redis_server, write_routes):
    routes = write_routes(ROUTES)
    result = osma_router(["check-config"], env_for(redis_server.url, routes, CRM_OSMOS_TOKEN=TOKEN), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "connectors (2):" in result.stdout
    assert "crm: POST /ingest/osmos/crm -> osmos.crm.record" in result.stdout
    assert "CRM_OSMOS_TOKEN" in result.stdout and TOKEN not in result.stdout


def test_check_config_fails_in_one_line_when_the_token_variable_is_unset(
    tmp_path, redis_server, write_routes
):
    routes = write_routes(ROUTES)
    result = osma_router(["check-config"], env_for(redis_server.url, routes), tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert str(routes) in line and "'crm'" in line and "CRM_OSMOS_TOKEN" in line


# -- scale -------------------------------------------------------------------------------


def proc_memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
def test_250000_records_through_a_real_server_in_bounded_time_and_memory(
    tmp_path, redis, redis_server, write_routes
):
    routes = write_routes('[[routes]]\non = "osmos.crm.record"\nhandler = "noop"\n' + CONNECTORS)
    server, url = start_osmos_server(tmp_path, redis_server.url, routes, TOKEN, timeout=30)
    try:
        records = [
            {
                "customer_id": f"cus_{i:09d}",
                "visits": i % 500,
                "score": i / 7,
                "active": i % 3 == 0,
                "birthday": "1985-06-15",
                "seen_at": "2026-11-20T10:00:00+01:00",
                "name": f"Customer {i} with a longer name",
                "email": f"c{i}@example.com",
            }
            for i in range(250_000)
        ]
        body = orjson.dumps(records)
        del records
        assert len(body) > 40_000_000
        before = proc_memory_mb(server.pid)
        started = time.monotonic()
        response = httpx.post(url, content=body, headers=HEADERS, timeout=120)
        seconds = time.monotonic() - started
        after = proc_memory_mb(server.pid)
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "accepted", "records": 250_000}
        first = queued_jobs(redis)
        assert len(queued(redis)) == 250_000 and len(marks(redis, "crm")) == 250_000
        assert seconds < 30, f"{seconds:.1f} s"
        growth = after["VmHWM"] - before["VmRSS"]
        assert growth < 1024, f"peak RSS grew by {growth:.0f} MB"
        again = httpx.post(url, content=body, headers=HEADERS, timeout=120)
        assert again.status_code == 202 and queued_jobs(redis) == first
    finally:
        server.terminate()
        server.wait(30)
