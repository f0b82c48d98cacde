"""The Osma client against the fake Osma over real HTTP: headers, idempotency keys,
pagination, metadata limits, and the mapping of failures onto the exception tree."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from receiver.exceptions import InvalidRequest, RateLimited, Rejected, Unavailable
from receiver.store.server import free_port
from receiver.testing.fake_osma import LIVE_KEY, TEST_KEY
from receiver.upstream.http import retry_after_seconds
from receiver.upstream.osma import API_VERSION, AsyncOsmaClient, OsmaClient, validate_metadata


@pytest.fixture
def osma(fake_osma):
    with OsmaClient(TEST_KEY, fake_osma.url) as client:
        yield client


def test_every_call_carries_the_key_and_the_pinned_version(osma, fake_osma):
    task = fake_osma.add_task(template="update_blood_pressure")
    assert osma.tasks.get(task["id"])["template"] == "update_blood_pressure"
    (request,) = fake_osma.requests
    assert request.headers["osma-api-key"] == TEST_KEY
    assert request.headers["osma-api-version"] == API_VERSION
    assert request.path == f"/tasks/{task['id']}"


def test_posts_carry_the_idempotency_key_and_a_retry_creates_nothing_new(osma, fake_osma):
    body = {"template": "update_blood_pressure", "description": "Update member's blood pressure"}
    first = osma.tasks.create(body, idempotency_key="evt_1|r1|create")
    again = osma.tasks.create(body, idempotency_key="evt_1|r1|create")
    assert again == first
    assert len(fake_osma.tasks()) == 1
    posts = fake_osma.requests_to("POST", "/tasks")
    assert [r.headers["idempotency-key"] for r in posts] == ["evt_1|r1|create"] * 2
    assert posts[0].headers["content-type"] == "application/json"
    assert posts[0].json == body


def test_idempotency_key_is_required_and_bounded(osma, fake_osma):
    with pytest.raises(TypeError):
        osma.tasks.create({"template": "x"})  # type: ignore[call-arg]
    with pytest.raises(InvalidRequest, match="255"):
        osma.tasks.create({"template": "x"}, idempotency_key="k" * 256)
    assert fake_osma.requests == []
    osma.tasks.create({"template": "x"}, idempotency_key="k" * 255)


def test_update_merges_metadata_and_delete_is_soft(osma, fake_osma):
    task = fake_osma.add_task(metadata={"a": "1"})
    updated = osma.tasks.update(task["id"], {"metadata": {"b": "2"}}, idempotency_key="u1")
    assert updated["metadata"] == {"a": "1", "b": "2"}
    deleted = osma.tasks.delete(task["id"])
    assert deleted["status"] == "deleted" and deleted["status_transitions"][-1]["to"] == "deleted"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({f"k{i}": "v" for i in range(51)}, "51 keys"),
        ({"k" * 51: "v"}, "51 characters"),
        ({"key": "v" * 501}, "501 characters"),
        ({"key": {"nested": 1}}, "string or a number"),
        ("not an object", "object"),
    ],
)
def test_metadata_over_the_limits_is_refused_before_sending(osma, fake_osma, metadata, message):
    task = fake_osma.add_task()
    with pytest.raises(InvalidRequest, match=message) as caught:
        osma.tasks.update(task["id"], {"metadata": metadata}, idempotency_key="m1")
    assert "v" * 501 not in str(caught.value)  # a value is never echoed: it may be member data
    assert fake_osma.requests == []


def test_metadata_at_the_limits_is_sent():
    validate_metadata({f"{i:02d}" + "k" * 48: "v" * 500 for i in range(50)})
    validate_metadata({"n": 3, "gone": None})


def test_iterate_walks_every_page_and_list_gives_one(osma, fake_osma):
    made = [fake_osma.add_task(template=f"t{i}")["id"] for i in range(250)]
    assert [t["id"] for t in osma.tasks.iterate()] == made
    assert len(fake_osma.requests_to("GET", "/tasks")) == 3
    assert [r.query.get("starting_after") for r in fake_osma.requests_to("GET", "/tasks")] == [
        None,
        made[99],
        made[199],
    ]
    page = osma.tasks.list(limit=3, starting_after=made[0])
    assert page["has_next"] is True and [t["id"] for t in page["data"]] == made[1:4]
    assert [t["id"] for t in osma.tasks.iterate(limit=7, starting_after=made[240])] == made[241:]


def test_iterate_backwards_with_ending_before(osma, fake_osma):
    made = [fake_osma.add_member(name=f"m{i}")["id"] for i in range(12)]
    seen = [m["id"] for m in osma.members.iterate(limit=5, ending_before=made[11])]
    assert sorted(seen) == sorted(made[:11])


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"limit": 101}, {"limit": True}, {"starting_after": "a", "ending_before": "b"}]
)
def test_bad_pagination_is_refused_before_sending(osma, fake_osma, kwargs):
    with pytest.raises(InvalidRequest):
        osma.tasks.list(**kwargs)
    assert fake_osma.requests == []


def test_users_are_the_same_in_both_modes_tasks_are_not(fake_osma):
    user = fake_osma.add_user(name="Una")
    fake_osma.add_task(template="only-in-test-mode")
    with OsmaClient(LIVE_KEY, fake_osma.url) as live:
        assert live.users.get(user["id"])["name"] == "Una"
        assert live.tasks.list()["data"] == []
        file = fake_osma.add_file(mode="live")
        assert live.files.get(file["id"])["url"].startswith("https://")


def test_a_4xx_is_rejected_with_osmas_error_and_the_request_id(osma, fake_osma):
    with pytest.raises(Rejected) as caught:
        osma.tasks.create({"template": "x", "colour": "red"}, idempotency_key="bad")
    error = caught.value
    assert error.status_code == 400
    assert "invalid_request_error" in str(error) and "colour" in str(error)
    assert "request-id req_fake_" in str(error)
    assert '"params"' in error.body


def test_an_unknown_key_is_rejected(fake_osma):
    with OsmaClient("sk_test_wrong", fake_osma.url) as client, pytest.raises(Rejected) as caught:
        client.tasks.list()
    assert caught.value.status_code == 401 and "authentication_error" in str(caught.value)


def test_5xx_is_unavailable(osma, fake_osma):
    fake_osma.fail(503)
    with pytest.raises(Unavailable) as caught:
        osma.tasks.list()
    assert caught.value.status_code == 503


def test_a_refused_connection_and_a_timeout_are_unavailable(fake_osma):
    with OsmaClient(TEST_KEY, f"http://127.0.0.1:{free_port()}") as client, pytest.raises(Unavailable):
        client.tasks.list()
    fake_osma.slow(1.0)
    with (
        OsmaClient(TEST_KEY, fake_osma.url, timeout=0.2) as client,
        pytest.raises(Unavailable, match="timed out"),
    ):
        client.tasks.list()


def test_a_short_429_is_waited_out_in_the_client(osma, fake_osma):
    fake_osma.fail(429, retry_after=1)
    started = time.monotonic()
    assert osma.tasks.list()["data"] == []
    assert time.monotonic() - started >= 1.0
    first, second = fake_osma.requests
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.0  # not before its Retry-After


def test_a_long_429_is_raised_with_its_delay(fake_osma):
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    fake_osma.fail(429, retry_after=later)
    with OsmaClient(TEST_KEY, fake_osma.url) as client, pytest.raises(RateLimited) as caught:
        client.tasks.list()
    assert 25 <= caught.value.retry_after <= 30
    assert len(fake_osma.requests) == 1


@pytest.mark.parametrize(
    ("header", "expected"), [("3", 3.0), ("0.5", 0.5), (None, 1.0), ("soon", 1.0), ("-4", 0.0)]
)
def test_retry_after_in_seconds(header, expected):
    assert retry_after_seconds(header) == expected


def test_retry_after_as_an_http_date():
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_ids_cannot_leave_their_path_segment(osma, fake_osma):
    with pytest.raises(InvalidRequest):
        osma.tasks.get("..")
    with pytest.raises(Rejected) as caught:
        osma.tasks.get("../members")
    assert caught.value.status_code == 404  # not the member list at /tasks/../members


def test_the_async_client_has_the_same_resources(fake_osma):
    made = [fake_osma.add_task(template=f"t{i}")["id"] for i in range(120)]

    async def scenario():
        async with AsyncOsmaClient(TEST_KEY, fake_osma.url) as client:
            seen = [t["id"] async for t in client.tasks.iterate()]
            task = await client.tasks.update(made[0], {"metadata": {"k": "v"}}, idempotency_key="a1")
            fake_osma.fail(503)
            with pytest.raises(Unavailable):
                await client.tasks.get(made[0])
            return seen, task

    seen, task = asyncio.run(scenario())
    assert seen == made and task["metadata"] == {"k": "v"}


def test_logs_carry_the_request_id_and_no_payload(osma, fake_osma, caplog):
    caplog.set_level("INFO", logger="osma_router.upstream")
    task = fake_osma.add_task(description="Daisy's blood pressure")
    osma.tasks.update(task["id"], {"description": "Daisy's blood pressure, again"}, idempotency_key="l1")
    (record,) = [r for r in caplog.records if r.name == "osma_router.upstream"]
    assert record.upstream_request_id.startswith("req_fake_")
    assert record.url == "POST /tasks/:id" and record.status == 200
    assert "Daisy" not in caplog.text


def test_a_non_json_success_is_unavailable():
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>proxy page</html>"))
    with (
        OsmaClient(TEST_KEY, "http://osma.invalid", transport=transport) as client,
        pytest.raises(Unavailable),
    ):
        client.tasks.list()
