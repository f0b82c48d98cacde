"""Live and test mode over real HTTP: an event whose `live_mode` is not the mode that
applies queues no job for that route, is still remembered, and is counted as accepted and,
in `osma_router_delivery_reasons_total`, as `reason="other_mode"` (docs/contract.md,
"Event envelope")."""

from __future__ import annotations

import re

import orjson
import pytest
from redis import Redis

from receiver.exceptions import ConfigError
from receiver.keys import dedup_key
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import load_config
from receiver.settings import Settings
from tests.osmos_support import queued_records
from tests.support import env_for, handled, make_event, osma_router

ROUTES = """
[[routes]]
on = "task.completed"
handler = "sample.record"
label = "follows"
"""

OVERRIDES = """
[[routes]]
on = "task.completed"
handler = "sample.record"
label = "follows"

[[routes]]
on = "task.completed"
handler = "sample.record"
label = "live-only"
live_mode = true

[[routes]]
on = "task.completed"
handler = "sample.record"
label = "test-only"
live_mode = false

[[routes]]
on = "task.completed"
handler = "sample.record"
label = "both"
live_mode = "any"
"""

OTHER_MODE = 'osma_router_delivery_reasons_total{outcome="accepted",reason="other_mode",source="osma"}'
ACCEPTED = 'osma_router_deliveries_total{outcome="accepted",source="osma"}'


def queued(redis: Redis) -> list[str]:
    return [job_id.decode() for job_id in redis.lrange("rq:queue:osma-router", 0, -1)]


def metric(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def labels_run(redis: Redis, event_id: str) -> list[str]:
    return sorted(entry.split("|")[2] for entry in handled(redis) if entry.startswith(f"{event_id}|"))


def test_a_live_event_to_a_test_key_queues_nothing_but_is_remembered_and_counted(start_receiver, redis):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_OSMA_API_KEY="sk_test_live_mode_check")
    body = make_event(event_id="evt_live_1", live_mode=True)

    response = receiver.post(body)
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "id": "evt_live_1", "jobs": 0}
    assert queued(redis) == []
    assert redis.exists(dedup_key("osma", "evt_live_1"))
    again = receiver.post(body)
    assert again.status_code == 200 and again.json() == {"status": "duplicate", "id": "evt_live_1"}

    test_event = receiver.post(make_event(event_id="evt_test_1", live_mode=False))
    assert test_event.json() == {"status": "accepted", "id": "evt_test_1", "jobs": 1}
    assert len(queued(redis)) == 1

    text = receiver.http.get("/metrics").text
    assert metric(text, ACCEPTED) == 2.0  # every accepted delivery (the contract's two labels)
    assert metric(text, OTHER_MODE) == 1.0  # the one whose live_mode held a route back


def test_a_live_key_holds_back_test_events(start_receiver, redis):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_OSMA_API_KEY="sk_live_live_mode_check")
    assert receiver.post(make_event(event_id="evt_t", live_mode=False)).json()["jobs"] == 0
    assert receiver.post(make_event(event_id="evt_l", live_mode=True)).json()["jobs"] == 1


@pytest.mark.parametrize(
    "mode, live_jobs, test_jobs", [("live", 1, 0), ("test", 0, 1), ("any", 1, 1), (None, 1, 1)]
)
def test_without_a_key_the_mode_setting_decides(start_receiver, redis, mode, live_jobs, test_jobs):
    env = {"OSMA_ROUTER_MODE": mode} if mode else {}
    receiver = start_receiver(ROUTES, **env)
    assert receiver.post(make_event(event_id="evt_m_live", live_mode=True)).json()["jobs"] == live_jobs
    assert receiver.post(make_event(event_id="evt_m_test", live_mode=False)).json()["jobs"] == test_jobs


def test_routes_may_choose_their_own_mode(start_receiver, redis):
    receiver = start_receiver(OVERRIDES, OSMA_ROUTER_OSMA_API_KEY="sk_test_live_mode_check")
    assert receiver.post(make_event(event_id="evt_o_live", live_mode=True)).json()["jobs"] == 2
    assert receiver.post(make_event(event_id="evt_o_test", live_mode=False)).json()["jobs"] == 3
    receiver.drain()
    assert labels_run(redis, "evt_o_live") == ["both", "live-only"]
    assert labels_run(redis, "evt_o_test") == ["both", "follows", "test-only"]
    # Each was kept from a matching route (the live one from two), and each counts once.
    assert metric(receiver.http.get("/metrics").text, OTHER_MODE) == 2.0


def test_a_route_in_mode_any_on_a_service_in_mode_any_holds_nothing_back(start_receiver, redis):
    receiver = start_receiver(OVERRIDES)
    live = receiver.post(make_event(event_id="evt_a_live", live_mode=True)).json()["jobs"]
    test = receiver.post(make_event(event_id="evt_a_test", live_mode=False)).json()["jobs"]
    assert (live, test) == (3, 3)  # "follows" and "both" take both; each one-mode route takes its own


def test_events_without_a_boolean_live_mode_are_never_filtered(start_receiver, redis):
    receiver = start_receiver(ROUTES, OSMA_ROUTER_MODE="live")
    no_field = orjson.loads(make_event(event_id="evt_no_mode"))
    del no_field["live_mode"]
    assert receiver.post(orjson.dumps(no_field)).json()["jobs"] == 1
    assert receiver.post(make_event(event_id="evt_null_mode", live_mode=None)).json()["jobs"] == 1
    assert metric(receiver.http.get("/metrics").text, OTHER_MODE) == 0.0


def test_osmos_records_are_routed_in_every_mode(start_receiver, redis, monkeypatch):
    monkeypatch.setenv("LIVE_MODE_OSMOS_TOKEN", "osmos-token-1")
    routes = """
[connectors.crm]
header = "Authorization"
token = "env:LIVE_MODE_OSMOS_TOKEN"
event_type = "osmos.crm.record"
fields = [{ name = "customer_id", type = "string" }]

[[routes]]
on = "osmos.crm.record"
handler = "sample.record"
"""
    receiver = start_receiver(routes, OSMA_ROUTER_OSMA_API_KEY="sk_live_live_mode_check")
    response = receiver.http.post(
        "/ingest/osmos/crm",
        content=b'[{"customer_id": "cus_1"}, {"customer_id": "cus_2"}]',
        headers={"authorization": "osmos-token-1", "content-type": "application/json"},
    )
    assert response.status_code == 202 and response.json() == {"status": "accepted", "records": 2}
    assert len(queued_records(redis)) == 2  # both records queued (in one chunk job)


def test_a_bad_route_live_mode_names_the_file_and_the_route(tmp_path, redis_server, write_routes):
    routes = write_routes(ROUTES + 'live_mode = "live"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(routes, HandlerRegistry.discover())
    assert str(routes) in str(caught.value) and "route #1" in str(caught.value)
    assert "live_mode" in str(caught.value)
    result = osma_router(["check-config"], env_for(redis_server.url, routes), tmp_path)
    assert result.returncode == 1
    assert str(routes) in result.stderr and "live_mode" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "env, names",
    [
        ({"OSMA_ROUTER_MODE": "production"}, "OSMA_ROUTER_MODE"),
        ({"OSMA_ROUTER_MODE": "test", "OSMA_ROUTER_OSMA_API_KEY": "sk_live_x"}, "OSMA_ROUTER_MODE"),
        ({"OSMA_ROUTER_MODE": "any", "OSMA_ROUTER_OSMA_API_KEY": "sk_test_x"}, "OSMA_ROUTER_OSMA_API_KEY"),
    ],
)
def test_a_bad_or_contradicted_mode_stops_start_up_in_one_line(tmp_path, redis_server, env, names):
    result = osma_router(["check-config"], env_for(redis_server.url, **env), tmp_path)
    assert result.returncode == 1
    assert names in result.stderr and "sk_live_x" not in result.stderr and "sk_test_x" not in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_mode_that_agrees_with_the_key_is_fine() -> None:
    settings = Settings.from_env(
        {"OSMA_ROUTER_MODE": "LIVE", "OSMA_ROUTER_OSMA_API_KEY": "sk_live_x"}, env_file=None
    )
    assert settings.service_mode == "live"
    assert Settings.from_env({"OSMA_ROUTER_OSMA_API_KEY": "key_1"}, env_file=None).service_mode == "any"


@pytest.mark.parametrize(
    "env, line",
    [
        ({}, "any (the default; "),
        ({"OSMA_ROUTER_MODE": "live"}, "live (from OSMA_ROUTER_MODE; "),
        ({"OSMA_ROUTER_OSMA_API_KEY": "sk_test_x"}, "test (from the Osma API key's prefix; "),
    ],
)
def test_check_config_prints_the_mode_after_the_settings(tmp_path, redis_server, write_routes, env, line):
    routes = write_routes(OVERRIDES)
    result = osma_router(["check-config"], env_for(redis_server.url, routes, **env), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    mode = next(number for number, text in enumerate(lines) if text.startswith("  mode "))
    assert lines[mode].startswith("  mode" + " " * 19 + line)  # aligned like the settings above it
    assert lines[mode + 1].startswith("handlers available:")  # right after the settings
    assert "sk_test_x" not in result.stdout
    described = [text.strip() for text in lines if text.startswith("  #")]
    assert "(live_mode true)" in described[1] and "(live_mode false)" in described[2]
    assert '(live_mode "any")' in described[3] and "live_mode" not in described[0]


def test_live_mode_does_not_change_a_routes_job_ids(write_routes):
    plain = load_config(write_routes(ROUTES)).routes[0]
    chosen = load_config(write_routes(ROUTES + "live_mode = false\n")).routes[0]
    assert plain.key == chosen.key and chosen.live_mode is False and "live_mode" not in chosen.params
