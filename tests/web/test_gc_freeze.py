"""A server process moves what it built at start-up out of the garbage collector's full
passes (receiver/web/app.py, `freeze_startup_objects`): otherwise each one walks some 70k
long-lived objects and holds the event loop for tens of milliseconds."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.store.server import RedisServer
from receiver.web.app import app_from_env


@pytest.fixture
def unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # give this test process its collector back


def tracked(thing: object) -> bool:
    return any(obj is thing for obj in gc.get_objects())


def test_the_server_app_and_what_it_holds_are_frozen_out_of_the_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, unfreeze: None
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\non = "task.completed"\nhandler = "noop"\n')
    monkeypatch.setenv("OSMA_ROUTER_REDIS_URL", redis_server.url)
    monkeypatch.setenv("OSMA_ROUTER_WEBHOOK_SECRETS", "whsec_test")
    monkeypatch.setenv("OSMA_ROUTER_CONFIG", str(routes))

    app = app_from_env()

    state = app.state.receiver
    assert gc.get_freeze_count() > 1000
    assert not tracked(state)
    assert not tracked(state.settings)
    # What comes later is collected as usual.
    later: list[object] = []
    assert tracked(later)
