"""OSMA_ROUTER_OGSM_BASE_URL must carry the API path: without `/api/v2` every OGSM call is
a 404 no retry fixes, so it is a configuration error at start-up, in one line that shows
the expected form (docs/contract.md, "Settings")."""

from __future__ import annotations

import pytest

from receiver.exceptions import ConfigError
from receiver.settings import Settings
from tests.support import env_for, make_event, osma_router

VARIABLE = "OSMA_ROUTER_OGSM_BASE_URL"
EXPECTED_FORM = "https://<sub>.ogsm.online/api/v2"


def load(value: str) -> Settings:
    return Settings.from_env({VARIABLE: value}, env_file=None)


@pytest.mark.parametrize(
    "value",
    [
        "https://acme.ogsm.online",
        "https://acme.ogsm.online/",
        "https://acme.ogsm.online/api",
        "https://acme.ogsm.online/api/v1",
        "https://acme.ogsm.online/api/v2.json",
    ],
)
def test_a_base_url_without_the_api_path_is_a_one_line_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(value)
    message = str(caught.value)
    assert message.startswith(VARIABLE) and EXPECTED_FORM in message and value in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value, kept",
    [
        ("https://acme.ogsm.online/api/v2", "https://acme.ogsm.online/api/v2"),
        ("https://acme.ogsm.online/api/v2/", "https://acme.ogsm.online/api/v2"),
        ("http://127.0.0.1:9000/api/v2", "http://127.0.0.1:9000/api/v2"),
        ("https://proxy.internal/ogsm/api/v2", "https://proxy.internal/ogsm/api/v2"),
    ],
)
def test_a_base_url_with_the_api_path_is_accepted(value: str, kept: str) -> None:
    assert load(value).ogsm_base_url == kept


@pytest.mark.parametrize("command", [["worker", "--burst"], ["check-config"]])
def test_start_up_stops_on_it_in_one_line(tmp_path, redis_server, command) -> None:
    env = env_for(redis_server.url, **{VARIABLE: "https://acme.ogsm.online"})
    result = osma_router(command, env, tmp_path)
    assert result.returncode == 1
    assert VARIABLE in result.stderr and EXPECTED_FORM in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_trailing_slash_still_reaches_the_api(start_receiver, redis, fake_ogsm) -> None:
    fake_ogsm.add_indicator(id=456)
    receiver = start_receiver(
        '[[routes]]\non = "task.completed"\nhandler = "ogsm.indicator_report"\n'
        "indicator_id = 456\nvalue = 1\n",
        **{
            VARIABLE: fake_ogsm.base_url + "/",
            "OSMA_ROUTER_OGSM_USERNAME": fake_ogsm.username,
            "OSMA_ROUTER_OGSM_PASSWORD": fake_ogsm.password,
        },
    )
    assert receiver.post(make_event(event_id="evt_slash")).status_code == 202
    receiver.drain()
    assert [report["current_value"] for report in fake_ogsm.indicator_reports(456)] == [1]
