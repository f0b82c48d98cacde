"""OSMA_ROUTER_PLUGINS through the real command: `check-config` lists what loaded and what
was found but skipped; a route naming a skipped plugin's handler stops `serve` and `worker`
like any unknown handler."""

from __future__ import annotations

import pytest

from receiver.store.server import free_port
from tests.support import env_for, osma_router

SAMPLE_ROUTE = '[[routes]]\non = "task.completed"\nhandler = "sample.record"\n'


def test_check_config_lists_loaded_and_skipped_plugins(tmp_path, redis_server):
    env = env_for(redis_server.url, OSMA_ROUTER_PLUGINS="builtin,sample")
    result = osma_router(["check-config"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("plugins:")]
    assert "builtin, sample" in line and "skipped" in line and "ops (ops-plugin)" in line
    (available,) = [line for line in result.stdout.splitlines() if line.startswith("handlers available:")]
    assert "sample.record" in available and "ops." not in available


def test_check_config_without_an_allow_list_says_every_plugin_loads(tmp_path, redis_server):
    result = osma_router(["check-config"], env_for(redis_server.url), tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("plugins:")]
    assert "builtin, ops, sample" in line and "OSMA_ROUTER_PLUGINS" in line


@pytest.mark.parametrize("command", ["serve", "worker", "check-config"])
def test_a_route_naming_a_skipped_plugin_stops_start_up(tmp_path, redis_server, write_routes, command):
    routes = write_routes(SAMPLE_ROUTE)
    args = {"serve": ["serve", "--port", str(free_port())], "worker": ["worker", "--burst"]}.get(
        command, [command]
    )
    env = env_for(redis_server.url, routes, OSMA_ROUTER_PLUGINS="builtin,ops")
    result = osma_router(args, env, tmp_path, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sample.record" in lines[0], result.stderr


def test_an_allow_list_naming_a_missing_plugin_stops_start_up(tmp_path, redis_server):
    env = env_for(redis_server.url, OSMA_ROUTER_PLUGINS="builtin,care")
    result = osma_router(["serve", "--port", str(free_port())], env, tmp_path, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "OSMA_ROUTER_PLUGINS" in lines[0] and "care" in lines[0]
