"""The console's rules beyond the pages themselves: no redirect off the console, no
answer to a foreign host name without a token, the cookie's Secure flag behind TLS, a
clear page when Redis is down, bounded reads of big registries, a login token long
enough to resist guessing."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import httpx
import pytest
from redis import Redis
from rq.registry import FailedJobRegistry

from receiver.console.app import create_console_app
from receiver.keys import RECENT_EVENTS_KEY
from receiver.model.routes import load_config
from receiver.settings import Secret
from receiver.store.recent import recent_member
from receiver.testing.pytest_plugin import RouterUnderTest
from receiver.testing.server import LiveServer
from tests.support import osma_router as run_cli

from .conftest import TOKEN, ConsoleClient
from .test_console_http import completed_task, failed_event, redis_of

OFF_SITE = [
    "//evil.example/",
    "/\\evil.example/",
    "/\\/evil.example",
    "https://evil.example/",
    "/\t/evil.example",
]


@pytest.mark.parametrize("target", OFF_SITE)
def test_a_login_never_redirects_off_the_console(console_server: LiveServer, target: str) -> None:
    client = ConsoleClient(console_server.url)
    answer = client.http.post("/login", data={"csrf": client.csrf(), "token": TOKEN, "next": target})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"


def test_a_retry_never_redirects_off_the_console(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    failed_event(osma_router)
    [job_id] = FailedJobRegistry(osma_router.queues[0], connection=redis_of(osma_router)).get_job_ids()
    answer = console.post("/failed/retry-one", {"job_id": job_id, "back": "/\\evil.example/"}, "/failed")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/failed?notice=requeued")


def test_without_a_token_only_loopback_names_are_answered(open_console_server: LiveServer) -> None:
    """A page whose name an attacker points at 127.0.0.1 (DNS rebinding) must not read the
    console or post to it."""
    port = open_console_server.port
    with httpx.Client(base_url=open_console_server.url, timeout=10) as http:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            assert http.get("/", headers={"host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"10.0.0.5:{port}"):
            answer = http.get("/", headers={"host": host})
            assert answer.status_code == 400, host
            assert "OSMA_ROUTER_CONSOLE_TOKEN" in answer.text
        assert http.post("/failed/retry", headers={"host": "evil.example"}).status_code == 400


def test_the_session_cookie_is_secure_behind_tls(osma_router: RouterUnderTest) -> None:
    """Over https (direct, or X-Forwarded-Proto from OSMA_ROUTER_TRUSTED_PROXIES) the
    session cookie is Secure: a browser never sends it over plain http."""
    settings = replace(osma_router.settings, console_token=Secret(TOKEN))
    app = create_console_app(
        settings, load_config(settings.config_path, osma_router.registry), osma_router.queues
    )

    async def log_in() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://console.example") as client:
            form = await client.get("/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf is not None
            data = {"csrf": csrf.group(1), "token": TOKEN, "next": "/"}
            return form, await client.post("/login", data=data)

    form, answer = asyncio.run(log_in())
    assert "secure" in form.headers["set-cookie"].lower()
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_a_redis_that_does_not_answer_is_a_503_page(osma_router: RouterUnderTest) -> None:
    settings = replace(osma_router.settings, redis_url="redis://127.0.0.1:1/0", console_token=None)
    app = create_console_app(
        settings, load_config(settings.config_path, osma_router.registry), osma_router.queues
    )
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for path in ("/", "/events", "/failed", "/captures", "/search?q=evt_1"):
            answer = http.get(path)
            assert answer.status_code == 503, path
            assert "Redis does not answer" in answer.text and "Traceback" not in answer.text


def test_the_failed_table_reads_a_big_registry_in_bounded_chunks(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    """Thousands of ids in the registry: the page reads the newest few thousand at most,
    says there may be more, and still shows the newest real failure."""
    redis = redis_of(osma_router)
    registry_key = FailedJobRegistry(osma_router.queues[0], connection=redis).key
    # Ids whose job hashes are gone, older than the real failure below (a registry's score
    # is when the entry expires: RQ's cleanup drops those already past).
    soon = time.time() + 3600
    redis.zadd(registry_key, {f"gone_{n}": soon + n for n in range(5_000)})
    event_id = failed_event(osma_router)
    page = console.http.get("/failed")
    assert page.status_code == 200
    assert event_id in page.text
    assert "There may be more" in page.text


def test_events_older_than_the_dedup_window_are_not_listed(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    redis: Redis = redis_of(osma_router)
    forgotten_ms = int((time.time() - osma_router.settings.dedup_ttl - 60) * 1000)
    redis.zadd(RECENT_EVENTS_KEY, {recent_member("task.completed", "evt_forgotten_long_ago"): forgotten_ms})
    event = completed_task()
    assert osma_router.post(event).status_code == 202
    listing = console.http.get("/events").text
    assert str(event["id"]) in listing
    assert "evt_forgotten_long_ago" not in listing


def test_an_overlong_search_is_a_plain_not_found(console: ConsoleClient) -> None:
    answer = console.http.get("/search", params={"q": "x" * 5_000})
    assert answer.status_code == 404
    assert "x" * 5_000 not in answer.text


@pytest.mark.parametrize(("token", "ok"), [("short-token", False), ("a-long-enough-token-16", True)])
def test_a_console_token_must_be_long_enough_to_resist_guessing(tmp_path, token: str, ok: bool) -> None:
    run = run_cli(
        ["check-config"],
        {
            "OSMA_ROUTER_REDIS_URL": "redis://127.0.0.1:1/0",
            "OSMA_ROUTER_WEBHOOK_SECRETS": "whsec_x",
            "OSMA_ROUTER_CONSOLE_TOKEN": token,
        },
        tmp_path,
    )
    if ok:
        assert token not in run.stdout + run.stderr
        assert "OSMA_ROUTER_CONSOLE_TOKEN" not in run.stderr
    else:
        assert run.returncode == 1
        assert run.stderr.strip().count("\n") == 0
        assert "OSMA_ROUTER_CONSOLE_TOKEN" in run.stderr and "16" in run.stderr


def test_a_logged_out_session_cookie_is_refused_even_when_copied(console_server: LiveServer) -> None:
    client = ConsoleClient(console_server.url)
    client.login()
    copied = dict(client.http.cookies)
    assert client.http.get("/").status_code == 200
    assert client.post("/logout", {}, "/").status_code == 303
    thief = httpx.Client(base_url=console_server.url, cookies=copied, follow_redirects=False)
    answer = thief.get("/")
    thief.close()
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
