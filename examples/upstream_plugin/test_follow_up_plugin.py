"""Tests of the example plugin, written with osma-router's pytest plugin."""

import pytest
from follow_up_plugin import group

from receiver.testing import task_event


@pytest.fixture
def osma_router_handlers():
    return [group]  # registered for the test; no need to install the plugin


@pytest.fixture
def osma_router_routes():
    return '[[routes]]\nhandler = "care.follow_up"\nsystolic_above = 140\nbackoff = [0]\n'


def reading(member_id, systolic):
    return task_event("task.completed", {
        "id": "task_bp_1", "template": "update_blood_pressure", "member": member_id,
        "data": {"blood_pressure": {"systolic": str(systolic), "diastolic": "80"}},
    })


def test_a_high_reading_makes_one_follow_up_task(deliver, fake_osma):
    member = fake_osma.add_member(name="Daisy Demo")
    deliver(reading(member["id"], 120))
    assert fake_osma.tasks() == []
    deliver(reading(member["id"], 165))
    (task,) = fake_osma.tasks()
    assert task["template"] == "call_member" and task["member"] == member["id"]


def test_a_lost_answer_does_not_make_a_second_task(deliver, fake_osma):
    member = fake_osma.add_member(name="Daisy Demo")
    fake_osma.fail(502, method="POST", after=True)  # Osma makes the task; the answer is lost
    deliver(reading(member["id"], 165))  # the job is retried with the same idempotency key
    assert len(fake_osma.tasks()) == 1
    first, retry = fake_osma.requests_to("POST", "/tasks")
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]
