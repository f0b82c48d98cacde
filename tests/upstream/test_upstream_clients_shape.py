"""The sync and async upstream clients are one client each, sent two ways: the same
constructor and resources, closed by `close()` / `with` or `aclose()` / `async with`.
A worker's `Upstream` closes the async clients too, on the loop their calls ran on."""

from __future__ import annotations

import asyncio
import inspect

import httpx
import pytest

from receiver.settings import Settings
from receiver.testing.fake_osma import TEST_KEY
from receiver.upstream.http import AsyncClientBase, SyncClientBase
from receiver.upstream.ogsm import AsyncOgsmClient, OgsmClient
from receiver.upstream.osma import AsyncOsmaClient, OsmaClient
from receiver.worker.clients import Upstream
from tests.support import env_for

OSMA_ARGS = (TEST_KEY, "http://osma.invalid")
OGSM_ARGS = ("http://ogsm.invalid/api/v2", "user", "secret")


def answer_empty(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=[])


def http_of(client: SyncClientBase | AsyncClientBase) -> httpx.Client | httpx.AsyncClient:
    return client._sender.http


@pytest.mark.parametrize(
    ("sync", "asynchronous"), [(OsmaClient, AsyncOsmaClient), (OgsmClient, AsyncOgsmClient)]
)
def test_each_async_client_takes_the_arguments_of_its_sync_twin(sync, asynchronous):
    def shape(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]

    assert shape(sync) == shape(asynchronous)
    assert issubclass(sync, SyncClientBase) and issubclass(asynchronous, AsyncClientBase)


def test_the_constructors_keep_their_arguments():
    assert list(inspect.signature(OsmaClient).parameters) == [
        "api_key",
        "base_url",
        "api_version",
        "limiter",
        "timeout",
        "max_inline_wait",
        "transport",
    ]
    assert list(inspect.signature(OgsmClient).parameters) == [
        "base_url",
        "username",
        "password",
        "timeout",
        "max_inline_wait",
        "transport",
        "action_body",
    ]


@pytest.mark.parametrize(("cls", "args"), [(OsmaClient, OSMA_ARGS), (OgsmClient, OGSM_ARGS)])
def test_a_with_block_closes_a_sync_client(cls, args):
    with cls(*args, transport=httpx.MockTransport(answer_empty)) as client:
        assert not http_of(client).is_closed
    assert http_of(client).is_closed


@pytest.mark.parametrize(("cls", "args"), [(AsyncOsmaClient, OSMA_ARGS), (AsyncOgsmClient, OGSM_ARGS)])
def test_an_async_with_block_closes_an_async_client(cls, args):
    async def scenario():
        async with cls(*args, transport=httpx.MockTransport(answer_empty)) as client:
            assert not http_of(client).is_closed
        return client

    assert http_of(asyncio.run(scenario())).is_closed


@pytest.fixture
def upstream(redis, redis_server, fake_osma, fake_ogsm):
    env = env_for(
        redis_server.url,
        OSMA_ROUTER_OSMA_API_KEY=TEST_KEY,
        OSMA_ROUTER_OSMA_BASE_URL=fake_osma.url,
        OSMA_ROUTER_OGSM_BASE_URL=fake_ogsm.base_url,
        OSMA_ROUTER_OGSM_USERNAME=fake_ogsm.username,
        OSMA_ROUTER_OGSM_PASSWORD=fake_ogsm.password,
    )
    return Upstream(Settings.from_env(env, env_file=None), redis)


def test_the_worker_closes_its_async_clients_on_the_loop_they_ran_on(upstream, fake_osma, fake_ogsm):
    task = fake_osma.add_task(template="t")
    fake_ogsm.add_goal(id=3)
    loop = asyncio.new_event_loop()
    try:

        async def job():
            assert (await upstream.osma_async.tasks.get(task["id"]))["id"] == task["id"]
            assert [goal["id"] for goal in await upstream.ogsm_async.goals.list()] == [3]

        loop.run_until_complete(job())
        clients = [upstream.osma, upstream.ogsm, upstream.osma_async, upstream.ogsm_async]
        upstream.close(loop)
    finally:
        loop.close()
    assert [http_of(client).is_closed for client in clients] == [True, True, True, True]


def test_async_clients_that_made_no_calls_are_closed_without_a_loop(upstream):
    clients = [upstream.osma_async, upstream.ogsm_async]
    upstream.close()
    assert [http_of(client).is_closed for client in clients] == [True, True]
    assert upstream.osma_async is not clients[0]  # asked again after close: a new client
    upstream.close()
