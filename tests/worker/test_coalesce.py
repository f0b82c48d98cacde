"""`coalesce = N` on `ogsm.indicator_report` / `ogsm.goal_report`: at most one measurement
per KPI (or goal) and date per window of N seconds, carrying the latest value, posted by a
scheduled RQ job (`receiver.jobs.flush_measurement`) when the window closes. Real Redis,
the fake OGSM over real HTTP, the receiver and burst workers of the pytest plugin; time
moves for real (short windows), and RQ's scheduler enqueues the flush jobs that are due."""

from __future__ import annotations

import re
import threading
import time
import tomllib

import pytest
from rq.job import Job
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from receiver.exceptions import ConfigError
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import parse_config
from receiver.store.ledger import EffectsLedger
from receiver.testing import task_event
from receiver.worker.execution import WorkerRuntime
from tests.support import osma_router as run_osma_router

QUEUE = "osma-router"
FLUSH = "receiver.jobs.flush_measurement"
WINDOW = 3  # seconds: room for a few deliveries, short enough to wait for
SCOPE = "ogsm:indicator:456:2026-11-01"


def count_route(coalesce: int = WINDOW) -> str:
    return f"""
[[routes]]
on = "task.completed"
handler = "ogsm.indicator_report"
indicator_id = 456
value = "count"
period = "month"
coalesce = {coalesce}
"""


COUNT = count_route()

FIELD_GOAL = f"""
[[routes]]
on = "task.completed"
handler = "ogsm.goal_report"
goal_id = 123
value = "field:data.systolic"
period = "event"
coalesce = {WINDOW}
"""


def completed(task_id: str, created_at: str = "2026-11-20T10:00:00+00:00", **fields):
    return task_event("task.completed", {"id": task_id, "object": "task", **fields}, created_at=created_at)


def values(fake_ogsm):
    return [(r["at"], r["current_value"]) for r in fake_ogsm.indicator_reports(456)]


def scheduled(redis) -> list[str]:
    return ScheduledJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer).get_job_ids()


def at_window_start(every: int = WINDOW) -> None:
    """Wait for a window to begin, so that what follows falls in one window."""
    time.sleep(every - time.time() % every + 0.05)


def past_due(redis) -> None:
    """Wait until every scheduled job is due."""
    registry = ScheduledJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    due = [registry.get_scheduled_time(job_id).timestamp() for job_id in registry.get_job_ids()]
    if due:
        time.sleep(max(0.0, max(due) - time.time()) + 0.2)


def run_flushes(router, redis) -> None:
    """Let the windows close, then a burst worker (with RQ's scheduler) runs their flushes."""
    past_due(redis)
    router.drain()


@pytest.fixture
def deliver(osma_router):
    """The windows are the subject here: post, then drain with a plain burst worker, so a
    flush waits for its window (the plugin's `deliver` runs scheduled jobs at once)."""

    def deliver(event, *, drain=True):
        delivery = osma_router.deliver(event, drain=False)
        if drain:
            osma_router.drain()
        return delivery

    return deliver


@pytest.fixture(autouse=True)
def _targets(fake_ogsm):
    fake_ogsm.add_indicator(id=456)
    fake_ogsm.add_goal(id=123)


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_one_window_posts_one_measurement_with_the_latest_count(
    deliver, fake_ogsm, osma_router, osma_router_redis
):
    at_window_start()
    for task in ("task_a", "task_b", "task_c"):
        deliver(completed(task), drain=False)
    osma_router.drain()
    assert values(fake_ogsm) == []  # the window is still open
    (job_id,) = scheduled(osma_router_redis)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", job_id), job_id  # RQ 3 refuses `:` and `.`
    assert job_id.startswith("ogsm-flush_indicator-456_2026-11-01_count_")

    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 3)]
    assert scheduled(osma_router_redis) == []
    assert osma_router_redis.keys("osma_router:coalesce:*") == []

    deliver(completed("task_a"))  # the same task again: the count is still 3, nothing to post
    assert scheduled(osma_router_redis) == []
    deliver(completed("task_d"))  # after the window: a new window, a new measurement
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 3), ("2026-11-01", 4)]


@pytest.mark.parametrize("osma_router_routes", [count_route(0)])
def test_coalesce_0_posts_one_measurement_per_event(deliver, fake_ogsm, osma_router_redis):
    for task in ("task_a", "task_b", "task_c"):
        deliver(completed(task))
    assert values(fake_ogsm) == [("2026-11-01", 1), ("2026-11-01", 2), ("2026-11-01", 3)]
    assert scheduled(osma_router_redis) == []


@pytest.mark.parametrize("osma_router_routes", [FIELD_GOAL])
def test_a_field_value_keeps_the_latest_event_not_an_older_one(
    deliver, fake_ogsm, osma_router, osma_router_redis
):
    at_window_start()
    deliver(completed("t1", "2026-11-20T12:00:00+00:00", data={"systolic": 130}), drain=False)
    deliver(completed("t2", "2026-11-20T13:00:00+00:00", data={"systolic": 125}), drain=False)
    deliver(completed("t3", "2026-11-20T09:00:00+00:00", data={"systolic": 110}), drain=False)  # older
    osma_router.drain()
    run_flushes(osma_router, osma_router_redis)
    assert [(r["at"], r["current_value"]) for r in fake_ogsm.goal_reports(123)] == [("2026-11-20", 125)]


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_a_flush_run_twice_posts_once(deliver, fake_ogsm, osma_router, osma_router_redis):
    at_window_start()
    deliver(completed("task_a"))
    deliver(completed("task_b"))
    (job_id,) = scheduled(osma_router_redis)
    spec = Job.fetch(job_id, connection=osma_router_redis, serializer=JSONSerializer).args[0]
    pending = osma_router_redis.hgetall(spec["pending"])
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 2)]

    queue = Queue(QUEUE, connection=osma_router_redis, serializer=JSONSerializer)
    queue.enqueue(FLUSH, spec, job_id=job_id)  # the same job again, as after a lost ack
    osma_router.drain()
    # ... and once more as if its first run had crashed right after posting, before it
    # cleared the pending value: the ledger has the outcome, nothing goes out again.
    osma_router_redis.hset(spec["pending"], mapping=pending)
    queue.enqueue(FLUSH, spec, job_id=job_id)
    osma_router.drain()
    assert values(fake_ogsm) == [("2026-11-01", 2)]
    assert len(fake_ogsm.requests_to("POST")) == 1
    assert not osma_router_redis.exists(spec["pending"])


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_a_flush_whose_answer_was_lost_reconciles_instead_of_posting_again(
    deliver, fake_ogsm, osma_router, osma_router_redis
):
    deliver(completed("task_a"))
    fake_ogsm.fail(502, method="POST", after=True)  # OGSM stores the report, the answer is lost
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 1)]
    assert len(scheduled(osma_router_redis)) == 1  # the flush retries after its backoff (5 s)
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 1)]
    assert len(fake_ogsm.requests_to("POST")) == 1
    assert len(fake_ogsm.requests_to("GET", "/api/v2/indicator_reports.json")) == 1
    assert scheduled(osma_router_redis) == [] and not osma_router_redis.keys("osma_router:coalesce:*")


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_a_count_that_arrives_while_a_flush_answer_is_lost_goes_out_in_a_later_window(
    deliver, fake_ogsm, osma_router, osma_router_redis
):
    at_window_start()
    deliver(completed("task_a"))
    deliver(completed("task_b"))
    fake_ogsm.fail(502, method="POST", after=True)  # 2 is stored, the answer is lost
    run_flushes(osma_router, osma_router_redis)
    time.sleep(1.2)  # the flush kept the lock for the bound (1 s here); now a third task comes in
    deliver(completed("task_c"))
    run_flushes(osma_router, osma_router_redis)  # the retry adopts 2 and schedules 3 for later
    assert values(fake_ogsm) == [("2026-11-01", 2)]
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 2), ("2026-11-01", 3)]
    assert len(fake_ogsm.requests_to("POST")) == 2


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_an_event_after_a_flush_failed_for_good_schedules_a_new_one(
    deliver, fake_ogsm, osma_router, osma_router_redis
):
    deliver(completed("task_a"))
    fake_ogsm.fail(400, method="POST")  # a 4xx: the flush goes to the failed registry at once
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [] and scheduled(osma_router_redis) == []
    time.sleep(5)  # FLUSH_LATE: only a flush that late is looked for
    deliver(completed("task_b"))
    run_flushes(osma_router, osma_router_redis)
    assert values(fake_ogsm) == [("2026-11-01", 2)]


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_a_restarted_worker_still_flushes(deliver, fake_ogsm, osma_router_env, osma_router_redis, tmp_path):
    at_window_start()
    deliver(completed("task_a"))
    deliver(completed("task_b"))
    # The worker that ran the events is gone: nothing in memory survives, only Redis.
    WorkerRuntime._current = None
    past_due(osma_router_redis)
    result = run_osma_router(["worker", "--burst"], osma_router_env, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert values(fake_ogsm) == [("2026-11-01", 2)]


@pytest.mark.parametrize("osma_router_routes", [COUNT])
def test_the_flush_waits_for_the_lock_of_the_kpi_and_date(deliver, fake_ogsm, osma_router, osma_router_redis):
    deliver(completed("task_a"))
    past_due(osma_router_redis)
    held, released = threading.Event(), []

    def hold_the_lock() -> None:  # as a direct post of the same KPI and date would
        with EffectsLedger(osma_router_redis, lock_ttl=30).locked(SCOPE, owner="a-direct-post"):
            held.set()
            time.sleep(1.5)
            released.append(time.time())

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(10)
    osma_router.drain()
    holder.join()
    (post,) = fake_ogsm.requests_to("POST")
    assert post.at >= released[0]
    assert values(fake_ogsm) == [("2026-11-01", 1)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("coalesce = -1", "coalesce"),
        ("coalesce = 1.5", "coalesce"),
        ("coalesce = true", "coalesce"),
        ("value = 1\ncoalesce = 60", "constant"),
    ],
)
def test_bad_coalesce_is_a_config_error_at_start_up(params, message):
    route = '[[routes]]\non = "task.completed"\nhandler = "ogsm.indicator_report"\nindicator_id = 456\n'
    document = tomllib.loads(f"{route}{params}\n")
    with pytest.raises(ConfigError, match=message):
        parse_config(document, registry=HandlerRegistry.discover())
