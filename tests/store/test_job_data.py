"""A job's data, as JobBuilder writes it with each route's spec serialised once at start-up,
is byte for byte the JSON of the whole spec serialised per delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from hypothesis import example, given
from hypothesis import strategies as st

from receiver.crypto import Sealer
from receiver.model.routes import job_id, parse_config
from receiver.settings import Secret
from receiver.store.enqueue import JOB_FUNCTION, SPEC_VERSION, JobBuilder, route_spec

CONFIG = parse_config(
    {
        "routes": [
            {"on": "task.completed", "handler": "noop"},
            {
                "on": ["task.*", "member.created"],
                "where": {"template": "bp", "data": {"score": 5}},
                "handler": "noop",
                "retries": 2,
                "backoff": [1, 2.5],
                "queue": "slow",
                "label": 'ünïcode "quoted" \\ value',
                "nested": {"a": [1, 2.0, None, True]},
            },
        ]
    }
)


def expected_specs(
    source: str, event_id: str, event_type: str, received_at: datetime, **extra: Any
) -> list[dict[str, Any]]:
    return [
        {
            "v": SPEC_VERSION,
            "source": source,
            "event_id": event_id,
            "event_type": event_type,
            "received_at": received_at.astimezone(UTC).isoformat(),
            "route": route_spec(route),
            **extra,
        }
        for route in CONFIG.routes
    ]


def as_job_data(spec: dict[str, Any]) -> bytes:
    return orjson.dumps([JOB_FUNCTION, None, [spec], {}])


@given(event_id=st.text(min_size=1, max_size=40), event_type=st.text(min_size=1, max_size=30))
def test_job_data_is_the_whole_spec_as_json(event_id: str, event_type: str) -> None:
    builder = JobBuilder(CONFIG.routes, "osma-router", None)
    received_at = datetime(2026, 12, 6, 10, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    body = orjson.dumps({"id": event_id, "type": event_type, "text": 'a "quoted" ☃'})
    jobs = builder.build("osma", event_id, event_type, body, received_at, CONFIG.routes)
    expected = expected_specs("osma", event_id, event_type, received_at, body=body.decode())
    assert [job.data for job in jobs] == [as_job_data(spec) for spec in expected]
    assert [job.job_id for job in jobs] == [job_id("osma", event_id, route) for route in CONFIG.routes]
    assert [job.queue for job in jobs] == ["osma-router", "slow"]
    assert [job.template for job in jobs] == [0, 1]


@pytest.mark.parametrize("kind", ["sealed", "sealed_line", "clock"])
def test_sealed_and_replayed_jobs_carry_the_same_spec(kind: str) -> None:
    sealer = Sealer([Secret(Fernet.generate_key().decode())]) if kind == "sealed" else None
    builder = JobBuilder(CONFIG.routes, "osma-router", sealer)
    received_at = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    body = b'{"id":"evt_1","type":"task.completed"}'
    jobs = builder.build(
        "osma",
        "evt_1",
        "task.completed",
        body,
        received_at,
        CONFIG.routes,
        clock="received_at" if kind == "clock" else None,
        sealed_line="token-of-the-capture" if kind == "sealed_line" else None,
    )
    if kind == "sealed":
        assert sealer is not None
        specs = [orjson.loads(job.data)[2][0] for job in jobs]
        assert {sealer.open(spec.pop("sealed")) for spec in specs} == {body}
        assert specs == expected_specs("osma", "evt_1", "task.completed", received_at)
        return
    extra: dict[str, Any] = {"sealed_line": "token-of-the-capture"}
    if kind == "clock":
        extra = {"body": body.decode(), "clock": "received_at"}
    expected = expected_specs("osma", "evt_1", "task.completed", received_at, **extra)
    assert [job.data for job in jobs] == [as_job_data(spec) for spec in expected]


@given(
    base=st.datetimes(
        min_value=datetime(1969, 12, 31, 23, 59, 57),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(0))]),
    ),
    steps=st.lists(st.integers(0, 3_000_000), min_size=1, max_size=8),
)
@example(base=datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC), steps=[0, 1_000_000])
def test_received_at_is_written_as_isoformat_writes_it(base: datetime, steps: list[int]) -> None:
    # One builder for times a few seconds apart: the part to the second is kept between calls.
    builder = JobBuilder(CONFIG.routes[:1], "osma-router", None)
    for step in steps:
        moment = base + timedelta(microseconds=step)
        [job] = builder.build("osma", "evt_1", "task.completed", b"{}", moment, CONFIG.routes[:1])
        assert orjson.loads(job.data)[2][0]["received_at"] == moment.astimezone(UTC).isoformat()
