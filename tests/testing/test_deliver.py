"""`deliver(event)` of the pytest plugin: the `Delivery` it answers (response, jobs,
effects), `HandlerFailed` when a job failed, retries and scheduled jobs run at once, and a
job deferred behind a held lock waited for. Real Redis, the receiver over real HTTP, the
fake OGSM, a burst worker in this process."""

from __future__ import annotations

import traceback

import pytest
from redis import Redis

from receiver import HandlerGroup, Unavailable
from receiver.keys import lock_key
from receiver.model.routes import load_config
from receiver.store.trace import load_trace
from receiver.testing import HandlerFailed, task_event

QUEUE = "osma-router"
kit = HandlerGroup("kit")


@kit.on("task.completed")
def wrong_method(event, ctx):
    ctx.ogsm.indicator_report.create(456, "2026-11-20", 1)  # the client has `indicator_reports`


@kit.on("task.completed")
def flaky(event, ctx):
    if ctx.attempt < 3:
        raise Unavailable(f"OGSM is restarting (attempt {ctx.attempt})")
    ctx.redis.rpush("kit:ran", ctx.attempt)


@pytest.fixture
def osma_router_handlers():
    return [kit]


@pytest.fixture(autouse=True)
def _kpi(fake_ogsm):
    fake_ogsm.add_indicator(id=456)


def route(handler: str, **params) -> str:
    lines = [f"{name} = {value!r}".replace("'", '"') for name, value in params.items()]
    return "\n".join(["[[routes]]", 'on = "task.completed"', f'handler = "{handler}"', *lines]) + "\n"


def completed(event_id: str | None = None, task_id: str = "task_1"):
    return task_event(
        "task.completed",
        {"id": task_id, "object": "task"},
        event_id=event_id,
        created_at="2026-11-20T10:00:00Z",
    )


@pytest.mark.parametrize("osma_router_routes", [route("kit.wrong_method")])
def test_a_failed_job_raises_handler_failed_from_the_handlers_own_exception(deliver):
    with pytest.raises(HandlerFailed) as caught:
        deliver(completed("evt_kit_wrong"))
    failed = caught.value
    assert str(failed) == (
        "handler kit.wrong_method failed on event evt_kit_wrong, attempt 5/5: "
        "AttributeError: 'OgsmClient' object has no attribute 'indicator_report'"
    )
    assert (failed.handler, failed.event_id, failed.attempt, failed.attempts) == (
        "kit.wrong_method",
        "evt_kit_wrong",
        5,
        5,
    )
    assert failed.error_type == "AttributeError"
    # The cause is the exception the handler raised, with its traceback (not a copy).
    assert isinstance(failed.__cause__, AttributeError)
    frames = traceback.extract_tb(failed.__cause__.__traceback__)
    assert frames[-1].name == "wrong_method"
    # It starts at osma-router's job entry point: RQ's worker frames are left out.
    assert frames[0].name == "run_handler", [frame.filename for frame in frames]


@pytest.mark.parametrize("osma_router_routes", [route("kit.flaky") + 'where = { template = "bp" }\n'])
def test_asking_for_the_job_of_a_route_that_did_not_match_says_so(deliver):
    delivery = deliver(completed("evt_kit_unmatched"))  # a task without the template
    assert delivery.json()["jobs"] == 0
    with pytest.raises(AssertionError, match=r"0 jobs of kit.flaky ran .* no route matched the event"):
        delivery.job("kit.flaky")


@pytest.mark.parametrize("osma_router_routes", [route("kit.wrong_method")])
def test_raise_on_failure_false_returns_the_failed_job(deliver):
    delivery = deliver(completed("evt_kit_quiet"), raise_on_failure=False)
    assert delivery.status_code == 202 and delivery.json()["status"] == "accepted"
    job = delivery.job("kit.wrong_method")
    assert (job.state, job.attempts, job.max_attempts, job.event_id) == ("failed", 5, 5, "evt_kit_quiet")
    assert job.error.type == "AttributeError" and "indicator_report" in job.error.message
    assert len(job.errors) == 5 and job.backoff == [5, 20, 80, 320]  # reported, not slept
    assert isinstance(job.exception, AttributeError)
    assert delivery.failures == [job] and delivery.effects == {}


@pytest.mark.parametrize("osma_router_routes", [route("kit.flaky")])
def test_fails_twice_then_succeeds_runs_three_attempts_at_once(deliver, osma_router_redis):
    job = deliver(completed()).job("kit.flaky")
    assert (job.state, job.attempts, job.error) == ("finished", 3, None)
    assert job.backoff == [5, 20]  # what production would have waited before each retry
    assert [str(e) for e in job.errors] == [
        "Unavailable: OGSM is restarting (attempt 1)",
        "Unavailable: OGSM is restarting (attempt 2)",
    ]
    assert osma_router_redis.lrange("kit:ran", 0, -1) == [b"3"]


@pytest.mark.parametrize(
    "osma_router_routes", [route("ogsm.indicator_report", indicator_id=456, value="count", period="month")]
)
def test_the_delivery_holds_its_jobs_and_the_ledgers_effects(deliver, fake_ogsm):
    delivery = deliver(completed("evt_kit_kpi"))
    assert delivery.json() == {"status": "accepted", "id": "evt_kit_kpi", "jobs": 1}
    (job,) = delivery.jobs
    assert (job.handler, job.state, job.attempts, job.errors, job.backoff) == (
        "ogsm.indicator_report",
        "finished",
        1,
        [],
        [],
    )
    assert job.route_key and job.event_id == "evt_kit_kpi"
    (report,) = fake_ogsm.indicator_reports(456)
    effect = delivery.effects["ogsm.indicator_report"]
    assert effect.done and effect.result["id"] == report["id"] and effect.result["value"] == 1
    # A redelivery is a duplicate: no job, and the effect recorded for the event stays.
    again = deliver(completed("evt_kit_kpi"))
    assert again.json()["status"] == "duplicate" and again.jobs == []
    assert again.effects["ogsm.indicator_report"].result == effect.result


@pytest.mark.parametrize(
    "osma_router_routes",
    [route("ogsm.indicator_report", indicator_id=456, value="count", period="month", coalesce=300)],
)
def test_a_coalesced_measurement_is_flushed_at_once(deliver, fake_ogsm, osma_router_redis):
    delivery = deliver(completed("evt_kit_coalesced"))
    assert [(r["at"], r["current_value"]) for r in fake_ogsm.indicator_reports(456)] == [("2026-11-01", 1)]
    handler_job, flush = delivery.jobs  # the event's job, then the flush it scheduled 300 s ahead
    assert handler_job.event_id == "evt_kit_coalesced" and flush.event_id is None
    assert flush.handler == "ogsm.indicator_report" and flush.state == "finished"
    assert osma_router_redis.zcard(f"rq:scheduled:{QUEUE}") == 0


@pytest.mark.parametrize("osma_router_routes", [route("kit.flaky")])
def test_drain_false_runs_nothing(deliver, osma_router_redis):
    delivery = deliver(completed("evt_kit_later"), drain=False)
    assert delivery.status_code == 202 and delivery.jobs == [] and delivery.effects == {}
    assert osma_router_redis.llen(f"rq:queue:{QUEUE}") == 1
    assert deliver(completed("evt_kit_now")).jobs[0].state == "finished"  # runs what waits, too


@pytest.mark.parametrize("osma_router_routes", [route("ogsm.indicator_report", indicator_id=456, value=1)])
def test_a_job_deferred_behind_a_held_lock_runs_once_the_lock_expires(deliver, fake_ogsm, osma_router_redis):
    # The lock of the KPI and date, as a worker that died holding it would leave it: it is
    # never released, it expires. The job waits in-process (2 s), is deferred, and runs again.
    osma_router_redis.set(lock_key("ogsm:indicator:456:2026-11-20"), "a-dead-worker", px=3000)
    job = deliver(completed("evt_kit_locked")).job("ogsm.indicator_report")
    assert (job.state, job.attempts) == ("finished", 1)  # a deferral uses no attempt
    assert job.deferred >= 1 and job.errors[0].type == "ClaimHeld"
    assert [r["current_value"] for r in fake_ogsm.indicator_reports(456)] == [1]


@pytest.mark.parametrize("osma_router_routes", [route("kit.wrong_method")])
def test_a_failed_jobs_trace_lists_each_failed_run(deliver, osma_router):
    # Every run's time and error type stays with the job, for `trace` and the console.
    deliver(completed("evt_kit_history"), raise_on_failure=False)
    redis = Redis.from_url(osma_router.settings.require_redis_url())
    config = load_config(osma_router.settings.config_path, osma_router.registry)
    trace = load_trace(redis, "evt_kit_history", osma_router.settings, config)
    assert trace is not None
    [job] = trace.jobs
    assert job.state == "failed" and job.attempts == 5
    assert [(attempt, error) for attempt, _at, error in job.history] == [
        (n, "AttributeError") for n in range(1, 6)
    ]
    assert all(at is not None for _attempt, at, _error in job.history)
    assert [run["attempt"] for run in job.as_dict()["history"]] == [1, 2, 3, 4, 5]
