"""pytest fixtures for handler authors (entry point `pytest11`: `osma_router`), active
wherever osma-router is installed.

- `fake_osma`, `fake_ogsm`: the fake servers (`FakeOsma`, `FakeOgsm`), serving on
  loopback ports for the whole session and emptied before each test.
- `osma_router_redis`: a Redis client on a `redis-server` of the session's own,
  emptied before each test.
- `osma_router_routes`: the routes file's text for the test (override it).
- `osma_router_handlers`: extra `HandlerGroup`s to register without an entry point.
- `osma_router_env`: the `OSMA_ROUTER_*` environment that points at all of the above.
- `osma_router`: a live receiver (real uvicorn) with those settings and routes.
- `deliver(event)`: signs the event, POSTs it to that receiver, and runs the jobs it
  queued in this process, retries and scheduled jobs at once; returns a `Delivery` (the
  response, each job, the ledger's effects) or raises `HandlerFailed` when a job failed
  (`raise_on_failure=False` returns instead). See `receiver/testing/delivery.py`.

```python
import pytest
from receiver.testing import task_event

@pytest.fixture
def osma_router_routes():
    return '[[routes]]\\non = "task.completed"\\nhandler = "ogsm.indicator_report"\\nindicator_id = 456\\n'

def test_posts_a_measurement(deliver, fake_ogsm):
    fake_ogsm.add_indicator(id=456)
    deliver(task_event("task.completed", {"id": "task_1", "template": "bp"}))
    assert [r["current_value"] for r in fake_ogsm.indicator_reports(456)] == [1]
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from ..model.plugins import HandlerGroup, HandlerRegistry
from ..settings import Settings
from ..store.server import RedisServer, find_redis_server
from .delivery import SECRET, Delivery, RouterUnderTest, signed_headers
from .fake_ogsm import FakeOgsm
from .fake_osma import TEST_KEY, FakeOsma

__all__ = ["SECRET", "RouterUnderTest", "signed_headers"]


@pytest.fixture(scope="session")
def osma_router_redis_server() -> Iterator[RedisServer]:
    with RedisServer(binary=find_redis_server(prefer_embedded=False)) as server:
        yield server


@pytest.fixture
def osma_router_redis(osma_router_redis_server: RedisServer) -> Iterator[Redis]:
    if not osma_router_redis_server.ping():
        osma_router_redis_server.start()
    client = Redis.from_url(osma_router_redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def osma_router_fake_osma_server() -> Iterator[FakeOsma]:
    with FakeOsma() as fake:
        yield fake


@pytest.fixture(scope="session")
def osma_router_fake_ogsm_server() -> Iterator[FakeOgsm]:
    with FakeOgsm() as fake:
        yield fake


@pytest.fixture
def fake_osma(osma_router_fake_osma_server: FakeOsma) -> FakeOsma:
    """The fake Osma API, empty, with no faults pending."""
    osma_router_fake_osma_server.reset()
    return osma_router_fake_osma_server


@pytest.fixture
def fake_ogsm(osma_router_fake_ogsm_server: FakeOgsm) -> FakeOgsm:
    """The fake OGSM API, empty, with no faults pending."""
    osma_router_fake_ogsm_server.reset()
    return osma_router_fake_ogsm_server


@pytest.fixture
def osma_router_routes() -> str:
    """The routes file for the test: override this fixture with your routes (TOML)."""
    return ""


@pytest.fixture
def osma_router_handlers() -> list[HandlerGroup]:
    """Handler groups to register besides those found through entry points."""
    return []


@pytest.fixture
def osma_router_env(
    osma_router_redis: Redis,
    osma_router_redis_server: RedisServer,
    fake_osma: FakeOsma,
    fake_ogsm: FakeOgsm,
    osma_router_routes: str,
    tmp_path: Path,
) -> dict[str, str]:
    """`OSMA_ROUTER_*` settings pointing at the test's Redis, fakes and routes."""
    env = {
        "OSMA_ROUTER_REDIS_URL": osma_router_redis_server.url,
        "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
        "OSMA_ROUTER_OSMA_API_KEY": TEST_KEY,
        "OSMA_ROUTER_OSMA_BASE_URL": fake_osma.url,
        "OSMA_ROUTER_OGSM_BASE_URL": fake_ogsm.base_url,
        "OSMA_ROUTER_OGSM_USERNAME": fake_ogsm.username,
        "OSMA_ROUTER_OGSM_PASSWORD": fake_ogsm.password,
        "OSMA_ROUTER_LOG_FORMAT": "console",
        # The fakes answer at once: a one-second bound keeps a retry after a lost answer
        # (which waits for the bound) fast, with the same code path as production's 60 s.
        "OSMA_ROUTER_LOCK_TTL": "1",
    }
    if osma_router_routes:
        path = tmp_path / "osma-router.toml"
        path.write_text(osma_router_routes)
        env["OSMA_ROUTER_CONFIG"] = str(path)
    return env


@pytest.fixture
def osma_router(
    osma_router_env: dict[str, str], osma_router_handlers: list[HandlerGroup]
) -> Iterator[RouterUnderTest]:
    """A live receiver with the test's settings and routes."""
    registry = HandlerRegistry.discover()
    for group in osma_router_handlers:
        registry.add(group)
    router = RouterUnderTest(Settings.from_env(osma_router_env, env_file=None), registry)
    yield router
    router.close()


@pytest.fixture
def deliver(osma_router: RouterUnderTest) -> Callable[..., Delivery]:
    """`deliver(event, drain=True, raise_on_failure=True)`: sign and POST an event, then run
    the jobs it queued (retries at once); returns a `Delivery`, raises `HandlerFailed`."""

    def deliver(
        event: Mapping[str, Any] | bytes, *, drain: bool = True, raise_on_failure: bool = True
    ) -> Delivery:
        __tracebackhide__ = True
        return osma_router.deliver(event, drain=drain, raise_on_failure=raise_on_failure)

    return deliver
