"""The OGSM client against the fake OGSM over real HTTP: basic auth, JSON bodies,
`.json` paths, the documented shapes, errors; and the shared Osma rate budget."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from datetime import date

import pytest

from receiver.exceptions import InvalidRequest, Rejected, Unavailable
from receiver.upstream.ogsm import AsyncOgsmClient, OgsmClient
from receiver.upstream.ratelimit import RateLimiter


@pytest.fixture
def ogsm(fake_ogsm):
    with OgsmClient(fake_ogsm.base_url, fake_ogsm.username, fake_ogsm.password) as client:
        yield client


def test_indicator_report_is_posted_as_documented(ogsm, fake_ogsm):
    fake_ogsm.add_indicator(id=456)
    created = ogsm.indicator_reports.create(456, date(2024, 10, 1), 45.6)
    assert created["id"] and created["indicator"] == {"id": 456} and created["current_value"] == 45.6
    (request,) = fake_ogsm.requests
    assert request.method == "POST" and request.path == "/api/v2/indicator_reports.json"
    assert request.headers["content-type"] == "application/json"
    expected = base64.b64encode(f"{fake_ogsm.username}:{fake_ogsm.password}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.json == {
        "indicator_report": {"indicator": {"id": 456}, "at": "2024-10-01", "current_value": 45.6}
    }


def test_goal_report_and_filtered_listing(ogsm, fake_ogsm):
    fake_ogsm.add_goal(id=123)
    fake_ogsm.add_goal(id=124)
    ogsm.goal_reports.create(123, "2022-12-14", 1)
    ogsm.goal_reports.create(123, "2022-12-15", 2)
    ogsm.goal_reports.create(124, "2022-12-14", 3)
    assert [r["current_value"] for r in ogsm.goal_reports.list(123)] == [1, 2]
    assert [r["current_value"] for r in ogsm.goal_reports.list(123, at="2022-12-14")] == [1]
    assert len(ogsm.goal_reports.list()) == 3
    assert fake_ogsm.requests[-1].query == {}  # filtering happens here: OGSM documents no filters


def test_reads_of_every_resource(ogsm, fake_ogsm):
    fake_ogsm.add_objective(title="Grow")
    fake_ogsm.add_strategy(id=7, title="Care")
    fake_ogsm.add_indicator(id=456, title="BP updates")
    assert [o["title"] for o in ogsm.objectives.list()] == ["Grow"]
    assert [s["id"] for s in ogsm.strategies.list()] == [7]
    assert [i["id"] for i in ogsm.indicators.list()] == [456]
    assert ogsm.goals.list() == [] and ogsm.actions.list() == []
    assert {r.path for r in fake_ogsm.requests} == {
        f"/api/v2/{n}.json" for n in ("objectives", "strategies", "indicators", "goals", "actions")
    }


def test_actions_create_update_delete(ogsm, fake_ogsm):
    fake_ogsm.add_strategy(id=7)
    action = ogsm.actions.create(
        {"title": "Call Daisy", "strategies": [{"id": 7}], "labels": [{"name": "osma"}]}
    )
    updated = ogsm.actions.update(action["id"], {"progress": 100, "status": {"name": "done"}})
    assert updated["progress"] == 100 and updated["title"] == "Call Daisy"
    assert ogsm.actions.delete(action["id"])["id"] == action["id"]
    assert fake_ogsm.actions() == []
    assert [(r.method, r.path) for r in fake_ogsm.requests] == [
        ("POST", "/api/v2/actions.json"),
        ("PATCH", f"/api/v2/actions/{action['id']}.json"),
        ("DELETE", f"/api/v2/actions/{action['id']}.json"),
    ]


def test_bad_credentials_and_bad_shapes_are_rejected(fake_ogsm, ogsm):
    with (
        OgsmClient(fake_ogsm.base_url, fake_ogsm.username, "wrong") as client,
        pytest.raises(Rejected) as caught,
    ):
        client.goals.list()
    assert caught.value.status_code == 401
    with pytest.raises(Rejected) as caught:
        ogsm.indicator_reports.create(999, "2024-01-01", 1)  # no such KPI
    assert caught.value.status_code == 422 and "999" in caught.value.body
    with pytest.raises(Rejected) as caught:
        ogsm.actions.update(12345, {"progress": 5})
    assert caught.value.status_code == 404


@pytest.mark.parametrize(
    ("at", "value"),
    [
        ("2024-1-1", 1),
        ("yesterday", 1),
        ("2024-01-01", True),
        ("2024-01-01", float("nan")),
        ("2024-01-01", "3"),
    ],
)
def test_bad_measurements_are_refused_before_sending(ogsm, fake_ogsm, at, value):
    with pytest.raises(InvalidRequest):
        ogsm.indicator_reports.create(456, at, value)
    assert fake_ogsm.requests == []


def test_the_fake_refuses_what_ogsm_would(fake_ogsm):
    import httpx

    fake_ogsm.add_indicator(id=456)
    auth = (fake_ogsm.username, fake_ogsm.password)
    url = f"{fake_ogsm.base_url}/indicator_reports.json"
    body = {"indicator_report": {"indicator": {"id": 456}, "at": "2024-01-01", "current_value": 1}}
    assert (
        httpx.post(
            url, auth=auth, content=str(body).encode(), headers={"content-type": "text/plain"}
        ).status_code
        == 415
    )
    assert httpx.post(url, auth=auth, json={"indicator": {"id": 456}}).status_code == 422
    assert (
        httpx.post(
            url, auth=auth, json={"indicator_report": {**body["indicator_report"], "x": 1}}
        ).status_code
        == 422
    )
    assert httpx.post(url, auth=auth, json=body).status_code == 201


def test_faults_map_onto_the_exception_tree(ogsm, fake_ogsm):
    fake_ogsm.fail(502)
    with pytest.raises(Unavailable):
        ogsm.goals.list()
    fake_ogsm.fail(400, body={"error": "bad"})
    with pytest.raises(Rejected) as caught:
        ogsm.goals.list()
    assert caught.value.body == '{"error":"bad"}'
    assert ogsm.goals.list() == []


def test_a_slow_answer_after_the_effect_loses_the_answer_not_the_effect(fake_ogsm):
    fake_ogsm.add_indicator(id=456)
    fake_ogsm.slow(0.6, after=True)
    client = OgsmClient(fake_ogsm.base_url, fake_ogsm.username, fake_ogsm.password, timeout=0.2)
    with client, pytest.raises(Unavailable, match="timed out"):
        client.indicator_reports.create(456, "2024-01-01", 1)
    assert len(fake_ogsm.indicator_reports()) == 1


def test_the_async_client(fake_ogsm):
    fake_ogsm.add_indicator(id=456)

    async def scenario():
        async with AsyncOgsmClient(fake_ogsm.base_url, fake_ogsm.username, fake_ogsm.password) as client:
            await client.indicator_reports.create(456, "2024-01-01", 2)
            return await client.indicator_reports.list(456)

    assert [r["current_value"] for r in asyncio.run(scenario())] == [2]


def test_the_rate_budget_is_shared_through_redis(redis):
    """Four limiters (as in four workers) on one key stay within 20 requests a second."""
    limiters = [RateLimiter.for_osma(redis, "sk_test_shared") for _ in range(4)]
    starts: list[float] = []
    lock = threading.Lock()

    def work(limiter: RateLimiter) -> None:
        for _ in range(15):
            time.sleep(limiter.reserve("GET /tasks"))
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=work, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert busiest <= 20
    assert starts[-1] - starts[0] >= 2.5  # 60 requests at 16/s with a burst of 2


def test_live_and_test_keys_have_their_own_limits(redis):
    assert RateLimiter.for_osma(redis, "sk_live_x").per_second == 100
    assert RateLimiter.for_osma(redis, "sk_test_x").per_second == 20
    limiter = RateLimiter.for_osma(redis, "sk_test_y")
    assert limiter.reserve("GET /tasks") == 0.0
    assert limiter.reserve("GET /tasks") == 0.0  # the burst
    assert limiter.reserve("GET /tasks") > 0.0
    assert limiter.reserve("GET /members") == 0.0  # each endpoint has its own budget
