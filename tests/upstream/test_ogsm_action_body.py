"""The body shape of OGSM action writes: `{"action": {...}}` by default, the bare action
object with OSMA_ROUTER_OGSM_ACTION_BODY=bare. The client sends the configured shape, the
fake OGSM takes exactly one, and a refusal says which shape went and how to switch."""

from __future__ import annotations

import httpx
import pytest

from receiver.exceptions import ConfigError, InvalidRequest, Rejected
from receiver.settings import Settings
from receiver.testing import FakeOgsm, task_event
from receiver.upstream.ogsm import OgsmClient
from receiver.worker.clients import Upstream

SETTING = "OSMA_ROUTER_OGSM_ACTION_BODY"
OGSM = {
    "OSMA_ROUTER_OGSM_BASE_URL": "https://acme.ogsm.online/api/v2",
    "OSMA_ROUTER_OGSM_USERNAME": "api-user",
    "OSMA_ROUTER_OGSM_PASSWORD": "secret",
}


def client(fake: FakeOgsm, action_body: str = "wrapped") -> OgsmClient:
    return OgsmClient(fake.base_url, fake.username, fake.password, action_body=action_body)


@pytest.mark.parametrize(("value", "shape"), [(None, "wrapped"), ("bare", "bare"), (" Wrapped ", "wrapped")])
def test_the_setting_reaches_the_client(value, shape):
    env = {**OGSM, **({SETTING: value} if value is not None else {})}
    settings = Settings.from_env(env, env_file=None)
    assert settings.ogsm_action_body == shape
    upstream = Upstream(settings, redis=None)  # type: ignore[arg-type]  # OGSM clients use no Redis
    try:
        assert upstream.ogsm.actions.body == shape
        assert upstream.ogsm_async.actions.body == shape
    finally:
        upstream.close()


def test_a_bad_value_is_one_line_naming_the_variable():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({SETTING: "json"}, env_file=None)
    assert str(caught.value) == f"{SETTING} must be 'wrapped' or 'bare', got 'json'"
    with pytest.raises(InvalidRequest, match="wrapped"):
        OgsmClient("https://acme.ogsm.online/api/v2", "u", "p", action_body="json")
    with pytest.raises(ValueError, match="wrapped"):
        FakeOgsm(action_body="json")


def test_the_constructor_keeps_its_old_signature(fake_ogsm):
    with OgsmClient(fake_ogsm.base_url, fake_ogsm.username, fake_ogsm.password) as ogsm:
        assert ogsm.actions.body == "wrapped"
        assert ogsm.actions.create({"title": "Call Daisy"})["title"] == "Call Daisy"


@pytest.mark.parametrize(
    ("accepts", "refused", "expected"),
    [
        ("wrapped", {"title": "Call Daisy"}, 'the body must be {"action": {...}}'),
        ("bare", {"action": {"title": "Call Daisy"}}, "the body must be the bare action object"),
    ],
)
def test_the_fake_takes_one_shape_and_names_it_and_the_setting(accepts, refused, expected):
    with FakeOgsm(action_body=accepts) as fake:
        auth = (fake.username, fake.password)
        answer = httpx.post(f"{fake.base_url}/actions.json", auth=auth, json=refused)
        assert answer.status_code == 422
        (message,) = answer.json()["errors"]["action"]
        assert message.startswith(expected) and f"{SETTING}={accepts}" in message
        action = fake.add_action(title="Old title")
        patched = httpx.patch(f"{fake.base_url}/actions/{action['id']}.json", auth=auth, json=refused)
        assert patched.status_code == 422 and fake.actions() == [action]


@pytest.mark.parametrize(
    ("sent", "accepted", "shape"),
    [("wrapped", "bare", 'wrapped as {"action": {...}}'), ("bare", "wrapped", "as a bare action object")],
)
def test_a_refused_action_body_names_the_shape_sent_and_the_setting(fake_ogsm, sent, accepted, shape):
    fake_ogsm.action_body = accepted
    action = fake_ogsm.add_action(title="Call Daisy")
    says = f"the action was sent {shape}; if OGSM wants the other shape, set {SETTING}={accepted}"
    with client(fake_ogsm, sent) as ogsm:
        for write in (
            lambda: ogsm.actions.create({"title": "x"}),
            lambda: ogsm.actions.update(action["id"], {}),
        ):
            with pytest.raises(Rejected) as caught:
                write()
            assert caught.value.status_code == 422 and says in str(caught.value)
            assert f"{SETTING}={accepted}" in caught.value.body  # the fake's own message


def test_other_refusals_do_not_blame_the_body_shape(fake_ogsm):
    with client(fake_ogsm) as ogsm:
        with pytest.raises(Rejected) as missing:
            ogsm.actions.update(424242, {"progress": 5})
        with pytest.raises(Rejected) as bad_kpi:
            ogsm.indicator_reports.create(999, "2024-01-01", 1)
        fake_ogsm.fail(401, method="POST")
        with pytest.raises(Rejected) as unauthorized:
            ogsm.actions.create({"title": "x"})
    refusals = (missing.value, bad_kpi.value, unauthorized.value)
    assert [e.status_code for e in refusals] == [404, 422, 401]
    assert not any(SETTING in str(e) for e in refusals)


# --- the setting through a receiver and a worker ----------------------------------------


@pytest.fixture(params=["wrapped", "bare"])
def action_body(request):
    return request.param


@pytest.fixture
def osma_router_env(osma_router_env, fake_ogsm, action_body):
    fake_ogsm.action_body = action_body
    return {**osma_router_env, SETTING: action_body}


@pytest.mark.parametrize(
    "osma_router_routes", ['[[routes]]\nhandler = "ogsm.action"\nwrite_back = false\nbackoff = [0]\n']
)
def test_ogsm_action_keeps_an_action_in_step_with_either_shape(deliver, fake_ogsm, fake_osma, action_body):
    task = fake_osma.add_task(template="t", description="Call the member back")
    deliver(task_event("task.created", {**task, "updated_at": "2026-11-20T10:00:00+00:00"}))
    completed = {**task, "status": "completed", "updated_at": "2026-11-20T11:00:00+00:00"}
    deliver(task_event("task.completed", completed))
    (action,) = fake_ogsm.actions()
    assert action["title"] == "Call the member back" and action["progress"] == 100
    created, updated = (r.json for r in fake_ogsm.requests if r.method in ("POST", "PATCH"))
    assert ("action" in created and "action" in updated) is (action_body == "wrapped")
