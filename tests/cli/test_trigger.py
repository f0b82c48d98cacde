"""`osma-router trigger TYPE [--set PATH=VALUE ...]` as a user runs it: fixtures from the
package, signed and sent to a real receiver, the job run by a real worker, what it caused
read back with `osma-router trace`; and the --set parser, property-tested."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.cli.trigger import AssignmentError, assign, build_event, parse_assignment
from receiver.dev.runner import DEV_SECRET
from tests.support import ROOT, SECRET
from tests.support import osma_router as cli

TYPES = ["task.created", "task.updated", "task.completed", "task.deleted"]
TYPES += ["member.created", "member.updated", "member.deleted"]

KPI_ROUTES = """
[[routes]]
on = "task.completed"
where = { template = "trigger_test" }
handler = "ogsm.indicator_report"
indicator_id = 456
value = "count"
period = "month"

[[routes]]
on = "member.*"
handler = "sample.rejects"
"""


def answer_of(result: subprocess.CompletedProcess[str]) -> dict:
    status, body = result.stdout.splitlines()
    assert status.startswith("HTTP ")
    return json.loads(body)


def test_list_shows_a_fixture_for_every_documented_event_type(tmp_path):
    result = cli(["trigger", "--list"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(TYPES)


def test_unknown_type_and_bad_set_are_one_line_and_exit_1(tmp_path):
    for args, words in [
        (["trigger", "task.exploded"], ["task.exploded", "--list"]),
        (["trigger"], ["TYPE", "--list"]),
        (["trigger", "task.completed", "--set", "data.object.template"], ["PATH=VALUE"]),
        (["trigger", "task.completed", "--set", "data..template=x"], ["PATH"]),
        (["trigger", "task.completed", "--set", "data.object.template.name=x"], ["a string"]),
    ]:
        result = cli(args, {}, tmp_path)
        assert result.returncode == 1, args
        assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
        assert all(word in result.stderr for word in words), result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("osma_router_routes", [KPI_ROUTES])
def test_a_completed_task_posts_its_kpi_and_trace_shows_the_job_and_effect(
    osma_router, osma_router_env, fake_ogsm
):
    """`osma_router` serves the routes with real uvicorn; the worker and the commands are
    subprocesses with the same settings."""
    fake_ogsm.add_indicator(id=456)
    url = osma_router.url + "/webhooks/osma"
    sent = cli(
        ["trigger", "task.completed", "--set", "data.object.template=trigger_test", "--to", url],
        osma_router_env,  # no --secret: the first of OSMA_ROUTER_WEBHOOK_SECRETS
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("HTTP 202 ")
    answer = answer_of(sent)
    assert answer["status"] == "accepted" and answer["jobs"] == 1
    event_id = answer["id"]

    worker = cli(["worker", "--burst"], osma_router_env)
    assert worker.returncode == 0, worker.stderr
    (report,) = fake_ogsm.indicator_reports(456)

    traced = cli(["trace", event_id, "--json"], osma_router_env)
    assert traced.returncode == 0, traced.stderr
    document = json.loads(traced.stdout)
    assert document["times_received"] == 1
    assert document["type"] == "task.completed"  # from the recent-events index: the job is gone
    (job,) = document["jobs"]
    assert job["handler"] == "ogsm.indicator_report" and job["state"] == "succeeded"
    (effect,) = document["effects"]
    assert effect["state"] == "done" and effect["upstream_id"] == str(report["id"])
    assert effect["reconciled"] is False and effect["generation"] == 1
    assert effect["key"].startswith(f"osma-router:{event_id}|{job['route']}|")

    table = cli(["trace", event_id], osma_router_env)
    assert table.returncode == 0 and str(report["id"]) in table.stdout and "succeeded" in table.stdout


def test_each_trigger_is_a_new_event_and_a_fixed_id_comes_back_as_a_duplicate(osma_router, osma_router_env):
    url = osma_router.url + "/webhooks/osma"
    first, second = (cli(["trigger", "task.created", "--to", url], osma_router_env) for _ in range(2))
    assert answer_of(first)["id"] != answer_of(second)["id"]
    assert first.stdout.startswith("HTTP 202 ") and second.stdout.startswith("HTTP 202 ")

    again = ["trigger", "member.created", "--set", "id=evt_fixed_id", "--to", url]
    assert answer_of(cli(again, osma_router_env))["status"] == "accepted"
    assert answer_of(cli(again, osma_router_env))["status"] == "duplicate"
    traced = json.loads(cli(["trace", "evt_fixed_id", "--json"], osma_router_env).stdout)
    assert traced["times_received"] == 2 and traced["duplicates"] == 1


@pytest.mark.parametrize("osma_router_routes", [KPI_ROUTES])
def test_a_failed_job_shows_its_error_and_a_planted_member_name_never_shows(osma_router, osma_router_env):
    url = osma_router.url + "/webhooks/osma"
    planted = "Zelda Plantedname"
    sent = cli(
        ["trigger", "member.updated", "--set", f"data.object.name={planted}", "--to", url], osma_router_env
    )
    event_id = answer_of(sent)["id"]
    assert cli(["worker", "--burst"], osma_router_env).returncode == 0

    for args in (["trace", event_id], ["trace", event_id, "--json"]):
        traced = cli(args, osma_router_env)
        assert traced.returncode == 0, traced.stderr
        assert "Rejected: upstream said 400: bad request" in traced.stdout
        assert "failed" in traced.stdout
        assert "Plantedname" not in traced.stdout + traced.stderr


def test_without_a_secret_it_signs_with_the_dev_secret(start_receiver, tmp_path):
    receiver = start_receiver("", OSMA_ROUTER_WEBHOOK_SECRETS=DEV_SECRET)
    sent = cli(["trigger", "task.completed", "--to", receiver.url + "/webhooks/osma"], {}, tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wrong = cli(
        ["trigger", "task.completed", "--to", receiver.url + "/webhooks/osma", "--secret", SECRET],
        {},
        tmp_path,
    )
    assert wrong.returncode == 1 and wrong.stdout.startswith("HTTP 401 ")
    assert "signature_mismatch" in wrong.stdout


@pytest.mark.parametrize("event_type", TYPES)
def test_every_fixture_is_a_fresh_test_mode_event_with_only_test_data(event_type):
    now = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    event, other = build_event(event_type, [], now), build_event(event_type, [], now)
    assert event["type"] == event_type and event["live_mode"] is False and event["object"] == "event"
    assert event["id"].startswith("evt_") and event["id"] != other["id"]
    assert event["created_at"] == now.isoformat()
    obj = event["data"]["object"]
    assert obj["id"] != other["data"]["object"]["id"] and obj["live_mode"] is False
    assert "{{" not in orjson.dumps(event).decode()
    if event_type.startswith("member."):
        assert obj["name"] == "Test Member" and obj["email"].endswith("@example.invalid")


def test_the_fixtures_ship_in_the_wheel(tmp_path):
    """A non-editable install has them: built from a copy, so the checkout stays untouched."""
    source = tmp_path / "src"
    for name in ("receiver", "handlers"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"receiver/cli/fixtures/{t}.json" for t in TYPES} <= names


# The --set parser.

names = st.text(
    st.characters(blacklist_characters=".=", blacklist_categories=("Cs",)), min_size=1, max_size=12
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(path=st.lists(names, min_size=1, max_size=4), value=json_values)
def test_a_json_value_is_set_at_its_dotted_path(path, value):
    parsed = parse_assignment(".".join(path) + "=" + orjson.dumps(value).decode())
    assert parsed == (tuple(path), value)
    event: dict = {}
    assign(event, *parsed)
    node = event
    for part in path[:-1]:
        node = node[part]
    assert node[path[-1]] == value


@given(path=st.lists(names, min_size=1, max_size=3), text=st.text(max_size=30))
def test_a_value_that_is_not_json_is_taken_as_text(path, text):
    try:
        expected = orjson.loads(text)
    except orjson.JSONDecodeError:
        expected = text
    assert parse_assignment(".".join(path) + "=" + text) == (tuple(path), expected)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_an_assignment_error(text):
    try:
        path, _ = parse_assignment(text)
    except AssignmentError as exc:
        assert str(exc).startswith("--set ")
    else:
        assert path and all(path) and "=" in text


@given(value=json_values)
def test_a_list_item_is_set_by_its_number_and_a_scalar_is_never_walked_into(value):
    event = {"data": {"object": {"status_transitions": [{"to": "a"}, {"to": "b"}], "template": "t"}}}
    assign(event, ("data", "object", "status_transitions", "1", "to"), value)
    assert event["data"]["object"]["status_transitions"][1]["to"] == value
    for path in (("data", "object", "template", "x"), ("data", "object", "status_transitions", "2", "to")):
        with pytest.raises(AssignmentError):
            assign(event, path, value)
