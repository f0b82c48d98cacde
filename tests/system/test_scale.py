"""Two receivers and two workers on one Redis behave as one service: every event is
accepted once wherever it (and its duplicates) arrive, and every effect happens once."""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq.registry import FailedJobRegistry, StartedJobRegistry

from tests.ops_support import Process, Server, wait_for
from tests.support import env_for, handled, make_event, signature_headers

ROUTES = (
    '[[routes]]\non = "task.completed"\nhandler = "sample.record"\nlabel = "a"\n\n'
    '[[routes]]\non = "task.*"\nhandler = "sample.record"\nlabel = "b"\n'
)
EVENTS = 3000


@pytest.mark.slow
def test_two_receivers_and_two_workers_act_as_one_service(tmp_path, redis, redis_server, write_routes):
    env = env_for(redis_server.url, write_routes(ROUTES))
    receivers = [Server(env, tmp_path, name=f"serve-{n}") for n in range(2)]
    workers = [Process(["worker"], env, tmp_path, f"worker-{n}") for n in range(2)]
    try:
        for receiver in receivers:
            receiver.wait_up()
        rng = random.Random(7)
        deliveries = []  # (receiver index, event number)
        for number in range(EVENTS):
            home = rng.randrange(2)
            deliveries.append((home, number))
            if number % 3 == 0:  # a redelivery, to the other receiver
                deliveries.append((1 - home, number))
            if number % 10 == 0:  # and another to the same one
                deliveries.append((home, number))
        rng.shuffle(deliveries)  # duplicates arrive near each other, often concurrently
        bodies = {n: make_event(event_id=f"evt_scale_{n}") for n in range(EVENTS)}
        clients = [httpx.Client(base_url=r.url, timeout=30) for r in receivers]

        def deliver(item: tuple[int, int]) -> tuple[int, int]:
            where, number = item
            body = bodies[number]
            answer = clients[where].post("/webhooks/osma", content=body, headers=signature_headers(body))
            return number, answer.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(deliver, deliveries))
        sending = time.monotonic() - started
        for client in clients:
            client.close()

        accepted = Counter(number for number, status in results if status == 202)
        duplicates = Counter(number for number, status in results if status == 200)
        assert sorted(accepted) == list(range(EVENTS)) and set(accepted.values()) == {1}
        assert sum(duplicates.values()) == len(deliveries) - EVENTS
        assert all(status in (200, 202) for _, status in results)

        expected = 2 * EVENTS
        wait_for(
            lambda: len(handled(redis)) >= expected and _idle(redis),
            timeout=180,
            interval=0.2,
            what="the workers to run every job",
        )
        time.sleep(0.5)  # anything extra would show now
        effects = Counter(handled(redis))
        assert len(effects) == expected and set(effects.values()) == {1}
        assert set(effects) == {
            f"evt_scale_{n}|sample.record|{label}|1" for n in range(EVENTS) for label in "ab"
        }
        assert FailedJobRegistry("osma-router", connection=redis).count == 0

        # Each receiver counts what it answered; together they count every delivery once.
        totals: Counter[str] = Counter()
        for receiver in receivers:
            for family in text_string_to_metric_families(httpx.get(receiver.url + "/metrics").text):
                for sample in family.samples:
                    if sample.name == "osma_router_deliveries_total":
                        totals[sample.labels["outcome"]] += sample.value
        assert totals == {"accepted": EVENTS, "duplicate": len(deliveries) - EVENTS}
        print(
            f"\n{len(deliveries)} deliveries to 2 receivers in {sending:.1f} s "
            f"({len(deliveries) / sending:.0f}/s); {expected} effects, each once"
        )
    finally:
        codes = [process.stop() for process in [*receivers, *workers]]
    assert codes == [0, 0, 0, 0]


def _idle(redis) -> bool:
    return (
        redis.llen("rq:queue:osma-router") == 0
        and StartedJobRegistry("osma-router", connection=redis).count == 0
    )
