"""Logs: one JSON object a line in production, readable lines in dev, event and request
ids where there are some, and never a secret, a signature, or member or task data."""

from __future__ import annotations

import json
import time

import httpx
import orjson
from cryptography.fernet import Fernet
from rq.registry import FailedJobRegistry

from tests.ops_support import Process, Server, wait_for
from tests.support import SECRET, env_for, handled, make_event, signature_headers

# Values that must never appear in a log line, whatever happens to the events carrying them.
MEMBER = {
    "id": "mem_leak_1",
    "object": "member",
    "first_name": "Zelda-Marker-7f3a",
    "email": "zelda.marker-91@example.org",
    "phone": "+31-6-5550-8173",
    "notes": "diagnosis marker-hypertension-9q",
}
TASK = {
    "id": "tsk_leak_1",
    "object": "task",
    "template": "bp",
    "description": "Measure marker-task-description-42",
    "data": {"systolic": "marker-sys-183"},
}
ROUTES = (
    '[[routes]]\non = "task.completed"\nhandler = "sample.record"\n\n'
    '[[routes]]\non = "task.completed"\nhandler = "sample.rejects"\n\n'
    '[[routes]]\non = "member.created"\nhandler = "ops.chatty"\nretries = 1\nbackoff = [0]\n'
)


def field_values(obj: object) -> list[str]:
    if isinstance(obj, dict):
        return [
            v
            for key, value in obj.items()
            if key not in ("id", "object", "template")
            for v in field_values(value)
        ]
    return [str(obj)]


def test_no_secret_signature_or_member_data_reaches_the_logs(tmp_path, redis, redis_server, write_routes):
    """At DEBUG, the most talkative level, over every kind of delivery and job outcome."""
    encryption_key = Fernet.generate_key().decode()
    secrets = {
        "webhook secret": SECRET,
        "encryption key": encryption_key,
        "osma api key": "sk_test_marker_apikey_5521",
        "ogsm password": "marker-ogsm-password-77",
    }
    env = env_for(
        redis_server.url,
        write_routes(ROUTES),
        OSMA_ROUTER_ENCRYPTION_KEYS=encryption_key,
        OSMA_ROUTER_CAPTURE="on",
        OSMA_ROUTER_OSMA_API_KEY=secrets["osma api key"],
        OSMA_ROUTER_OGSM_BASE_URL="http://127.0.0.1:9/api/v2",
        OSMA_ROUTER_OGSM_USERNAME="ops",
        OSMA_ROUTER_OGSM_PASSWORD=secrets["ogsm password"],
        OSMA_ROUTER_LOG_LEVEL="debug",
    )
    server = Server(env, tmp_path)
    worker = Process(["worker"], env, tmp_path, "worker")
    signatures: list[str] = []
    sent_ids: list[str] = []
    try:
        server.wait_up()
        http = httpx.Client(base_url=server.url, timeout=10)

        def post(body: bytes, **sign) -> httpx.Response:
            headers = signature_headers(body, **sign)
            signatures.append(headers["osma-signature"])
            return http.post(
                "/webhooks/osma", content=body, headers={**headers, "x-request-id": "req-leak-1"}
            )

        task_event = make_event(event_id="evt_leak_task", obj=TASK)
        member_event = make_event("member.created", event_id="evt_leak_member", obj=MEMBER)
        assert post(task_event).status_code == 202
        assert post(member_event).status_code == 202
        assert post(task_event).status_code == 200  # duplicate
        assert (
            post(make_event(event_id="evt_leak_badsig", obj=MEMBER), secret="whsec_wrong").status_code == 401
        )
        assert (
            post(
                make_event(event_id="evt_leak_stale", obj=TASK), timestamp=int(time.time()) - 3600
            ).status_code
            == 401
        )
        assert post(b'{"id": "evt_leak_json", "data": {"first_name": "Zelda-Marker-7f3a"').status_code == 400
        assert post(orjson.dumps({"type": "task.completed", "data": {"object": TASK}})).status_code == 400
        assert (
            post(
                orjson.dumps({"id": "evt_leak_big", "type": "x", "pad": "marker-sys-183" * 80_000})
            ).status_code
            == 413
        )
        sent_ids += ["evt_leak_task", "evt_leak_member"]
        http.close()
        # record + rejects for the task, chatty twice (fails once, then succeeds) for the member
        wait_for(
            lambda: (
                len(handled(redis)) >= 4 and FailedJobRegistry("osma-router", connection=redis).count == 1
            ),
            timeout=60,
            what="the jobs to run",
        )
        wait_for(
            lambda: any(
                "job succeeded" in line and "ops.chatty" in line for line in worker.stderr().splitlines()
            ),
            timeout=30,
            what="the retry",
        )
    finally:
        assert server.stop() == 0
        assert worker.stop() == 0

    logs = {"receiver": server.stderr(), "worker": worker.stderr()}
    forbidden = {
        **secrets,
        **{f"member field {v}": v for v in field_values(MEMBER)},
        **{f"task field {v}": v for v in field_values(TASK)},
    }
    for signature in signatures:
        forbidden[f"signature {signature}"] = signature
        forbidden[f"signature digest {signature}"] = signature.split("v1=")[1]
    for process, text in logs.items():
        assert text.strip(), f"{process} wrote no log at all"
        leaks = [name for name, value in forbidden.items() if value in text]
        assert not leaks, f"{process} logged {leaks}"

    # Every line is one JSON object; lines about a delivery or a job say which.
    entries = {process: [json.loads(line) for line in text.splitlines()] for process, text in logs.items()}
    deliveries = [e for e in entries["receiver"] if e["msg"].startswith("delivery")]
    assert len(deliveries) == 8
    assert all(e["request_id"] == "req-leak-1" for e in deliveries)
    assert {e["event_id"] for e in deliveries if e["msg"] == "delivery stored"} == set(sent_ids)
    jobs = [e for e in entries["worker"] if e["msg"].startswith(("job ", "handler raised"))]
    assert jobs and all(e.get("event_id") in sent_ids and e.get("job_id") for e in jobs)
    chatty = [e for e in entries["worker"] if e["msg"] == "chatty handler looked at the object"]
    assert len(chatty) == 2
    assert all("member" not in e and "first_name" not in e for e in chatty)


def test_console_format_for_dev_carries_ids(tmp_path, redis, redis_server):
    server = Server(
        env_for(redis_server.url, OSMA_ROUTER_LOG_FORMAT="console", OSMA_ROUTER_LOG_LEVEL="debug"), tmp_path
    )
    try:
        server.wait_up()
        body = make_event(event_id="evt_console")
        answer = httpx.post(
            server.url + "/webhooks/osma",
            content=body,
            headers={**signature_headers(body), "x-request-id": "req-console"},
        )
        assert answer.status_code == 202
    finally:
        assert server.stop() == 0
    line = next(line for line in server.stderr().splitlines() if "delivery stored" in line)
    assert not line.startswith("{")
    assert "event_id=evt_console" in line and "request_id=req-console" in line
