"""`ogsm.action` and `osma.task_metadata` through the receiver, a burst worker and the
fake OGSM and Osma: an action kept in step with its task, the task id -> action id
mapping in Redis and in the task's metadata, write-back of effects, ordering."""

from __future__ import annotations

import pytest

from receiver.exceptions import ConfigError
from receiver.keys import dedup_key
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import parse_config
from receiver.store.failed import FailedJobs
from receiver.testing import task_event

ACTION = """
[[routes]]
handler = "ogsm.action"
strategy_ids = [7]
labels = ["osma"]
backoff = [0]
"""


@pytest.fixture(autouse=True)
def _strategy(fake_ogsm):
    fake_ogsm.add_strategy(id=7)
    fake_ogsm.add_indicator(id=456)


def event_about(task, event_type, updated_at, **changes):
    obj = {**task, **changes, "updated_at": updated_at}
    return task_event(event_type, obj, created_at=updated_at)


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_an_action_follows_its_task_from_creation_to_deletion(
    deliver, fake_ogsm, fake_osma, osma_router_redis
):
    task = fake_osma.add_task(template="follow_up_call", description="Call the member back")
    deliver(event_about(task, "task.created", "2026-11-20T10:00:00+00:00"))
    (action,) = fake_ogsm.actions()
    assert action["title"] == "Call the member back"
    assert action["strategies"] == [{"id": 7}] and action["labels"] == [{"name": "osma"}]
    assert action["status"] == {"name": "todo"} and action["progress"] == 0
    assert (
        osma_router_redis.get(f"osma_router:ogsm_action:ogsm_action_id:{task['id']}")
        == str(action["id"]).encode()
    )
    assert fake_osma.task(task["id"])["metadata"] == {"ogsm_action_id": str(action["id"])}
    write_back = fake_osma.requests_to("POST", f"/tasks/{task['id']}")[0]
    assert write_back.headers["idempotency-key"].startswith("osma-router:")

    task = fake_osma.task(task["id"])  # events carry the task as it is now, metadata included
    deliver(event_about(task, "task.updated", "2026-11-20T11:00:00+00:00", status="in_progress"))
    assert fake_ogsm.actions()[0]["status"] == {"name": "doing"} and fake_ogsm.actions()[0]["progress"] == 50
    deliver(event_about(task, "task.completed", "2026-11-20T12:00:00+00:00", status="completed"))
    assert fake_ogsm.actions()[0]["status"] == {"name": "done"} and fake_ogsm.actions()[0]["progress"] == 100
    deliver(event_about(task, "task.deleted", "2026-11-20T13:00:00+00:00", status="deleted"))
    assert fake_ogsm.actions()[0]["archived"] is True
    assert len(fake_ogsm.requests_to("POST", "/api/v2/actions.json")) == 1
    assert len(fake_osma.requests_to("POST")) == 1  # the mapping was written back once


@pytest.mark.parametrize("osma_router_routes", [ACTION + 'on_delete = "delete"\nwrite_back = false\n'])
def test_delete_instead_of_archive_and_no_write_back(deliver, fake_ogsm, fake_osma):
    task = fake_osma.add_task(template="t", description="Book a visit")
    deliver(event_about(task, "task.created", "2026-11-20T10:00:00+00:00"))
    assert len(fake_ogsm.actions()) == 1
    deliver(event_about(task, "task.deleted", "2026-11-20T13:00:00+00:00", status="deleted"))
    assert fake_ogsm.actions() == [] and fake_osma.requests == []


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_an_older_update_does_not_overwrite_a_newer_one(deliver, fake_ogsm, fake_osma):
    task = fake_osma.add_task(template="t", description="Review labs")
    deliver(event_about(task, "task.created", "2026-11-20T10:00:00+00:00"))
    deliver(event_about(task, "task.completed", "2026-11-20T12:00:00+00:00", status="completed"))
    deliver(event_about(task, "task.updated", "2026-11-20T11:00:00+00:00", status="in_progress"))
    assert fake_ogsm.actions()[0]["status"] == {"name": "done"}


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_an_update_before_the_creation_event_creates_once(deliver, fake_ogsm, fake_osma):
    task = fake_osma.add_task(template="t", description="Send leaflet")
    deliver(event_about(task, "task.updated", "2026-11-20T11:00:00+00:00", status="in_progress"))
    deliver(event_about(task, "task.created", "2026-11-20T10:00:00+00:00"))  # late and older: ignored
    (action,) = fake_ogsm.actions()
    assert action["status"] == {"name": "doing"}


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_the_mapping_is_read_back_from_the_tasks_metadata(deliver, fake_ogsm, fake_osma, osma_router_redis):
    task = fake_osma.add_task(template="t", description="Check in")
    deliver(event_about(task, "task.created", "2026-11-20T10:00:00+00:00"))
    osma_router_redis.delete(f"osma_router:ogsm_action:ogsm_action_id:{task['id']}")  # Redis lost it
    task = fake_osma.task(task["id"])
    deliver(event_about(task, "task.completed", "2026-11-20T12:00:00+00:00", status="completed"))
    (action,) = fake_ogsm.actions()
    assert action["progress"] == 100


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_a_lost_create_answer_is_reconciled(deliver, fake_ogsm, fake_osma):
    task = fake_osma.add_task(template="t", description="Call the pharmacy")
    other = fake_osma.add_task(template="t", description="Call the pharmacy")
    deliver(event_about(other, "task.created", "2026-11-20T09:00:00+00:00"))
    fake_ogsm.fail(504, method="POST", path="/api/v2/actions.json", after=True)
    deliver(event_about(task, "task.created", "2026-11-20T10:00:00+00:00"))
    actions = fake_ogsm.actions()
    assert len(actions) == 2  # one per task, although the titles are the same
    assert (
        fake_osma.task(task["id"])["metadata"]["ogsm_action_id"]
        != fake_osma.task(other["id"])["metadata"]["ogsm_action_id"]
    )


@pytest.mark.parametrize("osma_router_routes", [ACTION])
def test_a_replayed_creation_creates_nothing(deliver, fake_ogsm, fake_osma, osma_router_redis):
    task = fake_osma.add_task(template="t", description="Order supplies")
    event = event_about(task, "task.created", "2026-11-20T10:00:00+00:00")
    deliver(event)
    osma_router_redis.delete(dedup_key("osma", event["id"]))
    deliver(event)
    assert len(fake_ogsm.actions()) == 1
    assert len(fake_osma.requests_to("POST")) == 1


WRITE_BACK = """
[[routes]]
on = "task.completed"
handler = "osma.task_metadata"
backoff = [0]
[routes.metadata]
ogsm_indicator_report_id = "effect:ogsm.indicator_report"
template = "field:template"
by = "osma-router"

[[routes]]
on = "task.completed"
handler = "ogsm.indicator_report"
indicator_id = 456
"""


@pytest.mark.parametrize("osma_router_routes", [WRITE_BACK])
def test_task_metadata_records_the_effect_of_another_route(deliver, fake_ogsm, fake_osma, osma_router_redis):
    task = fake_osma.add_task(template="update_blood_pressure")
    event = task_event("task.completed", task)
    deliver(event)  # the metadata job runs first, waits for the report's effect, then writes it
    (report,) = fake_ogsm.indicator_reports()
    assert fake_osma.task(task["id"])["metadata"] == {
        "ogsm_indicator_report_id": str(report["id"]),
        "template": "update_blood_pressure",
        "by": "osma-router",
    }
    (update,) = fake_osma.requests_to("POST")
    assert update.json == {
        "metadata": {
            "ogsm_indicator_report_id": str(report["id"]),
            "template": "update_blood_pressure",
            "by": "osma-router",
        }
    }
    osma_router_redis.delete(dedup_key("osma", event["id"]))
    deliver(event)
    assert len(fake_osma.requests_to("POST")) == 1 and len(fake_ogsm.indicator_reports()) == 1


@pytest.mark.parametrize(
    "osma_router_routes",
    [('[[routes]]\nhandler = "osma.task_metadata"\nmetadata = { synced = "yes" }\nbackoff = [0]\n')],
)
def test_osma_503_twice_then_success_reads_back_and_moves_to_a_new_key_each_time(deliver, fake_osma):
    """Osma keeps the first answer per idempotency key, a 503 too (the fake does the same):
    a retry under the same key would get the 503 for ever. Each retry reads the task back
    first and, the metadata being absent, sends under the next key generation."""
    task = fake_osma.add_task(template="t")
    fake_osma.fail(503, times=2, method="POST")
    deliver(task_event("task.updated", task))
    posts = fake_osma.requests_to("POST")
    assert [p.status for p in posts] == [503, 503, 200]
    first = posts[0].headers["idempotency-key"]
    assert [p.headers["idempotency-key"] for p in posts] == [first, f"{first}.g2", f"{first}.g3"]
    reads = fake_osma.requests_to("GET", f"/tasks/{task['id']}")
    assert len(reads) == 2  # one read-back before each new generation
    assert fake_osma.task(task["id"])["metadata"] == {"synced": "yes"}


@pytest.mark.parametrize(
    "osma_router_routes",
    [('[[routes]]\nhandler = "osma.task_metadata"\nmetadata = { synced = "yes" }\nbackoff = [0]\n')],
)
def test_a_503_whose_write_happened_is_reconciled_not_sent_again(deliver, fake_osma):
    """The write went through and only its answer failed: the read-back finds the values,
    and nothing is sent under a new key."""
    task = fake_osma.add_task(template="t")
    fake_osma.fail(503, method="POST", after=True)
    deliver(task_event("task.updated", task))
    assert [p.status for p in fake_osma.requests_to("POST")] == [503]
    assert fake_osma.task(task["id"])["metadata"] == {"synced": "yes"}


@pytest.mark.parametrize(
    "osma_router_routes",
    [('[[routes]]\nhandler = "osma.task_metadata"\nmetadata = { synced = "yes" }\nbackoff = [0]\n')],
)
def test_the_gentler_fake_keeps_no_failure_under_the_key(deliver, fake_osma):
    task = fake_osma.add_task(template="t")
    fake_osma.fail(503, method="POST", cached=False)
    deliver(task_event("task.updated", task))
    assert [p.status for p in fake_osma.requests_to("POST")] == [503, 200]


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ('handler = "ogsm.action"\nstrategy_ids = ["7"]', "strategy_ids"),
        ('handler = "ogsm.action"\non_delete = "shred"', "on_delete"),
        ('handler = "ogsm.action"\nprogress = { completed = 150 }', "progress"),
        ('handler = "osma.task_metadata"', "metadata"),
        ('handler = "osma.task_metadata"\nmetadata = { x = "effect:" }', "effect:"),
        ('handler = "osma.task_metadata"\nmetadata = { ' + "k" * 51 + ' = "v" }', "50"),
    ],
)
def test_bad_route_parameters_are_a_config_error(route, message):
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(f"[[routes]]\n{route}\n"), registry=HandlerRegistry.discover())


@pytest.mark.parametrize(
    "osma_router_routes",
    [('[[routes]]\nhandler = "osma.task_metadata"\nmetadata = { synced = "yes" }\nbackoff = [0]\n')],
)
def test_failed_retry_after_a_cached_4xx_sends_under_a_new_key(osma_router, fake_osma, osma_router_redis):
    """A 4xx dead-letters the job, and Osma keeps that 400 under the key. Once the operator
    has fixed the cause and runs `failed retry`, the retry reads the task back and sends
    under the next key generation; under the old key it would get the cached 400 again."""
    task = fake_osma.add_task(template="t")
    fake_osma.fail(400, method="POST")
    assert osma_router.post(task_event("task.updated", task)).status_code == 202
    osma_router.drain()
    failed = FailedJobs(osma_router_redis, osma_router.queues)
    (row,) = list(failed)
    assert "Rejected" in row.last_error
    failed.retry(row.job_id)
    osma_router.drain()
    posts = fake_osma.requests_to("POST")
    first = posts[0].headers["idempotency-key"]
    assert [(p.status, p.headers["idempotency-key"]) for p in posts] == [(400, first), (200, f"{first}.g2")]
    assert fake_osma.task(task["id"])["metadata"] == {"synced": "yes"}
    assert list(failed) == []
