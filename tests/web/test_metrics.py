"""`/metrics`: deliveries, latency, queue depth, registries, workers, jobs, upstream calls
and rate-limit waits, read over real HTTP from a live receiver on a real Redis."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from receiver.upstream.http import count_rate_limit_wait, count_upstream_call
from tests.support import ROOT, make_event, signature_headers

ROUTES = (
    '[[routes]]\non = "task.completed"\nhandler = "sample.record"\n\n'
    '[[routes]]\non = "task.completed"\nhandler = "sample.rejects"\nqueue = "slow-lane"\n'
)


def scrape(receiver) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = receiver.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_deliveries_latency_and_queue_depth(start_receiver, redis):
    receiver = start_receiver(ROUTES)
    for number in range(3):
        assert receiver.post(make_event(event_id=f"evt_m{number}")).status_code == 202
    assert receiver.post(make_event(event_id="evt_m0")).status_code == 200
    body = make_event(event_id="evt_bad")
    assert receiver.post(body, headers=signature_headers(body, secret="whsec_wrong")).status_code == 401
    samples = scrape(receiver)
    # Exactly {source, outcome} (docs/contract.md); reasons are a family of their own.
    assert {
        labels: count for (name, labels), count in samples.items() if name == "osma_router_deliveries_total"
    } == {
        (("outcome", "accepted"), ("source", "osma")): 3,
        (("outcome", "duplicate"), ("source", "osma")): 1,
        (("outcome", "rejected"), ("source", "osma")): 1,
    }
    assert (
        value(
            samples,
            "osma_router_delivery_reasons_total",
            source="osma",
            outcome="rejected",
            reason="signature_mismatch",
        )
        == 1
    )
    assert value(samples, "osma_router_delivery_duration_seconds_count", source="osma") == 5
    assert value(samples, "osma_router_delivery_duration_seconds_bucket", source="osma", le="+Inf") == 5
    assert 0 < value(samples, "osma_router_delivery_duration_seconds_sum", source="osma") < 5
    assert value(samples, "osma_router_queue_depth", queue="osma-router") == 3
    assert value(samples, "osma_router_queue_depth", queue="slow-lane") == 3
    assert value(samples, "osma_router_queue_jobs", queue="osma-router", registry="failed") == 0
    assert value(samples, "osma_router_redis_up") == 1

    receiver.drain()
    samples = scrape(receiver)
    assert value(samples, "osma_router_queue_depth", queue="osma-router") == 0
    assert value(samples, "osma_router_queue_depth", queue="slow-lane") == 0
    assert value(samples, "osma_router_queue_jobs", queue="slow-lane", registry="failed") == 3
    assert value(samples, "osma_router_jobs_total", handler="sample.record", outcome="succeeded") == 3
    assert value(samples, "osma_router_jobs_total", handler="sample.rejects", outcome="failed") == 3


def test_a_configured_queue_shows_before_its_first_job(start_receiver):
    samples = scrape(start_receiver(ROUTES))
    assert value(samples, "osma_router_queue_depth", queue="osma-router") == 0
    assert value(samples, "osma_router_queue_depth", queue="slow-lane") == 0


def test_upstream_calls_and_rate_limit_waits_counted_by_workers(start_receiver, redis):
    receiver = start_receiver()
    count_upstream_call(redis, "ogsm", 201)
    count_upstream_call(redis, "ogsm", 201)
    with redis.pipeline() as pipe:  # in the same round trip as other bookkeeping
        count_upstream_call(pipe, "osma", 429)
        count_upstream_call(pipe, "osma", "timeout")
        count_rate_limit_wait(pipe, "osma", 1.5)
        count_rate_limit_wait(pipe, "osma", 0.25)
        pipe.execute()
    samples = scrape(receiver)
    assert value(samples, "osma_router_upstream_calls_total", upstream="ogsm", status="201") == 2
    assert value(samples, "osma_router_upstream_calls_total", upstream="osma", status="429") == 1
    assert value(samples, "osma_router_upstream_calls_total", upstream="osma", status="timeout") == 1
    assert value(samples, "osma_router_rate_limit_waits_total", upstream="osma") == 2
    assert value(samples, "osma_router_rate_limit_wait_seconds_total", upstream="osma") == 1.75


def test_workers_alive_are_reported(start_receiver, redis):
    from rq.worker import SimpleWorker

    receiver = start_receiver()
    assert value(scrape(receiver), "osma_router_workers") == 0
    worker = SimpleWorker(["osma-router"], connection=redis)
    worker.register_birth()
    try:
        assert value(scrape(receiver), "osma_router_workers") == 1
        redis.delete(worker.key)  # its heartbeat ran out: it is not alive any more
        assert value(scrape(receiver), "osma_router_workers") == 0
    finally:
        worker.register_death()


def test_metrics_still_answer_while_redis_is_away(start_receiver, redis_server):
    receiver = start_receiver()
    assert receiver.post(make_event(event_id="evt_before")).status_code == 202
    redis_server.stop()
    try:
        body = make_event(event_id="evt_during")
        assert receiver.post(body).status_code == 503
        samples = scrape(receiver)
        assert value(samples, "osma_router_redis_up") == 0
        assert value(samples, "osma_router_deliveries_total", source="osma", outcome="accepted") == 1
        assert value(samples, "osma_router_delivery_duration_seconds_count", source="osma") == 2
    finally:
        redis_server.start()


def test_every_metric_is_documented(start_receiver):
    """The operations docs (docs/operations.md, or the README once merged) list every
    family /metrics exposes."""

    receiver = start_receiver()
    text = receiver.http.get("/metrics").text
    names = set(re.findall(r"^# TYPE (\w+) ", text, flags=re.MULTILINE))
    root = ROOT
    doc = "".join(p.read_text() for p in (root / "docs" / "operations.md", root / "README.md") if p.is_file())
    missing = [name for name in sorted(names) if name not in doc]
    assert not missing, missing
