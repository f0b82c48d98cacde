"""Webhooks from the fake Osma: a task written through the API comes back as a signed
event, as real Osma sends it; and `osma.task_metadata`, whose own write comes back as a
`task.updated`, writes once and the loop ends (docs/upstream.md, "osma.task_metadata")."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.exceptions import Rejected, Unavailable
from receiver.model.signature import sign, verify_signature
from receiver.settings import Secret
from receiver.store.ledger import EffectsLedger
from receiver.testing import LiveServer, task_event
from receiver.testing.fake_osma import LIVE_KEY, TEST_KEY
from receiver.testing.pytest_plugin import SECRET
from receiver.upstream.osma import OsmaClient

HOOK_SECRET = "whsec_fake_webhooks"


class Endpoint:
    """A webhook endpoint that keeps what it gets, byte for byte, and answers 202 (after
    `delay` seconds)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.received.append((dict(request.headers), body))
            time.sleep(self.delay)  # blocks this server only: the fake's API is elsewhere
            return Response(status_code=202)

        self.server = LiveServer(Starlette(routes=[Route("/hooks", hook, methods=["POST"])]))
        self.url = self.server.url + "/hooks"


@pytest.fixture
def endpoint():
    made = Endpoint()
    with made.server:
        yield made


def test_task_writes_come_back_signed_as_osma_signs(fake_osma, endpoint):
    fake_osma.send_webhooks_to(endpoint.url, HOOK_SECRET)
    with OsmaClient(TEST_KEY, fake_osma.url) as osma:
        created = osma.tasks.create({"template": "call_member"}, idempotency_key="c1")
        osma.tasks.create({"template": "call_member"}, idempotency_key="c1")  # replayed: no write
        updated = osma.tasks.update(created["id"], {"metadata": {"synced": "yes"}}, idempotency_key="u1")
        osma.tasks.delete(created["id"])  # not a create or an update
        with pytest.raises(Rejected, match="400"):
            osma.tasks.update(created["id"], {"colour": "red"}, idempotency_key="u2")  # refused: no write
        osma.members.create({"name": "Daisy Demo"}, idempotency_key="m1")  # not a task
        fake_osma.fail(502, method="POST", after=True)  # the write happens, its answer is lost
        with pytest.raises(Unavailable):
            osma.tasks.update(created["id"], {"priority": "urgent"}, idempotency_key="u3")
    fake_osma.wait_for_webhooks()

    deliveries = fake_osma.webhook_deliveries
    assert [(d.type, d.task_id, d.url, d.status, d.error) for d in deliveries] == [
        ("task.created", created["id"], endpoint.url, 202, None),
        ("task.updated", created["id"], endpoint.url, 202, None),
        ("task.updated", created["id"], endpoint.url, 202, None),
    ]
    assert [body for _, body in endpoint.received] == [d.body for d in deliveries]
    for (headers, body), delivery in zip(endpoint.received, deliveries, strict=True):
        assert headers["content-type"] == "application/json"
        header = headers["osma-signature"]
        assert header == delivery.signature
        timestamp = int(re.fullmatch(r"t=(\d+),v1=[0-9a-f]{64}", header).group(1))
        assert header == sign(body, HOOK_SECRET, timestamp)
        assert abs(time.time() - timestamp) < 60
        assert verify_signature(body, header, [Secret(HOOK_SECRET)], now=time.time()) == timestamp
    events = [d.event for d in deliveries]
    assert all(set(e) == {"id", "object", "type", "created_at", "live_mode", "data"} for e in events)
    assert all(e["id"].startswith("evt_") and e["object"] == "event" for e in events)
    assert len({e["id"] for e in events}) == 3
    assert all(datetime.fromisoformat(e["created_at"]).utcoffset() is not None for e in events)
    assert [e["live_mode"] for e in events] == [False, False, False]
    assert events[0]["data"]["object"] == created and events[1]["data"]["object"] == updated
    assert events[2]["data"]["object"]["priority"] == "urgent"


def test_live_mode_comes_from_the_key(fake_osma, endpoint):
    fake_osma.send_webhooks_to(endpoint.url, HOOK_SECRET)
    with OsmaClient(LIVE_KEY, fake_osma.url) as osma:
        osma.tasks.create({"template": "call_member"}, idempotency_key="live-1")
    fake_osma.wait_for_webhooks()
    (delivery,) = fake_osma.webhook_deliveries
    assert delivery.event["live_mode"] is True and delivery.event["data"]["object"]["live_mode"] is True


def test_delivery_does_not_hold_up_the_api_answer(fake_osma):
    slow = Endpoint(delay=1.5)
    with slow.server, OsmaClient(TEST_KEY, fake_osma.url) as osma:
        fake_osma.send_webhooks_to(slow.url, HOOK_SECRET)
        started = time.monotonic()
        osma.tasks.create({"template": "call_member"}, idempotency_key="slow-1")
        answered = time.monotonic() - started
        fake_osma.wait_for_webhooks()
        assert answered < 1.0, f"the API answered after {answered:.2f} s, expected well under 1.5 s"
        assert [d.status for d in fake_osma.webhook_deliveries] == [202]


def test_stopping_and_an_unreachable_endpoint(fake_osma, endpoint):
    task = fake_osma.add_task(template="call_member")  # seeding is not an API write
    with OsmaClient(TEST_KEY, fake_osma.url) as osma:
        fake_osma.send_webhooks_to(endpoint.url, HOOK_SECRET)
        fake_osma.send_webhooks_to(None)
        osma.tasks.update(task["id"], {"priority": "urgent"}, idempotency_key="s1")
        fake_osma.wait_for_webhooks()
        assert fake_osma.webhook_deliveries == [] and endpoint.received == []

        gone = Endpoint()  # never started: nothing listens on its port
        fake_osma.send_webhooks_to(gone.url, HOOK_SECRET)
        osma.tasks.update(task["id"], {"priority": "routine"}, idempotency_key="s2")
        fake_osma.wait_for_webhooks()
    (delivery,) = fake_osma.webhook_deliveries
    assert delivery.status is None and delivery.error == "ConnectError"
    with pytest.raises(ValueError, match="secret"):
        fake_osma.send_webhooks_to(endpoint.url)
    fake_osma.reset()
    assert fake_osma.webhook_deliveries == []


# --- the write-back loop through a receiver and a worker --------------------------------

METADATA = """
[[routes]]
handler = "osma.task_metadata"
metadata = { synced = "yes" }
backoff = [0]
"""


def queued(router, redis) -> int:
    return sum(
        Queue(name, connection=redis).count + ScheduledJobRegistry(name, connection=redis).count
        for name in router.queues
    )


@pytest.mark.parametrize("osma_router_routes", [METADATA])
def test_a_metadata_write_back_comes_back_once_and_the_loop_ends(osma_router, fake_osma, osma_router_redis):
    task = fake_osma.add_task(template="follow_up_call")
    fake_osma.send_webhooks_to(osma_router.url + "/webhooks/osma", SECRET)
    answer = osma_router.post(task_event("task.completed", {**task, "status": "completed"}))
    assert answer.status_code == 202 and answer.json()["jobs"] == 1

    rounds = 0
    while queued(osma_router, osma_router_redis) and rounds < 5:
        osma_router.drain()
        fake_osma.wait_for_webhooks()  # what the jobs wrote has come back to the receiver
        rounds += 1
    assert queued(osma_router, osma_router_redis) == 0, f"still jobs queued after {rounds} rounds"
    # One drain may run both the completion's job and the echo's, if the echo lands before
    # the burst worker finds its queue empty; two drains always do.
    assert rounds <= 2

    assert len(fake_osma.requests_to("POST", f"/tasks/{task['id']}")) == 1
    assert fake_osma.task(task["id"])["metadata"] == {"synced": "yes"}
    (echo,) = fake_osma.webhook_deliveries
    assert (echo.type, echo.task_id, echo.status) == ("task.updated", task["id"], 202)
    assert echo.event["data"]["object"]["metadata"] == {"synced": "yes"}
    # The echo was accepted (202, not a duplicate), and its job ran and chose to write nothing.
    assert EffectsLedger(osma_router_redis).effects_of(echo.event_id)["osma.task_metadata"].result == {
        "reason": "the task already holds these values"
    }
    assert not any(FailedJobRegistry(name, connection=osma_router_redis).count for name in osma_router.queues)

    osma_router.drain()  # once more: nothing left to run, nothing written, nothing sent
    fake_osma.wait_for_webhooks()
    assert len(fake_osma.requests_to("POST", f"/tasks/{task['id']}")) == 1
    assert len(fake_osma.webhook_deliveries) == 1
