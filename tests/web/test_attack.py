"""Bad input and attacks against a live receiver (real uvicorn, real Redis, loopback):
the service against its own OpenAPI description (schemathesis), slow clients, and
replayed deliveries."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from redis import Redis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from receiver.keys import dedup_key
from receiver.model.signature import sign
from receiver.web.app import create_app
from receiver.web.openapi import SPEC
from tests.support import SECRET, Receiver, examples, handled, make_event, signature_headers

OSMOS_TOKEN = "Bearer osmos-attack-token"
ROUTES = """
[[routes]]
on = "task.*"
handler = "sample.record"
"""
WITH_CONNECTOR = (
    ROUTES
    + """
[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "visits", type = "integer", nullable = true },
]
"""
)


@pytest.fixture
def live(start_receiver: Any, monkeypatch: pytest.MonkeyPatch) -> Receiver:
    monkeypatch.setenv("CRM_OSMOS_TOKEN", OSMOS_TOKEN)
    receiver: Receiver = start_receiver(WITH_CONNECTOR)
    return receiver


# -- the OpenAPI description, and the service checked against it ------------------------


def test_openapi_json_is_the_description_and_covers_every_route(live: Receiver) -> None:
    response = live.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == orjson.loads(orjson.dumps(SPEC))
    served = {getattr(route, "path", None) for route in create_app(live.state).routes}
    assert served == set(SPEC["paths"])
    codes = set(SPEC["paths"]["/webhooks/osma"]["post"]["responses"])
    assert codes == {"200", "202", "400", "401", "408", "413", "503"}


class Signer(requests.auth.AuthBase):
    """Replaces the generated `osma-signature` of half of the webhook requests (chosen by
    the body's hash) with a valid one over the exact bytes sent, so that the checks after
    the signature (JSON, envelope, dedup, enqueue) are exercised as well as the signature
    checks themselves. A request generated without the header stays without it."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        raw = request.body or b""
        body = raw.encode() if isinstance(raw, str) else raw
        assert isinstance(body, bytes)
        if "osma-signature" in request.headers and hashlib.sha256(body).digest()[0] % 2 == 0:
            request.headers["osma-signature"] = sign(body, SECRET, int(time.time()))
        return request


# The receiver serves exactly SPEC (checked above), so the cases are generated from it here.
schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()
@settings(max_examples=examples(100), deadline=None, suppress_health_check=list(HealthCheck))
def test_the_receiver_answers_as_its_openapi_description_says(case: Any, live: Receiver) -> None:
    """schemathesis generates requests from the description (valid and invalid) and checks
    every answer: no 5xx, a documented status, a body that matches its schema."""
    osmos = case.path.startswith("/ingest/osmos/")
    headers = {"authorization": OSMOS_TOKEN} if osmos else None
    auth = Signer() if case.path == "/webhooks/osma" else None
    # A connector's record schema lives in the routes file, not in the description, so a
    # batch valid for the description may still be a (documented) 422 for the connector.
    excluded = [positive_data_acceptance] if osmos else None
    response = case.call_and_validate(
        base_url=live.url, headers=headers, auth=auth, timeout=10, excluded_checks=excluded
    )
    assert response.status_code < 500


# -- slow clients ------------------------------------------------------------------------


def open_slow_request(url: str, body: bytes, sent: int) -> socket.socket:
    """A connection that has sent the headers and the first `sent` bytes of `body`."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /webhooks/osma HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Osma-Signature: {signature_headers(body)['osma-signature']}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:sent])
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, Any], bool]:
    """Status, JSON body, and whether the server closed the connection after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(rest) < length:
        rest += sock.recv(4096)
    closed = sock.recv(1) == b""
    return int(head.split(b" ")[1]), orjson.loads(rest[:length]), closed


def test_a_body_that_trickles_in_too_slowly_is_408_and_the_connection_closed(
    start_receiver: Any, redis: Redis
) -> None:
    receiver = start_receiver(ROUTES, OSMA_ROUTER_BODY_TIMEOUT="1")
    body = make_event(event_id="evt_slow_body")
    sock = open_slow_request(receiver.url, body, sent=10)
    started = time.monotonic()
    answered = threading.Event()

    def trickle() -> None:  # one byte every 0.2 s: the body would take over a minute
        for position in range(10, len(body)):
            if answered.wait(0.2):
                return
            try:
                sock.sendall(body[position : position + 1])
            except OSError:
                return

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        status, answer, closed = read_answer(sock)
    finally:
        answered.set()
        feeder.join()
        sock.close()
    elapsed = time.monotonic() - started
    assert status == 408 and answer["error"]["type"] == "request_timeout", answer
    # The body timeout is 1 s: never sooner; later only by scheduling on a loaded machine.
    assert 0.9 <= elapsed < 5, f"408 after {elapsed:.2f} s; expected 1 s (body timeout) plus scheduling"
    assert closed  # the rest of a trickling body is not read for ever
    assert not redis.exists(dedup_key("osma", "evt_slow_body"))
    assert receiver.post(body).status_code == 202  # the same event, sent promptly


def test_the_body_timeout_is_ten_seconds_unless_set_and_must_be_positive() -> None:
    from receiver.exceptions import ConfigError
    from receiver.settings import Settings

    assert Settings.from_env({}, env_file=None).body_timeout == 10.0
    assert Settings.from_env({"OSMA_ROUTER_BODY_TIMEOUT": "2.5"}, env_file=None).body_timeout == 2.5
    with pytest.raises(ConfigError, match="OSMA_ROUTER_BODY_TIMEOUT"):
        Settings.from_env({"OSMA_ROUTER_BODY_TIMEOUT": "0"}, env_file=None)


SLOW_CLIENTS = 200
FAST_DELIVERIES = 50


def test_many_slow_clients_do_not_starve_prompt_ones(start_receiver: Any, redis: Redis) -> None:
    """200 connections trickle their bodies a byte at a time while 50 signed deliveries are
    sent promptly: each of those is accepted at once, and each slow one ends in a 408."""
    receiver = start_receiver(ROUTES, OSMA_ROUTER_BODY_TIMEOUT="4")
    slow_body = make_event(event_id="evt_slowloris")
    sockets = [open_slow_request(receiver.url, slow_body, sent=1) for _ in range(SLOW_CLIENTS)]
    stop = threading.Event()

    def trickle() -> None:
        for position in range(1, len(slow_body)):
            if stop.wait(0.5):
                return
            for sock in sockets:
                try:
                    sock.sendall(slow_body[position : position + 1])
                except OSError:
                    pass

    feeder = threading.Thread(target=trickle)
    feeder.start()
    started = time.monotonic()
    try:
        latencies = []
        with httpx.Client(base_url=receiver.url, timeout=10) as client:
            for n in range(FAST_DELIVERIES):
                body = make_event(event_id=f"evt_prompt_{n}")
                sent = time.perf_counter()
                response = client.post("/webhooks/osma", content=body, headers=signature_headers(body))
                latencies.append(time.perf_counter() - sent)
                assert response.status_code == 202, response.text
        prompt_done = time.monotonic() - started
        answers = [read_answer(sock) for sock in sockets]
        slow_done = time.monotonic() - started
    finally:
        stop.set()
        feeder.join()
        for sock in sockets:
            sock.close()
    assert prompt_done < 4  # all of them before any slow client was even timed out
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert [(status, answer["error"]["type"], closed) for status, answer, closed in answers] == [
        (408, "request_timeout", True)
    ] * SLOW_CLIENTS
    assert slow_done < 4 + 5
    assert all(redis.exists(dedup_key("osma", f"evt_prompt_{n}")) for n in range(FAST_DELIVERIES))
    assert not redis.exists(dedup_key("osma", "evt_slowloris"))
    print(
        f"\n{FAST_DELIVERIES} prompt deliveries beside {SLOW_CLIENTS} slow clients: "
        f"max {max(latencies) * 1000:.1f} ms, "
        f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms"
    )


# -- replayed deliveries -----------------------------------------------------------------


def test_a_delivery_replayed_within_the_tolerance_is_a_duplicate_with_no_second_effect(
    start_receiver: Any, redis: Redis
) -> None:
    receiver = start_receiver(ROUTES)
    body = make_event(event_id="evt_replayed")
    headers = signature_headers(body)  # what an eavesdropper would have captured
    assert receiver.post(body, headers).status_code == 202
    receiver.drain()
    assert handled(redis) == ["evt_replayed|sample.record||1"]
    for _ in range(3):
        again = receiver.post(body, headers)
        assert again.status_code == 200 and again.json() == {"status": "duplicate", "id": "evt_replayed"}
    assert redis.llen("rq:queue:osma-router") == 0
    receiver.drain()
    assert handled(redis) == ["evt_replayed|sample.record||1"]


def test_an_old_delivery_is_rejected_by_its_timestamp_even_once_its_id_is_forgotten(
    start_receiver: Any, redis: Redis
) -> None:
    """The dedup window has passed (1 s here) and the replay comes 301 s after signing: the
    timestamp alone stops it, and moving `t` forward breaks the signature."""
    # A 1 s window covers a tolerance of 0 only (docs/contract.md, "Replay window").
    now = [float(int(time.time()))]
    receiver = start_receiver(
        ROUTES, clock=lambda: now[0], OSMA_ROUTER_DEDUP_TTL="1", OSMA_ROUTER_SIGNATURE_TOLERANCE="0"
    )
    body = make_event(event_id="evt_old")
    headers = signature_headers(body, timestamp=int(now[0]))
    assert receiver.post(body, headers).status_code == 202
    receiver.drain()
    deadline = time.monotonic() + 5
    while redis.exists(dedup_key("osma", "evt_old")):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    now[0] += 301
    stale = receiver.post(body, headers)
    assert stale.status_code == 401 and stale.json()["error"]["type"] == "timestamp_out_of_tolerance"
    original_t, v1 = headers["osma-signature"].split(",")
    moved = {**headers, "osma-signature": f"t={int(now[0])},{v1}"}
    forged = receiver.post(body, moved)
    assert forged.status_code == 401 and forged.json()["error"]["type"] == "signature_mismatch"
    assert redis.llen("rq:queue:osma-router") == 0 and not redis.exists(dedup_key("osma", "evt_old"))
    receiver.drain()
    assert handled(redis) == ["evt_old|sample.record||1"]
