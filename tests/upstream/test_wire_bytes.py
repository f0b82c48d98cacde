"""The exact requests the OGSM and Osma clients send, as the fakes receive them: method,
path, query, the headers that matter and the body bytes, for every client method, from
the blocking and the async client alike (docs/contract.md, "Upstream APIs")."""

from __future__ import annotations

import asyncio
import base64
import inspect
from datetime import date
from typing import Any

import pytest

from receiver.testing.fake_osma import LIVE_KEY, TEST_KEY
from receiver.upstream.ogsm import AsyncOgsmClient, OgsmClient
from receiver.upstream.osma import API_VERSION, AsyncOsmaClient, OsmaClient

# Every header a request is pinned on: present with this value, or absent.
PINNED = ("content-type", "authorization", "osma-api-key", "osma-api-version", "idempotency-key")
JSON = {"content-type": "application/json"}

Wire = tuple[str, str, dict[str, str], dict[str, str], bytes]  # method, path, query, headers, body


def seen(requests: list[Any]) -> list[Wire]:
    return [
        (r.method, r.path, r.query, {h: r.headers[h] for h in PINNED if h in r.headers}, r.body)
        for r in requests
    ]


def call(client_class: Any, options: dict[str, Any], method: str, *args: Any, **kwargs: Any) -> None:
    """Open a client, make one call and consume its answer: a value, an awaitable, pages."""
    resource, name = method.split(".")
    if client_class in (OgsmClient, OsmaClient):
        with client_class(**options) as client:
            result = getattr(getattr(client, resource), name)(*args, **kwargs)
            if inspect.isgenerator(result):
                list(result)
        return

    async def scenario() -> None:
        # One loop for the client's whole life: its connections belong to it.
        async with client_class(**options) as client:
            result = getattr(getattr(client, resource), name)(*args, **kwargs)
            if inspect.isasyncgen(result):
                [item async for item in result]
            else:
                await result

    asyncio.run(scenario())


# --- OGSM ------------------------------------------------------------------------------

BASIC = {"authorization": "Basic " + base64.b64encode(b"osma-router:fake-ogsm-password").decode()}
MEASURED = b'{"goal_report":{"goal":{"id":123},"at":"2022-12-14","current_value":45.6}}'
KPI_MEASURED = b'{"indicator_report":{"indicator":{"id":456},"at":"2024-10-09","current_value":3}}'
NEW_ACTION = {"title": "Call Daisy", "strategies": [{"id": 7}]}
CHANGED = {"progress": 50, "status": {"name": "doing"}}
NEW_ACTION_BARE = b'{"title":"Call Daisy","strategies":[{"id":7}]}'
CHANGED_BARE = b'{"progress":50,"status":{"name":"doing"}}'


def ogsm_wire(method: str, path: str, body: bytes = b"") -> Wire:
    return (method, "/api/v2/" + path, {}, {**(JSON if body else {}), **BASIC}, body)


# fmt: off
OGSM_CASES = [
    *[
        pytest.param(f"{name}.list", (), "wrapped", ogsm_wire("GET", f"{name}.json"), id=f"{name}.list")
        for name in ("objectives", "goals", "strategies", "indicators", "actions")
    ],
    # OGSM documents no filters: a filtered list asks for everything.
    pytest.param("goal_reports.list", (123,), "wrapped", ogsm_wire("GET", "goal_reports.json"),
                 id="goal_reports.list"),
    pytest.param("indicator_reports.list", (456,), "wrapped", ogsm_wire("GET", "indicator_reports.json"),
                 id="indicator_reports.list"),
    pytest.param("goal_reports.create", (123, "2022-12-14", 45.6), "wrapped",
                 ogsm_wire("POST", "goal_reports.json", MEASURED), id="goal_reports.create"),
    pytest.param("indicator_reports.create", (456, date(2024, 10, 9), 3), "wrapped",
                 ogsm_wire("POST", "indicator_reports.json", KPI_MEASURED), id="indicator_reports.create"),
    pytest.param("actions.create", (NEW_ACTION,), "wrapped",
                 ogsm_wire("POST", "actions.json", b'{"action":' + NEW_ACTION_BARE + b"}"),
                 id="actions.create-wrapped"),
    pytest.param("actions.create", (NEW_ACTION,), "bare",
                 ogsm_wire("POST", "actions.json", NEW_ACTION_BARE),
                 id="actions.create-bare"),
    pytest.param("actions.update", (77, CHANGED), "wrapped",
                 ogsm_wire("PATCH", "actions/77.json", b'{"action":' + CHANGED_BARE + b"}"),
                 id="actions.update-wrapped"),
    pytest.param("actions.update", (77, CHANGED), "bare",
                 ogsm_wire("PATCH", "actions/77.json", CHANGED_BARE),
                 id="actions.update-bare"),
    pytest.param("actions.delete", (77,), "wrapped", ogsm_wire("DELETE", "actions/77.json"),
                 id="actions.delete"),
]
# fmt: on


@pytest.mark.parametrize("client_class", [OgsmClient, AsyncOgsmClient], ids=["sync", "async"])
@pytest.mark.parametrize(("method", "args", "action_body", "expected"), OGSM_CASES)
def test_ogsm_requests_on_the_wire(fake_ogsm, client_class, method, args, action_body, expected):
    fake_ogsm.add_goal(id=123)
    fake_ogsm.add_indicator(id=456)
    fake_ogsm.add_strategy(id=7)
    fake_ogsm.add_action(id=77, title="Call Daisy")
    fake_ogsm.action_body = action_body
    options = {
        "base_url": fake_ogsm.base_url,
        "username": fake_ogsm.username,
        "password": fake_ogsm.password,
        "action_body": action_body,
    }
    call(client_class, options, method, *args)
    assert seen(fake_ogsm.requests) == [expected]
    assert all(r.status < 300 for r in fake_ogsm.requests)  # the fake took exactly these bytes


# --- Osma ------------------------------------------------------------------------------

TASK = b'{"template":"call_member","member":"mem_1","metadata":{"source":"osma-router"}}'
MEMBER = b'{"name":"Daisy Demo","email":"daisy@example.com"}'
SYNCED = b'{"metadata":{"synced":"yes","n":3}}'
INTERNAL_ID = b'{"metadata":{"internal_id":"92cb"}}'


def osma_wire(
    method: str, path: str, query: dict[str, str] | None = None, body: bytes = b"", key: str = ""
) -> Wire:
    headers = {**(JSON if body else {}), "osma-api-key": TEST_KEY, "osma-api-version": API_VERSION}
    if key:
        headers["idempotency-key"] = key
    return (method, path, query or {}, headers, body)


def page(path: str, **query: str) -> Wire:
    return osma_wire("GET", path, query)


# fmt: off
OSMA_CASES = [
    pytest.param("tasks.get", ("task_1",), {}, [osma_wire("GET", "/tasks/task_1")], id="tasks.get"),
    pytest.param("tasks.list", (), {}, [page("/tasks")], id="tasks.list"),
    pytest.param("tasks.list", (), {"limit": 1, "starting_after": "task_1"},
                 [page("/tasks", limit="1", starting_after="task_1")], id="tasks.list-after"),
    pytest.param("tasks.list", (), {"limit": 1, "ending_before": "task_2"},
                 [page("/tasks", limit="1", ending_before="task_2")], id="tasks.list-before"),
    pytest.param("tasks.iterate", (), {"limit": 1},
                 [page("/tasks", limit="1"), page("/tasks", limit="1", starting_after="task_1")],
                 id="tasks.iterate"),
    pytest.param("tasks.create",
                 ({"template": "call_member", "member": "mem_1", "metadata": {"source": "osma-router"}},),
                 {"idempotency_key": "evt_1|r1|create"},
                 [osma_wire("POST", "/tasks", body=TASK, key="evt_1|r1|create")], id="tasks.create"),
    pytest.param("tasks.update", ("task_1", {"metadata": {"synced": "yes", "n": 3}}),
                 {"idempotency_key": "k" * 255},
                 [osma_wire("POST", "/tasks/task_1", body=SYNCED, key="k" * 255)],
                 id="tasks.update"),
    pytest.param("tasks.delete", ("task_1",), {}, [osma_wire("DELETE", "/tasks/task_1")], id="tasks.delete"),
    pytest.param("members.get", ("mem_1",), {}, [osma_wire("GET", "/members/mem_1")], id="members.get"),
    pytest.param("members.list", (), {"limit": 100}, [page("/members", limit="100")], id="members.list"),
    pytest.param("members.iterate", (), {"limit": 1, "ending_before": "mem_2"},
                 [page("/members", limit="1", ending_before="mem_2")], id="members.iterate-backwards"),
    pytest.param("members.create", ({"name": "Daisy Demo", "email": "daisy@example.com"},),
                 {"idempotency_key": "m-create"},
                 [osma_wire("POST", "/members", body=MEMBER, key="m-create")], id="members.create"),
    pytest.param("members.update", ("mem_1", {"metadata": {"internal_id": "92cb"}}),
                 {"idempotency_key": "m-update"},
                 [osma_wire("POST", "/members/mem_1", body=INTERNAL_ID, key="m-update")],
                 id="members.update"),
    pytest.param("members.delete", ("mem_1",), {}, [osma_wire("DELETE", "/members/mem_1")],
                 id="members.delete"),
    pytest.param("users.get", ("usr_1",), {}, [osma_wire("GET", "/users/usr_1")], id="users.get"),
    pytest.param("users.list", (), {"limit": 5}, [page("/users", limit="5")], id="users.list"),
    pytest.param("users.iterate", (), {}, [page("/users", limit="100")], id="users.iterate"),
    pytest.param("files.get", ("file_1",), {}, [osma_wire("GET", "/files/file_1")], id="files.get"),
]
# fmt: on


@pytest.mark.parametrize("client_class", [OsmaClient, AsyncOsmaClient], ids=["sync", "async"])
@pytest.mark.parametrize(("method", "args", "kwargs", "expected"), OSMA_CASES)
def test_osma_requests_on_the_wire(fake_osma, client_class, method, args, kwargs, expected):
    for task_id in ("task_1", "task_2"):
        fake_osma.add_task(id=task_id)
    for member_id in ("mem_1", "mem_2"):
        fake_osma.add_member(id=member_id)
    fake_osma.add_user(id="usr_1")
    fake_osma.add_file(id="file_1")
    call(client_class, {"api_key": TEST_KEY, "base_url": fake_osma.url}, method, *args, **kwargs)
    assert seen(fake_osma.requests) == expected
    assert all(r.status < 300 for r in fake_osma.requests)


def test_the_key_and_version_are_sent_as_configured(fake_osma):
    with OsmaClient(LIVE_KEY, fake_osma.url, api_version="2024-01-01") as client:
        client.tasks.list()
    assert seen(fake_osma.requests) == [
        ("GET", "/tasks", {}, {"osma-api-key": LIVE_KEY, "osma-api-version": "2024-01-01"}, b"")
    ]
