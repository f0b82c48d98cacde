"""The captures page: counts and encryption state, and the export, a decrypted JSONL
download for a signed-in user only, noted in the log without its content."""

from __future__ import annotations

import html
import logging

import orjson
import pytest
from cryptography.fernet import Fernet

from receiver.testing.pytest_plugin import RouterUnderTest
from receiver.testing.server import LiveServer

from .conftest import MEMBER_NAME, ConsoleClient
from .test_console_http import completed_task

KEY = Fernet.generate_key().decode()


@pytest.fixture
def osma_router_env(osma_router_env: dict[str, str]) -> dict[str, str]:
    return {**osma_router_env, "OSMA_ROUTER_CAPTURE": "on", "OSMA_ROUTER_ENCRYPTION_KEYS": KEY}


def test_the_captures_page_counts_and_exports_decrypted_for_a_signed_in_user(
    console: ConsoleClient, osma_router: RouterUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = completed_task(), completed_task()
    for event in (first, second):
        assert osma_router.post(event).status_code == 202
    page = console.http.get("/captures")
    assert page.status_code == 200
    assert '<td id="capture-count">2</td>' in page.text and "encrypted (Fernet, 1 key(s)" in page.text
    assert MEMBER_NAME not in page.text

    with caplog.at_level(logging.INFO, logger="osma_router.console"):
        answer = console.post(
            "/captures/export", {"type": "task.completed", "since": "2000-01-01"}, "/captures"
        )
    assert answer.status_code == 200
    assert answer.headers["content-disposition"].startswith('attachment; filename="osma-router-captures-')
    lines = [orjson.loads(line) for line in answer.content.splitlines()]
    assert [orjson.loads(line["body"])["id"] for line in lines] == [first["id"], second["id"]]
    assert MEMBER_NAME in answer.text  # the download is the decrypted capture, as `capture export` writes it
    [noted] = [r for r in caplog.records if "captures exported" in r.getMessage()]
    assert noted.__dict__["count"] == 2
    assert all(
        MEMBER_NAME not in r.getMessage() and MEMBER_NAME not in str(r.__dict__) for r in caplog.records
    )


def test_an_export_needs_a_login_and_a_csrf_token(
    console_server: LiveServer, osma_router: RouterUnderTest
) -> None:
    assert osma_router.post(completed_task()).status_code == 202
    stranger = ConsoleClient(console_server.url)
    answer = stranger.http.post("/captures/export", data={"csrf": stranger.csrf(), "type": ""})
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert stranger.login().status_code == 303
    forged = stranger.http.post("/captures/export", data={"csrf": "forged", "type": ""})
    assert forged.status_code == 403 and MEMBER_NAME not in forged.text


def test_a_bad_export_range_is_a_400_page(console: ConsoleClient) -> None:
    answer = console.post("/captures/export", {"since": "last tuesday"}, "/captures")
    assert answer.status_code == 400
    assert "since 'last tuesday' is not an ISO 8601 date or time" in html.unescape(answer.text)


def test_duplicates_are_counted_apart_and_exported_in_order(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    first = completed_task()
    assert osma_router.post(first).status_code == 202
    assert osma_router.post(first).status_code == 200  # a redelivery
    page = console.http.get("/captures").text
    assert '<td id="capture-count">1</td>' in page
    assert '<td id="capture-duplicates">1 ' in page
    answer = console.post("/captures/export", {}, "/captures")
    lines = [orjson.loads(line) for line in answer.content.splitlines()]
    assert [line.get("duplicate", False) for line in lines] == [False, True]
