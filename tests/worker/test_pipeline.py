"""Event → RQ job → handler plugin (found by entry point) through a real burst worker:
routing, parameters, JSON jobs, retries with backoff, the failed registry."""

from __future__ import annotations

from datetime import UTC

import orjson
from redis import Redis
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from rq.serializers import JSONSerializer

from receiver.store.failed import FailedJobs
from tests.support import handled, make_event


def test_plugin_found_by_entry_point_receives_the_event(start_receiver, redis):
    receiver = start_receiver(
        """
[[routes]]
on = "task.completed"
where = { template = "bp" }
handler = "sample.record"
label = "blood-pressure"

[[routes]]
on = "task.completed"
where = { template = "other" }
handler = "sample.record"
label = "never"
"""
    )
    assert receiver.post(make_event(event_id="evt_plugin")).json()["jobs"] == 1
    receiver.drain()
    assert handled(redis) == ["evt_plugin|sample.record|blood-pressure|1"]


def test_route_without_on_uses_the_handlers_declared_types(start_receiver, redis):
    receiver = start_receiver('[[routes]]\nhandler = "sample.record"\n')
    assert receiver.post(make_event("task.updated", event_id="evt_declared")).json()["jobs"] == 1
    assert receiver.post(make_event("member.created", event_id="evt_not_declared")).json()["jobs"] == 0


def test_two_routes_to_one_handler_are_two_jobs_and_two_runs(start_receiver, redis):
    receiver = start_receiver(
        """
[[routes]]
on = "task.completed"
handler = "sample.record"
label = "x"

[[routes]]
on = "task.completed"
handler = "sample.record"
label = "y"
"""
    )
    assert receiver.post(make_event(event_id="evt_two")).json()["jobs"] == 2
    receiver.drain()
    assert sorted(handled(redis)) == ["evt_two|sample.record|x|1", "evt_two|sample.record|y|1"]


def test_async_handlers_run_too(start_receiver, redis):
    receiver = start_receiver('[[routes]]\non = "*"\nhandler = "sample.async_record"\n')
    receiver.post(make_event("member.updated", event_id="evt_async"))
    receiver.drain()
    assert handled(redis) == ["evt_async|sample.async_record||1"]


def test_jobs_are_json_never_pickle(start_receiver, redis):
    receiver = start_receiver('[[routes]]\non = "*"\nhandler = "noop"\n')
    receiver.post(make_event(event_id="evt_json"))
    (job_id,) = redis.lrange("rq:queue:osma-router", 0, -1)
    data = redis.hget(b"rq:job:" + job_id, "data")
    function, instance, args, kwargs = orjson.loads(data)
    assert function == "receiver.jobs.run_handler" and instance is None and kwargs == {}
    assert args[0]["event_id"] == "evt_json"
    job = Job.fetch(job_id.decode(), connection=redis, serializer=JSONSerializer)
    assert job.func_name == "receiver.jobs.run_handler"


def test_failing_handler_is_retried_then_succeeds(start_receiver, redis):
    receiver = start_receiver(
        '[[routes]]\non = "*"\nhandler = "sample.flaky"\nsucceed_on = 3\nretries = 4\nbackoff = [0]\n'
    )
    receiver.post(make_event(event_id="evt_flaky"))
    receiver.drain()
    assert handled(redis) == [f"evt_flaky|sample.flaky|attempt|{n}" for n in (1, 2, 3)]
    assert FailedJobRegistry("osma-router", connection=redis).count == 0
    text = receiver.http.get("/metrics").text
    assert 'osma_router_jobs_total{handler="sample.flaky",outcome="retried"} 2.0' in text
    assert 'osma_router_jobs_total{handler="sample.flaky",outcome="succeeded"} 1.0' in text


def test_exhausted_retries_land_in_failed_registry_and_retry_runs_again(start_receiver, redis):
    receiver = start_receiver('[[routes]]\non = "*"\nhandler = "sample.broken"\nretries = 2\nbackoff = [0]\n')
    redis.set("test:broken", "1")
    receiver.post(make_event(event_id="evt_broken"))
    receiver.drain()
    assert len(handled(redis)) == 3  # the first attempt and two retries
    failed = FailedJobs(redis, ["osma-router"])
    (row,) = list(failed)
    assert row.event_id == "evt_broken" and row.handler == "sample.broken"
    assert row.attempts == 3
    assert row.last_error == "HandlerError: broken on purpose"

    redis.delete("test:broken")
    failed.retry(row.job_id)
    receiver.drain()
    assert handled(redis)[-1] == "evt_broken|sample.broken|attempt|4"
    assert list(failed) == []


def test_rejected_upstream_goes_to_failed_at_once(start_receiver, redis):
    receiver = start_receiver(
        '[[routes]]\non = "*"\nhandler = "sample.rejects"\nretries = 5\nbackoff = [0]\n'
    )
    receiver.post(make_event(event_id="evt_rejected"))
    receiver.drain()
    assert len(handled(redis)) == 1
    (row,) = list(FailedJobs(redis, ["osma-router"]))
    assert row.last_error.startswith("Rejected: upstream said 400")


def test_retry_with_backoff_is_scheduled_not_run_in_burst(start_receiver, redis):
    receiver = start_receiver(
        '[[routes]]\non = "*"\nhandler = "sample.flaky"\nsucceed_on = 2\nretries = 3\nbackoff = [60, 120]\n'
    )
    receiver.post(make_event(event_id="evt_backoff"))
    receiver.drain()  # exits 0 when the queue is empty, leaving the retry scheduled
    assert len(handled(redis)) == 1
    scheduled = ScheduledJobRegistry("osma-router", connection=redis, serializer=JSONSerializer)
    assert scheduled.count == 1
    (job_id,) = scheduled.get_job_ids()
    retry_at = scheduled.get_scheduled_time(job_id)
    from datetime import datetime

    wait = (retry_at - datetime.now(UTC)).total_seconds()
    assert 50 < wait <= 60


def test_unknown_handler_in_a_queued_job_is_a_permanent_failure(start_receiver, redis: Redis):
    receiver = start_receiver('[[routes]]\non = "*"\nhandler = "noop"\n')
    receiver.post(make_event(event_id="evt_gone"))
    (job_id,) = redis.lrange("rq:queue:osma-router", 0, -1)
    key = b"rq:job:" + job_id
    function, instance, args, kwargs = orjson.loads(redis.hget(key, "data"))
    args[0]["route"]["handler"] = "gone.handler"
    redis.hset(key, "data", orjson.dumps([function, instance, args, kwargs]))
    receiver.drain()
    (row,) = list(FailedJobs(redis, ["osma-router"]))
    assert "unknown handler 'gone.handler'" in row.last_error


def test_a_job_queued_by_an_earlier_release_still_runs(start_receiver, redis):
    """A job stored before the package was split into layers names its function by the
    released path `receiver.jobs.run_handler` and carries a version-1 spec: it must run."""
    receiver = start_receiver('[[routes]]\non = "task.completed"\nhandler = "sample.record"\nlabel = "old"\n')
    route_key = receiver.state.pipeline.router.routes[0].key
    spec = {
        "v": 1,
        "source": "osma",
        "event_id": "evt_from_before",
        "event_type": "task.completed",
        "received_at": "2026-11-20T10:00:00+00:00",
        "route": {
            "key": route_key,
            "index": 0,
            "handler": "sample.record",
            "on": ["task.completed"],
            "where": {},
            "params": {"label": "old"},
            "retries": 4,
            "backoff": [5, 20, 80, 320],
        },
        "body": make_event(event_id="evt_from_before").decode(),
    }
    queue = Queue("osma-router", connection=redis, serializer=JSONSerializer)
    queue.enqueue("receiver.jobs.run_handler", spec, job_id="osma_e-evt_from_before_old")
    receiver.drain()
    assert handled(redis) == ["evt_from_before|sample.record|old|1"]
