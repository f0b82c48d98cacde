"""POST /webhooks/osma over real HTTP: answers, dedup, atomicity, Redis outages."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
from redis import Redis

from receiver.keys import dedup_key
from receiver.store.server import RedisServer
from tests.support import SECRET, examples, make_event, signature_headers

ROUTES = """
[[routes]]
on = "task.completed"
handler = "sample.record"
label = "a"

[[routes]]
on = "task.*"
handler = "sample.record"
label = "b"

[[routes]]
on = "member.created"
handler = "noop"
"""


def queued(redis: Redis, queue: str = "osma-router") -> list[str]:
    return [job_id.decode() for job_id in redis.lrange(f"rq:queue:{queue}", 0, -1)]


def test_new_event_is_accepted_with_one_job_per_matching_route(start_receiver, redis):
    receiver = start_receiver(ROUTES)
    body = make_event("task.completed", event_id="evt_1")
    response = receiver.post(body)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "id": "evt_1", "jobs": 2}
    jobs = queued(redis)
    assert len(jobs) == 2 and len(set(jobs)) == 2
    for job_id in jobs:
        assert all(c.isalnum() or c in "_-" for c in job_id)
        assert redis.exists(f"rq:job:{job_id}")


def test_unrouted_event_is_accepted_with_no_jobs(start_receiver, redis):
    receiver = start_receiver(ROUTES)
    response = receiver.post(make_event("file.uploaded", event_id="evt_unrouted"))
    assert response.status_code == 202
    assert response.json()["jobs"] == 0
    assert queued(redis) == []
    assert redis.exists(dedup_key("osma", "evt_unrouted"))


def test_redelivery_is_a_duplicate_and_queues_nothing(start_receiver, redis):
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_dup")
    assert receiver.post(body).status_code == 202
    again = receiver.post(body)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "id": "evt_dup"}
    assert len(queued(redis)) == 2


def test_fifty_concurrent_deliveries_of_one_id_are_accepted_once(start_receiver, redis):
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_race")
    statuses: list[int] = []
    barrier = threading.Barrier(50)

    def deliver() -> None:
        with httpx.Client(base_url=receiver.url, timeout=10) as client:
            barrier.wait()
            statuses.append(
                client.post("/webhooks/osma", content=body, headers=signature_headers(body)).status_code
            )

    threads = [threading.Thread(target=deliver) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 49 + [202]
    assert len(queued(redis)) == 2


def test_error_answers_follow_the_contract(start_receiver, redis):
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_err")
    now = int(time.time())
    cases = [
        ({"content-type": "application/json"}, body, 401, "missing_signature"),
        ({"osma-signature": ""}, body, 401, "missing_signature"),
        ({"osma-signature": "v1=abc"}, body, 401, "malformed_signature"),
        ({"osma-signature": f"t={now},v1="}, body, 401, "malformed_signature"),
        (signature_headers(body, timestamp=now - 301), body, 401, "timestamp_out_of_tolerance"),
        (signature_headers(body, timestamp=now + 400), body, 401, "timestamp_out_of_tolerance"),
        (signature_headers(body, secret="whsec_other"), body, 401, "signature_mismatch"),
        (signature_headers(b"not json"), b"not json", 400, "invalid_json"),
        (signature_headers(b"[1, 2]"), b"[1, 2]", 400, "invalid_json"),
        (
            signature_headers(b'{"type": "task.completed"}'),
            b'{"type": "task.completed"}',
            400,
            "invalid_envelope",
        ),
        (signature_headers(b'{"id": 5, "type": "x"}'), b'{"id": 5, "type": "x"}', 400, "invalid_envelope"),
    ]
    for headers, content, status, error_type in cases:
        response = receiver.http.post("/webhooks/osma", content=content, headers=headers)
        assert response.status_code == status, (error_type, response.text)
        error = response.json()["error"]
        assert error["type"] == error_type
        assert error["message"] and SECRET not in response.text
    assert queued(redis) == []
    assert not redis.exists(dedup_key("osma", "evt_err"))


def test_re_serialised_body_is_rejected(start_receiver):
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_reser")
    headers = signature_headers(body)
    reserialised = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    response = receiver.http.post("/webhooks/osma", content=reserialised, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "signature_mismatch"


def test_rotated_secrets_both_verify(start_receiver):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_WEBHOOK_SECRETS=f" whsec_new , {SECRET}")
    old = make_event(event_id="evt_old_secret")
    new = make_event(event_id="evt_new_secret")
    assert receiver.post(old, secret=SECRET).status_code == 202
    assert receiver.post(new, secret="whsec_new").status_code == 202


def test_body_over_the_limit_is_413_even_without_content_length(start_receiver, redis):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_MAX_BODY_BYTES="1000")
    big = make_event(event_id="evt_big", obj={"id": "t", "note": "x" * 2000})
    response = receiver.post(big)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "body_too_large"

    def chunks():  # chunked transfer: no Content-Length to trust
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    response = receiver.http.post("/webhooks/osma", content=chunks(), headers=signature_headers(big))
    assert response.status_code == 413
    assert queued(redis) == []


def test_exactly_the_limit_is_accepted(start_receiver):
    body = make_event(event_id="evt_limit")
    receiver = start_receiver(ROUTES, OSMA_ROUTER_MAX_BODY_BYTES=str(len(body)))
    assert receiver.post(body).status_code == 202


def test_a_step_failing_midway_leaves_the_event_unmarked(start_receiver, redis):
    """Atomicity: make the second job's write fail inside the script (its key holds a
    string), so the event must not be marked seen; once the obstacle is gone the
    redelivery is accepted, not a duplicate."""
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_atomic")
    from receiver.model.routes import job_id

    routes = receiver.state.pipeline.router.routes
    redis.set(f"rq:job:{job_id('osma', 'evt_atomic', routes[1])}", "in the way")
    response = receiver.post(body)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "unavailable"
    assert not redis.exists(dedup_key("osma", "evt_atomic"))

    redis.delete(f"rq:job:{job_id('osma', 'evt_atomic', routes[1])}")
    response = receiver.post(body)
    assert response.status_code == 202
    assert receiver.post(body).status_code == 200


def test_redis_down_gives_503_and_not_ready_then_recovers(start_receiver, redis, redis_server: RedisServer):
    receiver = start_receiver(ROUTES)
    assert receiver.http.get("/readyz").status_code == 200
    redis_server.stop()
    try:
        body = make_event(event_id="evt_outage")
        response = receiver.post(body)
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "unavailable"
        assert receiver.http.get("/readyz").status_code == 503
        assert receiver.http.get("/healthz").status_code == 200
    finally:
        redis_server.start()
    assert receiver.post(body).status_code == 202
    assert receiver.http.get("/readyz").status_code == 200


def test_dedup_window_expires(start_receiver, redis):
    # A 1 s window covers a tolerance of 0 only (docs/contract.md, "Replay window"): the
    # receiver's clock stands still at the signed second.
    now = int(time.time())
    receiver = start_receiver(
        ROUTES, clock=lambda: now, OSMA_ROUTER_DEDUP_TTL="1", OSMA_ROUTER_SIGNATURE_TOLERANCE="0"
    )
    body = make_event(event_id="evt_ttl")
    assert receiver.post(body, timestamp=now).status_code == 202
    assert receiver.post(body, timestamp=now).status_code == 200
    deadline = time.monotonic() + 5
    while redis.exists(dedup_key("osma", "evt_ttl")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert receiver.post(body, timestamp=now).status_code == 202


def test_metrics_count_deliveries_by_outcome(start_receiver):
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_metrics")
    receiver.post(body)
    receiver.post(body)
    receiver.post(body, secret="wrong")
    text = receiver.http.get("/metrics").text
    assert 'osma_router_deliveries_total{outcome="accepted",source="osma"} 1.0' in text
    assert 'osma_router_deliveries_total{outcome="duplicate",source="osma"} 1.0' in text
    assert 'outcome="rejected",reason="signature_mismatch"' in text


def test_unknown_paths_and_methods_get_json_errors(start_receiver):
    receiver = start_receiver(ROUTES)
    assert receiver.http.get("/nope").json()["error"]["type"] == "not_found"
    response = receiver.http.get("/webhooks/osma")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "method_not_allowed"


def test_encrypted_job_payloads_hold_no_clear_text(start_receiver, redis):
    from cryptography.fernet import Fernet

    receiver = start_receiver(ROUTES, OSMA_ROUTER_ENCRYPTION_KEYS=Fernet.generate_key().decode())
    body = make_event(event_id="evt_sealed", obj={"id": "mem_1", "name": "Ada Lovelace-Byron"})
    assert receiver.post(body).status_code == 202
    for key in redis.keys("*"):
        if redis.type(key) == b"hash":
            assert b"Lovelace" not in b"".join(redis.hvals(key))


# Hypothesis drives real HTTP here: whatever the header and body, never a 5xx.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_header_chars = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_header_text = st.one_of(
    st.text(_header_chars, max_size=200),
    st.builds(
        lambda t, v: f"t={t},v1={v}", st.integers(-(10**20), 10**20), st.text(_header_chars, max_size=80)
    ),
    st.builds(
        lambda v: f"t={int(time.time())},v1={v},v0=x", st.text(alphabet="0123456789abcdef", max_size=64)
    ),
)
_body = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda obj: orjson.dumps(obj),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ),
    ),
)


def test_fuzzed_headers_and_bodies_never_give_a_5xx(start_receiver):
    receiver = start_receiver(ROUTES)

    @settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
    @given(header=_header_text, body=_body, sign_it=st.booleans())
    def check(header: str, body: bytes, sign_it: bool) -> None:
        # Values HTTP itself allows (visible ASCII, inner spaces); the rest never reaches us.
        value = signature_headers(body)["osma-signature"] if sign_it else header.strip()
        response = receiver.http.post("/webhooks/osma", content=body, headers={"osma-signature": value})
        assert response.status_code < 500, response.text
        assert "error" in response.json() or response.status_code in (200, 202)

    check()


def test_a_timestamp_exactly_the_tolerance_away_is_accepted_on_a_clock_mid_second(start_receiver):
    """A sender writes `t = int(time.time()) - 300`; the receiver's clock is 0.75 s into its
    second. Exactly the tolerance in the past and the future is accepted, one more is not."""
    now = 1_800_000_000
    receiver = start_receiver(clock=lambda: now + 0.75)
    answers = {
        offset: receiver.post(make_event(event_id=f"evt_edge_{offset + 1000}"), timestamp=now + offset)
        for offset in (-300, 300, -301, 301)
    }
    assert {offset: answer.status_code for offset, answer in answers.items()} == {
        -300: 202,
        300: 202,
        -301: 401,
        301: 401,
    }
    assert answers[-301].json()["error"]["type"] == "timestamp_out_of_tolerance"
