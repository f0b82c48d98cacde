"""A worker's line about a failed or retried job says which handler, which event, which
attempt and why (the error's type and message), in its message text (what pytest's captured
log shows) and in both formats; the event's field values never appear in it."""

from __future__ import annotations

import json
import logging

import pytest

from receiver import HandlerError, HandlerGroup, Unavailable
from receiver.logs import ConsoleFormatter, JsonFormatter, masked, masked_values
from receiver.testing import HandlerFailed, task_event

kit = HandlerGroup("kit")
MEMBER_NAME = "Zelda-Marker-7f3a"


@kit.on("task.completed")
def careless(event, ctx):
    raise HandlerError(f"could not reach {event.get('member_name')} about task {event.object['id']}")


@kit.on("task.completed")
def flaky(event, ctx):
    if ctx.attempt == 1:
        raise Unavailable("OGSM is restarting")


@pytest.fixture
def osma_router_handlers():
    return [kit]


@pytest.fixture
def worker_log(caplog):
    caplog.set_level(logging.INFO, logger="osma_router.worker")

    def lines(outcome: str) -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.name == "osma_router.worker" and r.msg.startswith(f"job {outcome}")
        ]

    return lines


def event(event_id: str):
    return task_event(
        "task.completed", {"id": "task_9", "object": "task", "member_name": MEMBER_NAME}, event_id=event_id
    )


@pytest.mark.parametrize("osma_router_routes", ['[[routes]]\nhandler = "kit.careless"\nretries = 0\n'])
def test_a_failed_job_line_names_handler_event_attempt_and_error_without_member_data(deliver, worker_log):
    with pytest.raises(HandlerFailed) as caught:
        deliver(event("evt_log_failed"))
    assert MEMBER_NAME in str(caught.value)  # the test's own data, in the test's own process

    (record,) = worker_log("failed")
    assert record.levelno == logging.WARNING
    expected = (
        "job failed: handler=kit.careless event=evt_log_failed attempt 1/1: "
        "HandlerError: could not reach *** about task task_9"
    )
    assert record.getMessage() == expected

    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == expected
    assert (entry["handler"], entry["event_id"], entry["attempt"], entry["outcome"]) == (
        "kit.careless",
        "evt_log_failed",
        1,
        "failed",
    )
    assert entry["error_type"] == "HandlerError" and entry["error"] == "could not reach *** about task task_9"
    assert entry["job_id"]

    line = ConsoleFormatter().format(record)
    assert expected in line
    assert (
        "handler=kit.careless" in line
        and "event_id=evt_log_failed" in line
        and "error_type=HandlerError" in line
    )
    for text in (line, JsonFormatter().format(record)):
        assert MEMBER_NAME not in text


@pytest.mark.parametrize("osma_router_routes", ['[[routes]]\nhandler = "kit.flaky"\n'])
def test_a_retried_job_line_says_why_and_when_it_runs_again(deliver, worker_log):
    deliver(event("evt_log_retried"))
    (record,) = worker_log("retried")
    assert record.getMessage() == (
        "job retried: handler=kit.flaky event=evt_log_retried attempt 1/5: Unavailable: OGSM is restarting; "
        "runs again in 5 s"
    )
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["error_type"], entry["error"], entry["retry_in"]) == (
        "Unavailable",
        "OGSM is restarting",
        5.0,
    )
    assert "retry_in=5.0" in ConsoleFormatter().format(record)
    (succeeded,) = worker_log("succeeded")
    assert succeeded.__dict__["attempt"] == 2


@pytest.mark.parametrize(
    "osma_router_routes",
    [
        '[[routes]]\non = "task.completed"\nhandler = "ogsm.indicator_report"\nindicator_id = 7\n'
        'value = "field:reading"\n'
    ],
)
def test_an_upstream_refusal_is_logged_by_the_upstreams_words_not_the_request(deliver, worker_log):
    reading = {"id": "task_9", "object": "task", "reading": 187.25}
    delivery = deliver(task_event("task.completed", reading, event_id="evt_log_kpi"), raise_on_failure=False)
    assert delivery.job("ogsm.indicator_report").state == "failed"
    (record,) = worker_log("failed")
    message = record.getMessage()
    assert message.startswith(
        "job failed: handler=ogsm.indicator_report event=evt_log_kpi attempt 1/5: Rejected: "
        "ogsm POST /indicator_reports: 422 Unprocessable Entity: indicator: indicator 7 does not exist "
        "(fake_ogsm.add_indicator(id=7) creates it)"
    )
    assert "187.25" not in message and "current_value" not in message  # nothing of the request body


def test_masking_hides_the_events_values_longest_first_and_keeps_ids():
    event = {
        "id": "evt_1",
        "data": {
            "object": {
                "id": "task_1",
                "object": "task",
                "template": "update_blood_pressure",
                "member": {"name": "Ann Marker", "first": "Ann"},
                "readings": [120, {"note": "dizzy"}],
                "ok": True,
                "x": "ab",
            }
        },
    }
    values = masked_values(event)
    assert values == {"Ann Marker", "Ann", "120", "dizzy"}
    assert masked("Ann Marker (Ann) said dizzy at 120 about task_1, update_blood_pressure", values) == (
        "*** (***) said *** at *** about task_1, update_blood_pressure"
    )
