"""Shared fixtures: a real redis-server of the suite's own, real HTTP on loopback
(uvicorn in a thread), and a plugin registered through a real entry point
(tests/plugin_path holds its package and dist-info; `support` puts it on sys.path)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from redis import Redis

from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import load_config
from receiver.settings import Settings
from receiver.store.server import RedisServer, find_redis_server
from receiver.web.app import create_app
from receiver.web.state import build_state
from tests.support import LiveServer, Receiver, env_for

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (README, "Testing"):
# - dev (default): random examples, the failing one is kept in .hypothesis/ and tried first;
# - ci: derandomized, so every CI run tries the same examples and a red run is a real one;
#   no per-example deadline (a loaded 2-core machine is slow, not wrong);
# - explore: ten times the examples (see support.examples), for a long local hunt.
# Every profile prints the reproduce blob of a failure (@reproduce_failure).
settings.register_profile("dev", print_blob=True)
settings.register_profile(
    "ci", derandomize=True, print_blob=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", print_blob=True, deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(binary=find_redis_server(prefer_embedded=False))
    with server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    if not redis_server.ping():  # a test stopped it: bring it back for the next one
        redis_server.start()
    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def write_routes(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "osma-router.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def start_receiver(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(routes: str = "", *, clock: Callable[[], float] = time.time, **env: str) -> Receiver:
        path = None
        if routes:
            path = tmp_path / f"routes-{len(started)}.toml"
            path.write_text(routes)
        settings = Settings.from_env(env_for(redis_server.url, path, **env), env_file=None)
        registry = HandlerRegistry.discover()
        state = build_state(
            settings, config=load_config(settings.config_path, registry), registry=registry, clock=clock
        )
        receiver = Receiver(state, LiveServer(create_app(state)).start(), settings)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.http.close()
        receiver.server.stop()
