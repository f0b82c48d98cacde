"""`osma-router console` as an operator starts it: the plugins allow-list and the Osmos
tokens as for the other operator commands, its URL printed, a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from receiver.store.server import RedisServer, free_port
from tests.support import env_for, osma_router, start_osma_router

SAMPLE_ROUTE = '[[routes]]\non = "task.completed"\nhandler = "sample.record"\n'
CONNECTOR_ROUTES = """
[[routes]]
on = "osmos.crm.record"
handler = "noop"

[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN_NOT_GIVEN_TO_THE_CONSOLE"
event_type = "osmos.crm.record"
fields = [{ name = "id", type = "string" }]
"""


def test_a_route_naming_a_plugin_outside_the_allow_list_stops_the_console(
    tmp_path: Path, redis_server: RedisServer, write_routes
) -> None:
    env = env_for(redis_server.url, write_routes(SAMPLE_ROUTE), OSMA_ROUTER_PLUGINS="builtin,ops")
    result = osma_router(["console", "--port", str(free_port())], env, tmp_path, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sample.record" in lines[0], result.stderr


def test_the_console_needs_no_osmos_token_prints_its_url_and_stops_on_sigterm(
    tmp_path: Path, redis_server: RedisServer, write_routes
) -> None:
    port = free_port()
    env = env_for(redis_server.url, write_routes(CONNECTOR_ROUTES))
    console = start_osma_router(["console", "--port", str(port)], env, tmp_path)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while answer is None and console.poll() is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            except httpx.HTTPError:
                time.sleep(0.2)
        assert answer is not None and answer.status_code == 200, (
            console.stderr.read() if console.stderr else ""
        )
        console.send_signal(signal.SIGTERM)
        out, err = console.communicate(timeout=30)
        assert console.returncode == 0, err
        assert out.splitlines()[0] == f"osma-router console: http://127.0.0.1:{port}/"
        assert "Traceback" not in err
    finally:
        if console.poll() is None:
            console.kill()
            console.wait()
