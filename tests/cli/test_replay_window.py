"""The replay window at start-up: every command that loads settings refuses a dedup window
shorter than twice the signature tolerance, in one line naming both settings."""

from __future__ import annotations

import pytest

from receiver.store.server import free_port
from tests.support import env_for, osma_router

TOO_SHORT = {"OSMA_ROUTER_SIGNATURE_TOLERANCE": "300", "OSMA_ROUTER_DEDUP_TTL": "599"}


@pytest.mark.parametrize(
    "args",
    [["serve", "--port", "0"], ["worker", "--burst"], ["dev", "--port", "0"], ["check-config"]],
    ids=lambda args: args[0],
)
def test_a_dedup_ttl_under_twice_the_tolerance_stops_every_command(tmp_path, redis_server, args):
    if "--port" in args:
        args = [*args[:-1], str(free_port())]
    result = osma_router(args, env_for(redis_server.url, **TOO_SHORT), tmp_path, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "OSMA_ROUTER_DEDUP_TTL" in lines[0] and "OSMA_ROUTER_SIGNATURE_TOLERANCE" in lines[0]


def test_a_dedup_ttl_of_exactly_twice_the_tolerance_is_fine(tmp_path, redis_server):
    env = env_for(redis_server.url, OSMA_ROUTER_SIGNATURE_TOLERANCE="300", OSMA_ROUTER_DEDUP_TTL="600")
    result = osma_router(["check-config"], env, tmp_path)
    assert result.returncode == 0, result.stderr
