"""The fakes refuse what the real APIs would refuse, in the documented error body, and
where the fix is in the test, the message says it. The clients' exceptions carry the
upstream's error type and message, never the request body. Real HTTP on loopback."""

from __future__ import annotations

import httpx
import pytest

from receiver.exceptions import Rejected
from receiver.testing.fake_osma import LIVE_KEY, TEST_KEY
from receiver.upstream.ogsm import OgsmClient
from receiver.upstream.osma import OsmaClient

SECRET_VALUE = 12345.678  # stands for a member's reading: it is sent, and must not come back


@pytest.fixture
def ogsm(fake_ogsm):
    with OgsmClient(fake_ogsm.base_url, fake_ogsm.username, fake_ogsm.password) as client:
        yield client


@pytest.fixture
def osma(fake_osma):
    with OsmaClient(TEST_KEY, fake_osma.url) as client:
        yield client


def test_an_unknown_kpi_is_a_422_that_says_how_to_make_it(fake_ogsm, ogsm):
    answer = httpx.post(
        f"{fake_ogsm.base_url}/indicator_reports.json",
        auth=(fake_ogsm.username, fake_ogsm.password),
        json={"indicator_report": {"indicator": {"id": 7}, "at": "2026-11-20", "current_value": 1}},
    )
    assert answer.status_code == 422
    assert answer.json() == {
        "errors": {"indicator": ["indicator 7 does not exist (fake_ogsm.add_indicator(id=7) creates it)"]}
    }

    with pytest.raises(Rejected) as caught:
        ogsm.indicator_reports.create(7, "2026-11-20", SECRET_VALUE)
    refused = caught.value
    assert refused.status_code == 422
    assert str(refused).startswith(
        "ogsm POST /indicator_reports: 422 Unprocessable Entity: "
        "indicator: indicator 7 does not exist (fake_ogsm.add_indicator(id=7) creates it)"
    )
    assert refused.body == answer.text  # the documented body, as the fake answered it
    assert str(SECRET_VALUE) not in str(refused) + refused.body


def test_unknown_goals_strategies_and_actions_name_their_seeding_call(fake_ogsm, ogsm):
    with pytest.raises(Rejected, match=r"goal 8 does not exist \(fake_ogsm\.add_goal\(id=8\) creates it\)"):
        ogsm.goal_reports.create(8, "2026-11-20", 1)
    with pytest.raises(
        Rejected, match=r"strategy 3 does not exist \(fake_ogsm\.add_strategy\(id=3\) creates it\)"
    ):
        ogsm.actions.create({"title": "Call the member", "strategies": [{"id": 3}]})
    with pytest.raises(Rejected) as caught:
        ogsm.actions.update(424242, {"progress": 5})
    assert caught.value.status_code == 404
    assert "action 424242 does not exist (fake_ogsm.add_action(id=424242) creates it)" in str(caught.value)
    answer = httpx.delete(
        f"{fake_ogsm.base_url}/actions/424242.json", auth=(fake_ogsm.username, fake_ogsm.password)
    )
    assert answer.status_code == 404
    assert answer.json() == {
        "error": "action 424242 does not exist (fake_ogsm.add_action(id=424242) creates it)"
    }


def test_an_unknown_attribute_names_the_known_ones(fake_ogsm, ogsm):
    fake_ogsm.add_indicator(id=7)
    answer = httpx.post(
        f"{fake_ogsm.base_url}/indicator_reports.json",
        auth=(fake_ogsm.username, fake_ogsm.password),
        json={
            "indicator_report": {"indicator": {"id": 7}, "at": "2026-11-20", "current_value": 1, "vaule": 2}
        },
    )
    (message,) = answer.json()["errors"]["vaule"]
    assert message.startswith("unknown attribute (known: at, current_value, description, indicator,")


def test_wrong_ogsm_credentials_say_which_settings_and_never_the_password(fake_ogsm):
    with OgsmClient(fake_ogsm.base_url, fake_ogsm.username, "wrong-password") as client:
        with pytest.raises(Rejected) as caught:
            client.indicators.list()
    assert caught.value.status_code == 401
    assert "OSMA_ROUTER_OGSM_USERNAME, OSMA_ROUTER_OGSM_PASSWORD" in str(caught.value)
    assert fake_ogsm.password not in str(caught.value) + caught.value.body


def test_an_unknown_osma_object_is_the_documented_404_that_says_how_to_make_it(fake_osma, osma):
    answer = httpx.get(f"{fake_osma.url}/tasks/task_nope", headers={"osma-api-key": TEST_KEY})
    assert answer.status_code == 404
    assert answer.json() == {
        "type": "invalid_request_error",
        "message": "No such task: 'task_nope' (fake_osma.add_task(id='task_nope') creates it)",
    }
    live = httpx.get(f"{fake_osma.url}/members/mem_nope", headers={"osma-api-key": LIVE_KEY})
    assert live.json()["message"].endswith("(fake_osma.add_member(mode='live', id='mem_nope') creates it)")

    with pytest.raises(Rejected) as caught:
        osma.tasks.get("task_nope")
    assert str(caught.value).startswith(
        "osma GET /tasks/:id: 404 invalid_request_error: No such task: 'task_nope' "
        "(fake_osma.add_task(id='task_nope') creates it)"
    )


def test_a_task_for_an_unknown_member_names_the_param_and_the_fix(fake_osma, osma):
    with pytest.raises(Rejected) as caught:
        osma.tasks.create(
            {"template": "call_member", "member": "mem_nope", "description": f"reading {SECRET_VALUE}"},
            idempotency_key="evt_1|r1|create",
        )
    message = str(caught.value)
    assert "invalid_request_error: Invalid request parameter(s)" in message
    assert "member: No such member: 'mem_nope' (fake_osma.add_member(id='mem_nope') creates it)" in message
    assert str(SECRET_VALUE) not in message + caught.value.body


def test_a_wrong_osma_key_says_where_the_keys_are_and_never_echoes_it(fake_osma):
    with OsmaClient("sk_test_not_a_key_of_the_fake", fake_osma.url) as client:
        with pytest.raises(Rejected) as caught:
            client.tasks.get("task_1")
    assert "authentication_error: Invalid API key provided" in str(caught.value)
    assert "fake_osma.keys" in str(caught.value)
    assert "sk_test_not_a_key_of_the_fake" not in str(caught.value) + caught.value.body
