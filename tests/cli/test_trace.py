"""`osma-router trace EVENT_ID [--json]` as a user runs it, against a real receiver, a real
burst worker and the suite's Redis: jobs and their states, errors, duplicates, unknown
ids, and no member data in what it prints."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
from hypothesis import given
from hypothesis import strategies as st

from receiver.store.dedup import DedupMark
from receiver.store.trace import load_trace
from tests.osmos_support import CRM_CONNECTOR, queued_records
from tests.support import env_for, make_event, osma_router

ROUTES = """
[[routes]]
on = "task.completed"
handler = "sample.record"

[[routes]]
on = "task.completed"
handler = "sample.flaky"
succeed_on = 3
retries = 3
backoff = [60]

[[routes]]
on = "task.completed"
handler = "sample.rejects"

[[routes]]
on = "member.*"
handler = "sample.record"
"""

MEMBER_NAME = "Quincy Plantedname"


def trace(event_id: str, redis_url: str, routes, *args: str):
    return osma_router(["trace", event_id, *args], env_for(redis_url, routes))


def test_each_job_with_its_state_attempts_and_last_error(start_receiver, redis_server):
    receiver = start_receiver(ROUTES)
    assert receiver.post(make_event(event_id="evt_trace")).json()["jobs"] == 3
    receiver.drain()  # record succeeds, flaky waits 60 s for its retry, rejects fails at once

    result = trace("evt_trace", redis_server.url, receiver.settings.config_path, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["event_id"] == "evt_trace" and document["source"] == "osma"
    assert document["type"] == "task.completed"
    assert document["times_received"] == 1 and document["duplicates"] == 0
    assert document["received_at"].endswith("Z")
    jobs = {job["handler"]: job for job in document["jobs"]}
    assert set(jobs) == {"sample.record", "sample.flaky", "sample.rejects"}
    assert jobs["sample.record"]["state"] == "succeeded"
    assert jobs["sample.flaky"]["state"] == "scheduled" and jobs["sample.flaky"]["retry_at"]
    assert jobs["sample.flaky"]["attempts"] == 1
    assert jobs["sample.flaky"]["last_error"] == "HandlerError: attempt 1 fails on purpose"
    assert jobs["sample.rejects"]["state"] == "failed" and jobs["sample.rejects"]["attempts"] == 1
    assert jobs["sample.rejects"]["last_error"] == "Rejected: upstream said 400: bad request"
    assert all(job["job_id"].startswith("osma_e-evt_trace_") for job in jobs.values())

    table = trace("evt_trace", redis_server.url, receiver.settings.config_path)
    assert table.returncode == 0, table.stderr
    assert "received  20" in table.stdout and "times     1 (0 duplicates)" in table.stdout
    rejects = next(line for line in table.stdout.splitlines() if "sample.rejects" in line)
    assert "failed" in rejects and "Rejected: upstream said 400: bad request" in rejects
    flaky = next(line for line in table.stdout.splitlines() if "sample.flaky" in line)
    assert "scheduled (retry at 20" in flaky


def test_duplicates_are_counted(start_receiver, redis_server):
    receiver = start_receiver(ROUTES)
    body = make_event("member.updated", event_id="evt_again")
    assert receiver.post(body).status_code == 202
    assert [receiver.post(body).status_code for _ in range(2)] == [200, 200]

    document = json.loads(
        trace("evt_again", redis_server.url, receiver.settings.config_path, "--json").stdout
    )
    assert document["times_received"] == 3 and document["duplicates"] == 2
    assert [job["state"] for job in document["jobs"]] == ["queued"]  # no worker ran yet


def test_an_unknown_id_is_one_line_and_exit_1(redis, redis_server, tmp_path):
    result = osma_router(["trace", "evt_never_seen"], env_for(redis_server.url))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "evt_never_seen" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_member_data_in_what_it_prints(start_receiver, redis_server):
    receiver = start_receiver(ROUTES)
    body = make_event(
        event_id="evt_private",
        obj={"id": "task_1", "object": "task", "template": "bp", "member_name": MEMBER_NAME},
    )
    receiver.post(body)
    receiver.drain()
    for args in ((), ("--json",)):
        result = trace("evt_private", redis_server.url, receiver.settings.config_path, *args)
        assert result.returncode == 0, result.stderr
        assert "sample.rejects" in result.stdout
        assert "Plantedname" not in result.stdout + result.stderr


def test_a_handler_error_that_quotes_the_event_is_printed_with_its_values_masked(
    start_receiver, redis_server
):
    receiver = start_receiver('[[routes]]\non = "member.*"\nhandler = "sample.leaky"\nretries = 0\n')
    body = make_event(
        "member.updated",
        event_id="evt_leaky",
        obj={"id": "mem_1", "object": "member", "name": MEMBER_NAME},
    )
    receiver.post(body)
    receiver.drain()
    for args in ((), ("--json",)):
        result = trace("evt_leaky", redis_server.url, receiver.settings.config_path, *args)
        assert result.returncode == 0, result.stderr
        assert "ValueError: cannot file the visit of ***" in result.stdout
        assert "Plantedname" not in result.stdout + result.stderr


def test_a_forced_replay_s_jobs_are_traced_too(start_receiver, redis, redis_server, tmp_path):
    receiver = start_receiver(ROUTES)
    body = make_event("member.created", event_id="evt_forced")
    receiver.post(body)
    receiver.drain()
    line = {"received_at": "2026-11-20T10:00:00Z", "source": "osma", "headers": {}, "body": body.decode()}
    (tmp_path / "events.jsonl").write_bytes(orjson.dumps(line) + b"\n")
    env = env_for(redis_server.url, receiver.settings.config_path)
    replayed = osma_router(["replay", str(tmp_path / "events.jsonl"), "--direct", "--force"], env)
    assert replayed.returncode == 0, replayed.stderr

    found = load_trace(redis, "evt_forced", receiver.settings)
    assert found is not None and found.duplicates == 1
    assert [job.state for job in found.jobs] == ["succeeded", "queued"]  # the replay's own job waits
    assert found.jobs[1].job_id.startswith(found.jobs[0].job_id + "_")


tails = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)


@given(
    ms=st.integers(10**12, 4 * 10**12),
    jobs=st.lists(tails, max_size=4),
    duplicates=st.integers(0, 10**6),
)
def test_a_dedup_mark_reads_back_what_the_admit_script_writes(ms, jobs, duplicates):
    """The script writes `<ms>(:<tail>)*` and, once the id came again, `#<n>`."""
    value = str(ms) + "".join(":" + tail for tail in jobs) + (f"#{duplicates}" if duplicates else "")
    mark = DedupMark.parse(value.encode())
    assert mark.received_at == datetime.fromtimestamp(ms / 1000, UTC)
    assert mark.job_tails == tuple(jobs) and mark.duplicates == duplicates


@given(st.text(max_size=60))
def test_any_dedup_value_parses(value):
    """Marks written as "1" (replay --inline, older releases), or anything else, never raise."""
    mark = DedupMark.parse(value)
    assert mark.duplicates >= 0
    assert DedupMark.parse("1") == DedupMark(None, (), 0)
    assert DedupMark.parse("9" * 40 + ":r1#2") == DedupMark(None, ("r1",), 2)


def test_without_a_redis_url_it_says_where_dev_shows_its_own(tmp_path):
    """A second terminal next to `osma-router dev` has no OSMA_ROUTER_REDIS_URL: the one
    line says where to find the URL of dev's embedded Redis."""
    result = osma_router(["trace", "evt_anything"], {}, tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "OSMA_ROUTER_REDIS_URL is not set" in line and "`osma-router dev` prints" in line, line


def test_an_event_whose_jobs_all_succeeded_still_shows_its_type(start_receiver, redis_server):
    # Succeeded jobs leave no record; the recent-events index still knows the type.
    receiver = start_receiver('[[routes]]\non = "member.*"\nhandler = "sample.record"\n')
    event = make_event(event_id="evt_trace_done", event_type="member.created")
    assert receiver.post(event).json()["jobs"] == 1
    receiver.drain()
    result = trace("evt_trace_done", redis_server.url, receiver.settings.config_path, "--json")
    document = json.loads(result.stdout)
    assert [job["state"] for job in document["jobs"]] == ["succeeded"]
    assert document["type"] == "member.created"


OSMOS_ROUTES = (
    """
[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
"""
    + CRM_CONNECTOR
)


def test_an_osmos_record_is_traced_from_its_dedup_mark_before_and_after_its_chunk_ran(
    start_receiver, redis, redis_server, monkeypatch
):
    """An Osmos record has no dedup key of its own and usually no job of its own: its mark
    lives in the connector's mark hashes, and it runs inside a chunk job."""
    monkeypatch.setenv("CRM_OSMOS_TOKEN", "osmos-trace-token-1234")
    receiver = start_receiver(OSMOS_ROUTES)
    before = datetime.now(UTC)
    answer = receiver.http.post(
        "/ingest/osmos/crm",
        content=orjson.dumps([{"customer_id": "cus_1"}, {"customer_id": "cus_2"}]),
        headers={"authorization": "osmos-trace-token-1234", "content-type": "application/json"},
    )
    assert answer.status_code == 202
    [record, _] = queued_records(redis)
    routes = receiver.settings.config_path

    queued = trace(record.event_id, redis_server.url, routes)
    receiver.drain()
    done = trace(record.event_id, redis_server.url, routes, "--json")
    unknown = trace(record.event_id[:-4] + "0000", redis_server.url, routes)

    assert queued.returncode == 0, queued.stderr
    assert "source    osmos" in queued.stdout and "runs inside its batch's chunk jobs" in queued.stdout
    assert done.returncode == 0, done.stderr
    traced = json.loads(done.stdout)
    received = datetime.fromisoformat(traced["received_at"])
    assert before.timestamp() - 1 <= received.timestamp() <= datetime.now(UTC).timestamp()
    assert traced["source"] == "osmos" and traced["jobs"] == []
    assert unknown.returncode == 1 and "no event" in unknown.stderr
