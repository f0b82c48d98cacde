"""The console over real HTTP, with real Redis, a real receiver, burst workers and the
fake OGSM: auth, CSRF, every page, retries as `failed retry` does them, and no member
data on any page."""

from __future__ import annotations

import subprocess
import uuid

from redis import Redis

from receiver.store.failed import FailedJobs
from receiver.store.trace import load_trace
from receiver.testing import task_event
from receiver.testing.fake_ogsm import FakeOgsm
from receiver.testing.pytest_plugin import RouterUnderTest
from receiver.testing.server import LiveServer
from tests.support import OSMA_ROUTER

from .conftest import MEMBER_NAME, TOKEN, ConsoleClient


def redis_of(router: RouterUnderTest) -> Redis:
    return Redis.from_url(router.settings.require_redis_url())


def completed_task(name: str = MEMBER_NAME) -> dict[str, object]:
    event = task_event("task.completed", {"id": f"task_{uuid.uuid4().hex[:8]}", "template": "bp"})
    event["data"]["object"]["member_name"] = name  # type: ignore[index]
    return dict(event)


def failed_event(osma_router: RouterUnderTest) -> str:
    """An event whose KPI job failed: the fake OGSM does not know indicator 456 yet."""
    event = completed_task()
    assert osma_router.post(event).status_code == 202
    osma_router.drain()
    return str(event["id"])


def test_every_page_needs_a_login_when_a_token_is_set(console_server: LiveServer) -> None:
    client = ConsoleClient(console_server.url)
    for path in ("/", "/events", "/failed", "/captures", "/events/evt_1", "/search?q=x"):
        answer = client.http.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
    wrong = client.http.post("/login", data={"csrf": client.csrf(), "token": "not-it", "next": "/"})
    assert wrong.status_code == 401
    assert client.http.get("/").status_code == 303
    right = client.login()
    assert right.status_code == 303
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.http.get("/").status_code == 200


def test_a_login_never_redirects_off_the_console(console_server: LiveServer) -> None:
    client = ConsoleClient(console_server.url)
    answer = client.http.post(
        "/login", data={"csrf": client.csrf(), "token": TOKEN, "next": "//evil.example/"}
    )
    assert answer.headers["location"] == "/"


def test_a_post_without_the_csrf_token_is_refused(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    failed_event(osma_router)
    [failed] = list(FailedJobs(redis_of(osma_router), osma_router.queues))
    for data in ({"job_id": failed.job_id}, {"job_id": failed.job_id, "csrf": "forged"}):
        answer = console.http.post("/failed/retry-one", data=data)
        assert answer.status_code == 403
    # Nothing was requeued.
    assert [job.job_id for job in FailedJobs(redis_of(osma_router), osma_router.queues)] == [failed.job_id]


def test_retry_from_the_event_page_does_what_failed_retry_does(
    console: ConsoleClient, osma_router: RouterUnderTest, fake_ogsm: FakeOgsm
) -> None:
    event_id = failed_event(osma_router)
    page = console.http.get(f"/events/{event_id}")
    assert page.status_code == 200 and "failed" in page.text
    [failed] = list(FailedJobs(redis_of(osma_router), osma_router.queues))
    confirm = console.http.get(f"/jobs/{failed.job_id}/retry")
    assert confirm.status_code == 200
    assert "No effect of this job is recorded as done" in confirm.text
    fake_ogsm.add_indicator(id=456)
    answer = console.post(
        "/failed/retry-one",
        {"job_id": failed.job_id, "back": f"/events/{event_id}"},
        f"/jobs/{failed.job_id}/retry",
    )
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"/events/{event_id}?notice=")
    assert list(FailedJobs(redis_of(osma_router), osma_router.queues)) == []
    osma_router.drain()
    assert [r["current_value"] for r in fake_ogsm.indicator_reports(456)] == [1]
    trace = load_trace(redis_of(osma_router), event_id, osma_router.settings)
    assert trace is not None and [job.state for job in trace.jobs] == ["succeeded"]
    assert [effect.state for effect in trace.effects] == ["done"]
    # The confirm step of a second retry would now say the effect is done.
    after = console.http.get(f"/events/{event_id}")
    assert "done" in after.text


def test_retry_all_matching_asks_then_requeues_every_match(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    for _ in range(3):
        failed_event(osma_router)
    confirm = console.http.get("/failed/retry?handler=ogsm.indicator_report")
    assert confirm.status_code == 200 and "Retry 3 job(s)" in confirm.text
    answer = console.post(
        "/failed/retry", {"handler": "ogsm.indicator_report"}, "/failed/retry?handler=ogsm.indicator_report"
    )
    assert answer.status_code == 303
    assert "requeued+3+failed+job" in answer.headers["location"]
    assert list(FailedJobs(redis_of(osma_router), osma_router.queues)) == []


def test_search_finds_an_event_by_its_id_a_job_id_and_an_upstream_id(
    console: ConsoleClient, osma_router: RouterUnderTest, fake_ogsm: FakeOgsm
) -> None:
    fake_ogsm.add_indicator(id=456)
    event = completed_task()
    assert osma_router.post(event).status_code == 202
    osma_router.drain()
    event_id = str(event["id"])
    trace = load_trace(redis_of(osma_router), event_id, osma_router.settings)
    assert trace is not None
    [effect] = trace.effects
    assert effect.upstream_id
    for query in (event_id, trace.jobs[0].job_id, effect.upstream_id):
        answer = console.http.get("/search", params={"q": query})
        assert answer.status_code == 303, query
        assert answer.headers["location"] == f"/events/{event_id}"
    assert console.http.get("/search", params={"q": "nothing_like_this"}).status_code == 404


def test_the_event_list_filters_by_type_and_outcome(
    console: ConsoleClient, osma_router: RouterUnderTest, fake_ogsm: FakeOgsm
) -> None:
    failing = failed_event(osma_router)
    fake_ogsm.add_indicator(id=456)
    ok = completed_task()
    osma_router.post(ok)
    osma_router.post(ok)  # a duplicate
    osma_router.drain()
    other = task_event("task.created", {"id": "task_x"})
    osma_router.post(other)
    listing = console.http.get("/events").text
    assert failing in listing and str(ok["id"]) in listing and str(other["id"]) in listing
    only_failed = console.http.get("/events", params={"outcome": "failed"}).text
    assert failing in only_failed and str(ok["id"]) not in only_failed
    duplicated = console.http.get("/events", params={"outcome": "duplicated"}).text
    assert str(ok["id"]) in duplicated and failing not in duplicated
    created = console.http.get("/events", params={"type": "task.created"}).text
    assert str(other["id"]) in created and failing not in created
    assert console.http.get("/events", params={"since": "not a time"}).status_code == 400


def test_no_page_shows_member_data(
    console: ConsoleClient, osma_router: RouterUnderTest, fake_ogsm: FakeOgsm
) -> None:
    failing = failed_event(osma_router)
    fake_ogsm.add_indicator(id=456)
    ok = completed_task()
    osma_router.post(ok)
    osma_router.drain()
    [failed] = list(FailedJobs(redis_of(osma_router), osma_router.queues))
    pages = [
        "/",
        "/events",
        f"/events/{failing}",
        f"/events/{ok['id']}",
        "/failed",
        f"/jobs/{failed.job_id}/retry",
        "/failed/retry",
        "/captures",
        "/events?outcome=failed",
    ]
    for path in pages:
        answer = console.http.get(path)
        assert answer.status_code == 200, path
        assert MEMBER_NAME not in answer.text, path
        assert "template" not in answer.text or path == "/", path


def test_the_overview_shows_queues_and_workers(console: ConsoleClient) -> None:
    page = console.http.get("/").text
    assert "<svg" in page and "Queues" in page and "Workers alive" in page


def test_static_files_and_security_headers(console: ConsoleClient) -> None:
    page = console.http.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert console.http.get("/static/console.js").status_code == 200


def test_console_refuses_a_public_host_without_a_token() -> None:
    run = subprocess.run(
        [*OSMA_ROUTER, "console", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OSMA_ROUTER_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0
    assert "OSMA_ROUTER_CONSOLE_TOKEN" in run.stderr
