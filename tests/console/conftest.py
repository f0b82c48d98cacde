"""The console under test: a real uvicorn serving `create_console_app` on a loopback
port, over the same Redis, routes and fakes as the pytest plugin's receiver."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from receiver.console.app import create_console_app
from receiver.model.routes import load_config
from receiver.settings import Secret
from receiver.testing.pytest_plugin import RouterUnderTest
from receiver.testing.server import LiveServer

TOKEN = "console-test-token-0123456789"
MEMBER_NAME = "Zebediah Quillfeather"  # planted in events: must never show on a page

ROUTES = """
[[routes]]
on = "task.completed"
handler = "ogsm.indicator_report"
indicator_id = 456
value = "count"
period = "day"
"""


class ConsoleClient:
    """A browser-like client: keeps the session cookie, reads CSRF tokens off forms."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10, follow_redirects=False)

    def csrf(self, path: str = "/login") -> str:
        page = self.http.get(path)
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found, f"no CSRF token in the form of {path}"
        return found.group(1)

    def login(self, token: str = TOKEN) -> httpx.Response:
        return self.http.post("/login", data={"csrf": self.csrf("/login"), "token": token, "next": "/"})

    def post(self, path: str, data: dict[str, str], form_page: str) -> httpx.Response:
        return self.http.post(path, data={"csrf": self.csrf(form_page), **data})


@pytest.fixture
def osma_router_routes() -> str:
    return ROUTES


@pytest.fixture
def console_server(osma_router: RouterUnderTest) -> Iterator[LiveServer]:
    settings = replace(osma_router.settings, console_token=Secret(TOKEN), capture=False)
    config = load_config(settings.config_path, osma_router.registry)
    app = create_console_app(settings, config, osma_router.queues)
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def open_console_server(osma_router: RouterUnderTest) -> Iterator[LiveServer]:
    """The console as `osma-router dev` runs it: loopback, no token, no login."""
    settings = replace(osma_router.settings, console_token=None, capture=False)
    config = load_config(settings.config_path, osma_router.registry)
    with LiveServer(create_console_app(settings, config, osma_router.queues)) as server:
        yield server


@pytest.fixture
def console(console_server: LiveServer) -> Iterator[ConsoleClient]:
    client = ConsoleClient(console_server.url)
    assert client.login().status_code == 303
    yield client
    client.http.close()
