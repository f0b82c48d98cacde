"""`ogsm.indicator_report` and `ogsm.goal_report` through the receiver, a burst worker
and the fake OGSM (the pytest plugin's `deliver`): values, periods, counting, ordering,
and effectively-once posting under retries, redeliveries and replays."""

from __future__ import annotations

import pytest

from receiver.exceptions import ConfigError
from receiver.keys import dedup_key
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import parse_config
from receiver.store.failed import FailedJobs
from receiver.testing import task_event

COUNT_MONTH = """
[[routes]]
on = "task.completed"
where = { template = "update_blood_pressure" }
handler = "ogsm.indicator_report"
indicator_id = 456
value = "count"
period = "month"
backoff = [0]
"""


def completed(
    task_id: str,
    created_at: str = "2026-11-20T10:00:00+00:00",
    *,
    event_id: str | None = None,
    template: str = "update_blood_pressure",
    **fields,
):
    return task_event(
        "task.completed",
        {"id": task_id, "object": "task", "template": template, **fields},
        event_id=event_id,
        created_at=created_at,
    )


def values(fake_ogsm, indicator_id=456):
    return [(r["at"], r["current_value"]) for r in fake_ogsm.indicator_reports(indicator_id)]


@pytest.fixture(autouse=True)
def _targets(fake_ogsm):
    fake_ogsm.add_indicator(id=456)
    fake_ogsm.add_goal(id=123)


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_count_of_distinct_tasks_in_the_month(deliver, fake_ogsm):
    deliver(completed("task_a", "2026-11-02T08:00:00+00:00"))
    deliver(completed("task_b", "2026-11-15T08:00:00+00:00"))
    deliver(completed("task_c", "2026-11-30T23:59:59+00:00"))
    deliver(completed("task_d", "2026-11-10T08:00:00+00:00", template="other"))  # no route matches
    assert values(fake_ogsm) == [("2026-11-01", 1), ("2026-11-01", 2), ("2026-11-01", 3)]
    deliver(completed("task_a", "2026-12-01T00:00:00+00:00"))  # a new month counts from 1
    assert values(fake_ogsm)[-1] == ("2026-12-01", 1)


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_a_task_counts_once_and_a_redelivery_posts_nothing(deliver, fake_ogsm):
    event = completed("task_a", event_id="evt_once")
    deliver(event)
    assert deliver(event).json()["status"] == "duplicate"
    deliver(completed("task_a"))  # another event about the same task: the count stays 1
    assert values(fake_ogsm) == [("2026-11-01", 1), ("2026-11-01", 1)]


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_a_forced_replay_posts_nothing_again(deliver, fake_ogsm, osma_router_redis):
    event = completed("task_a", event_id="evt_replayed")
    deliver(event)
    osma_router_redis.delete(dedup_key("osma", "evt_replayed"))  # what `replay --force` bypasses
    assert deliver(event).json()["status"] == "accepted"
    assert values(fake_ogsm) == [("2026-11-01", 1)]


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_an_object_without_id_is_not_counted(deliver, fake_ogsm):
    deliver(task_event("task.completed", {"object": "task", "template": "update_blood_pressure"}))
    assert values(fake_ogsm) == []


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_upstream_503_twice_then_success_is_one_effect(deliver, fake_ogsm):
    fake_ogsm.fail(503, times=2, method="POST")
    deliver(completed("task_a"))
    assert values(fake_ogsm) == [("2026-11-01", 1)]
    assert [r.status for r in fake_ogsm.requests_to("POST")] == [503, 503, 201]


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_a_lost_answer_is_reconciled_not_posted_again(deliver, fake_ogsm):
    fake_ogsm.fail(502, method="POST", after=True)  # OGSM stores the report, the answer is lost
    deliver(completed("task_a"))
    assert values(fake_ogsm) == [("2026-11-01", 1)]
    assert len(fake_ogsm.requests_to("POST")) == 1
    assert len(fake_ogsm.requests_to("GET", "/api/v2/indicator_reports.json")) == 1


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_reconciling_does_not_adopt_another_events_report(deliver, fake_ogsm):
    deliver(completed("task_a", event_id="evt_first"))
    deliver(completed("task_a", event_id="evt_second"))  # posts 1 again: a report equal to evt_first's
    fake_ogsm.fail(502, method="POST")  # nothing stored, answer lost
    deliver(completed("task_a", event_id="evt_third"))
    assert values(fake_ogsm) == [("2026-11-01", 1)] * 3


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH + "retries = 0\n"])
def test_a_rejected_report_goes_to_the_failed_registry_at_once(deliver, fake_ogsm, osma_router_redis):
    fake_ogsm.fail(400, body={"error": "indicator archived"}, times=float("inf"))
    deliver(completed("task_a"), raise_on_failure=False)
    (row,) = list(FailedJobs(osma_router_redis, ["osma-router"]))
    assert row.handler == "ogsm.indicator_report" and row.attempts == 1
    assert row.last_error.startswith("Rejected: ogsm POST /indicator_reports: 400")


FIELD_DAY = """
[[routes]]
on = "task.completed"
handler = "ogsm.indicator_report"
indicator_id = 456
value = "field:data.blood_pressure.systolic"
period = "event"
"""


@pytest.mark.parametrize("osma_router_routes", [FIELD_DAY])
def test_field_value_from_the_task_and_the_events_date(deliver, fake_ogsm):
    deliver(completed("task_a", "2026-11-20T23:30:00-02:00", data={"blood_pressure": {"systolic": "120"}}))
    deliver(completed("task_b", "2026-11-22T08:00:00+00:00", data={"blood_pressure": {"systolic": 131.5}}))
    deliver(completed("task_c", "2026-11-23T08:00:00+00:00", data={"blood_pressure": {}}))  # posts nothing
    deliver(completed("task_d", "2026-11-23T08:00:00+00:00", data={"blood_pressure": {"systolic": "n/a"}}))
    assert values(fake_ogsm) == [("2026-11-21", 120), ("2026-11-22", 131.5)]


@pytest.mark.parametrize("osma_router_routes", [FIELD_DAY])
def test_an_older_event_does_not_overwrite_a_newer_measurement(deliver, fake_ogsm):
    deliver(completed("task_a", "2026-11-20T12:00:00+00:00", data={"blood_pressure": {"systolic": 130}}))
    deliver(completed("task_b", "2026-11-20T09:00:00+00:00", data={"blood_pressure": {"systolic": 110}}))
    deliver(completed("task_c", "2026-11-20T13:00:00+00:00", data={"blood_pressure": {"systolic": 125}}))
    assert values(fake_ogsm) == [("2026-11-20", 130), ("2026-11-20", 125)]


TWO_COUNTS = """
[[routes]]
on = "task.completed"
where = { template = "a" }
handler = "ogsm.indicator_report"
indicator_id = 456
period = "week"

[[routes]]
on = "task.completed"
where = { template = "b" }
handler = "ogsm.indicator_report"
indicator_id = 456
period = "week"
"""


@pytest.mark.parametrize("osma_router_routes", [TWO_COUNTS])
def test_a_smaller_count_for_the_same_kpi_and_date_posts_nothing(deliver, fake_ogsm):
    for task in ("t1", "t2"):
        deliver(completed(task, "2026-11-19T10:00:00+00:00", template="a"))  # a Thursday
    deliver(completed("t3", "2026-11-22T10:00:00+00:00", template="b"))  # its count is 1 < 2
    deliver(completed("t4", "2026-11-16T10:00:00+00:00", template="b"))  # 2: equal is posted
    assert values(fake_ogsm) == [("2026-11-16", 1), ("2026-11-16", 2), ("2026-11-16", 2)]


@pytest.mark.parametrize(
    "osma_router_routes",
    [
        """
[[routes]]
on = "member.created"
handler = "ogsm.goal_report"
goal_id = 123
value = 1.5
period = "day"
"""
    ],
)
def test_goal_report_with_a_constant(deliver, fake_ogsm):
    deliver(task_event("member.created", {"id": "mem_1"}, created_at="2026-11-20T10:00:00Z"))
    (request,) = fake_ogsm.requests_to("POST")
    assert request.path == "/api/v2/goal_reports.json"
    assert request.json == {"goal_report": {"goal": {"id": 123}, "at": "2026-11-20", "current_value": 1.5}}


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_missing_ogsm_settings_fail_the_job_at_once_naming_them(
    deliver, osma_router_env, osma_router_redis, osma_router
):
    osma_router.settings = type(osma_router.settings).from_env(
        {k: v for k, v in osma_router_env.items() if "OGSM" not in k}, env_file=None
    )
    deliver(completed("task_a"), raise_on_failure=False)
    (row,) = list(FailedJobs(osma_router_redis, ["osma-router"]))
    assert row.attempts == 1
    assert "OSMA_ROUTER_OGSM_BASE_URL" in row.last_error and "OSMA_ROUTER_OGSM_PASSWORD" in row.last_error


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("value = 'count'", "indicator_id"),
        ("indicator_id = '456'", "positive whole number"),
        ("indicator_id = 456\nperiod = 'year'", "period"),
        ("indicator_id = 456\nvalue = 'sum'", "value"),
        ("indicator_id = 456\nvalue = true", "value"),
        ("indicator_id = 456\nvalue = 'field:'", "value"),
        ("indicator_id = 456\ncolour = 'red'", "colour"),
    ],
)
def test_bad_route_parameters_are_a_config_error_at_start_up(params, message):
    import tomllib

    document = tomllib.loads(
        f'[[routes]]\non = "task.completed"\nhandler = "ogsm.indicator_report"\n{params}\n'
    )
    with pytest.raises(ConfigError, match=message):
        parse_config(document, registry=HandlerRegistry.discover())


@pytest.mark.parametrize("osma_router_routes", [COUNT_MONTH])
def test_upstream_calls_show_in_the_receivers_metrics(deliver, fake_ogsm, osma_router):
    deliver(completed("task_m"))
    text = osma_router.http.get("/metrics").text
    assert 'osma_router_upstream_calls_total{status="201",upstream="ogsm"}' in text
