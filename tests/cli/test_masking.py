"""`check-config` and `status` never print a Redis password, also one given as `?password=`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from receiver.store.server import RedisServer, find_redis_server
from tests.support import env_for, osma_router

PASSWORD = "redis-pw-5b1f0c"


@pytest.fixture
def protected_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own that asks for `PASSWORD`."""
    with RedisServer(binary=find_redis_server(prefer_embedded=False)) as server:
        client = Redis.from_url(server.url)
        client.config_set("requirepass", PASSWORD)
        client.close()
        yield server


@pytest.mark.parametrize("command", [["check-config"], ["status"], ["status", "--json"]])
@pytest.mark.parametrize("form", ["query", "userinfo"])
def test_the_redis_password_is_masked(tmp_path, protected_redis, command, form):
    if form == "query":
        url = f"redis://127.0.0.1:{protected_redis.port}/0?password={PASSWORD}"
    else:
        url = f"redis://default:{PASSWORD}@127.0.0.1:{protected_redis.port}/0"
    result = osma_router(command, env_for(url), tmp_path)
    assert result.returncode == 0, result.stderr  # the password works: the command talked to Redis
    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
    if command == ["check-config"] or command == ["status"]:
        assert f"127.0.0.1:{protected_redis.port}" in result.stdout and "**********" in result.stdout
