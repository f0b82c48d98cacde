"""A capture line's `source` becomes part of a job id and a dedup key: replay accepts only
the sources the service itself writes (`osma`, `osmos`); any other is a bad line, reported
with its number, counted in the summary, and never a job."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.keys import dedup_key
from receiver.model.capture_file import KNOWN_SOURCES, BadLine, Delivery, parse_line
from tests.capture_support import capture_line
from tests.support import env_for, examples, make_event, osma_router

ROUTES = '[[routes]]\non = "task.*"\nhandler = "sample.record"\n'
BAD_SOURCES = ["osma:x", "OSMA", "evil_e-evt_r0", "../osma", "", "osma ", 7, None, ["osma"], "a" * 300]


def no_sealer(line_no: int):  # noqa: ANN201 - never called: no line here is encrypted
    raise AssertionError("not encrypted")


def test_the_known_sources_are_the_services_own() -> None:
    assert KNOWN_SOURCES == frozenset({"osma", "osmos"})


@pytest.mark.parametrize("source", BAD_SOURCES)
def test_a_line_with_an_unknown_source_is_a_bad_line(source: object) -> None:
    line = capture_line(make_event(event_id="evt_src"), source=source)
    parsed = parse_line(1, line, no_sealer)
    assert isinstance(parsed, BadLine)
    assert '"source"' in parsed.reason and "osma" in parsed.reason


@pytest.mark.parametrize("source", ["osma", "osmos"])
def test_the_known_sources_replay(source: str) -> None:
    parsed = parse_line(1, capture_line(make_event(event_id="evt_src"), source=source), no_sealer)
    assert isinstance(parsed, Delivery) and parsed.source == source


def test_a_line_without_a_source_is_from_osma() -> None:
    line = orjson.loads(capture_line(make_event(event_id="evt_src")))
    del line["source"]
    parsed = parse_line(1, orjson.dumps(line), no_sealer)
    assert isinstance(parsed, Delivery) and parsed.source == "osma"


@settings(max_examples=examples(200), deadline=None)
@given(source=st.one_of(st.text(max_size=40), st.integers(-(2**63), 2**63 - 1), st.none(), st.booleans()))
def test_property_only_a_known_source_ever_reaches_a_delivery(source: object) -> None:
    parsed = parse_line(1, capture_line(make_event(event_id="evt_src"), source=source), no_sealer)
    if source in KNOWN_SOURCES:
        assert isinstance(parsed, Delivery) and parsed.source == source
    else:
        assert isinstance(parsed, BadLine)


@pytest.mark.parametrize("mode", ["--direct", "--inline", "--dry-run"])
def test_replay_reports_and_counts_unknown_sources_and_queues_none_of_them(
    redis, redis_server, tmp_path, write_routes, mode
):
    routes = write_routes(ROUTES)
    lines = [capture_line(make_event(event_id="evt_ok"))]
    lines += [capture_line(make_event(event_id=f"evt_bad{n}"), source=s) for n, s in enumerate(BAD_SOURCES)]
    capture = tmp_path / "sources.jsonl"
    capture.write_bytes(b"\n".join(lines) + b"\n")
    args = ["--direct", "--dry-run"] if mode == "--dry-run" else [mode]
    result = osma_router(["replay", str(capture), *args], env_for(redis_server.url, routes), tmp_path)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    reported = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in reported] == [f"line {n}" for n in range(2, len(lines) + 1)]
    assert all('"source"' in line for line in reported)
    assert f"bad lines {len(BAD_SOURCES)}" in result.stdout
    if mode == "--dry-run":
        assert redis.dbsize() == 0
        return
    assert "sent 1: accepted 1" in result.stdout
    assert redis.exists(dedup_key("osma", "evt_ok"))
    for key in redis.scan_iter(count=1000):
        assert b"evt_bad" not in key, key  # no job, dedup key or anything else of a bad line
