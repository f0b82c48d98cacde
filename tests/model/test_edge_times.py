"""Date-times at the edges of what Python's `datetime` holds: `0001-01-01T00:00+05:30` is
valid ISO 8601 but lies before year 1 in UTC, and `9999-12-31T23:59-05:00` after year 9999.
The Osmos validator accepts them (they are well-formed), and nothing downstream may crash
on them: the worker reads such a time as unknown and uses the received time instead."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from rq.registry import FailedJobRegistry

from receiver.model.connectors import FieldSpec, RecordValidator
from receiver.model.events import parse_time
from tests.support import handled, make_event

EDGES = ["0001-01-01T00:00+05:30", "9999-12-31T23:59-05:00", "0001-01-01T00:00:00+14:00"]
TOKEN = "osmos-edge-token-1234"
ROUTES = """
[[routes]]
on = "*"
handler = "sample.record"
label = "edge"

[connectors.crm]
header = "Authorization"
token = "env:EDGE_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "seen_at", type = "datetime", nullable = true },
]
"""


@pytest.mark.parametrize("value", EDGES)
def test_an_edge_time_outside_utc_range_reads_as_unknown(value):
    assert parse_time(value) is None


def test_times_just_inside_the_range_still_read():
    assert parse_time("0001-01-01T05:30+05:30") == datetime(1, 1, 1, tzinfo=UTC)
    assert parse_time("9999-12-31T18:59-05:00") == datetime(9999, 12, 31, 23, 59, tzinfo=UTC)


@pytest.mark.parametrize("value", EDGES)
def test_the_osmos_validator_accepts_edge_times_as_well_formed(value):
    report = RecordValidator([FieldSpec("t", "datetime")], reject_extra=False).validate([{"t": value}])
    assert report.errors == []


def test_edge_times_in_osmos_records_are_accepted_and_run_without_failing(start_receiver, redis, monkeypatch):
    monkeypatch.setenv("EDGE_OSMOS_TOKEN", TOKEN)
    receiver = start_receiver(ROUTES)
    records = [{"customer_id": f"cus_{i}", "seen_at": value} for i, value in enumerate(EDGES)]
    response = receiver.http.post(
        "/ingest/osmos/crm",
        content=orjson.dumps(records),
        headers={"authorization": TOKEN, "content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    receiver.drain()
    assert len(handled(redis)) == len(EDGES)
    assert FailedJobRegistry("osma-router", connection=redis).count == 0


@pytest.mark.parametrize("value", EDGES)
def test_a_webhook_created_at_an_edge_time_is_accepted_and_its_job_runs(start_receiver, redis, value):
    receiver = start_receiver(ROUTES.split("[connectors.crm]")[0])
    response = receiver.post(make_event(event_id="evt_edge", created_at=value))
    assert response.status_code == 202 and response.json()["jobs"] == 1
    receiver.drain()
    assert handled(redis) == ["evt_edge|sample.record|edge|1"]
    assert FailedJobRegistry("osma-router", connection=redis).count == 0
