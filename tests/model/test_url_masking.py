"""The Redis URL as `check-config` and `status` show it: every form of password redis-py
reads from a URL (`:pass@`, `user:pass@`, `?password=`, an encoded key) is masked, and the
rest of the URL (host, port, database, other options) stays readable."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import parse_url

from receiver.settings import Settings
from tests.support import examples

bounded = settings(max_examples=examples(300), deadline=None)
MASK = "**********"


def shown(url: str) -> str:
    return Settings.from_env({"OSMA_ROUTER_REDIS_URL": url}, env_file=None).summary()["redis_url"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2pw@10.0.0.5:6379/0",
        "redis://bot:hunter2pw@10.0.0.5:6379/0",
        "redis://10.0.0.5:6379/0?password=hunter2pw",
        "rediss://10.0.0.5:6380/1?ssl_cert_reqs=none&password=hunter2pw",
        "redis://10.0.0.5/0?pass%77ord=hunter2pw",
        "redis://10.0.0.5/0?PASSWORD=hunter2pw&password=hunter2pw",
        "unix:///run/redis.sock?db=2&password=hunter2pw",
        "redis://bot:hunter2pw@10.0.0.5/0?password=hunter2pw&socket_timeout=5",
        "rediss://10.0.0.5/0?ssl_password=hunter2pw",
    ],
)
def test_no_password_form_is_shown(url: str) -> None:
    text = shown(url)
    assert "hunter2pw" not in text and MASK in text
    assert "10.0.0.5" in text or "/run/redis.sock" in text


def test_the_rest_of_the_url_stays_readable() -> None:
    text = shown("rediss://bot:pw123456@10.0.0.5:6380/1?ssl_cert_reqs=none&password=pw123456")
    assert text == f"rediss://bot:{MASK}@10.0.0.5:6380/1?ssl_cert_reqs=none&password={MASK}"
    assert shown("redis://10.0.0.5:6379/0") == "redis://10.0.0.5:6379/0"


passwords = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=24
).map(lambda text: "PW" + text)


def _forms(password: str) -> list[str]:
    encoded = quote(password, safe="")
    return [
        f"redis://:{encoded}@127.0.0.1:6379/0",
        f"redis://user:{encoded}@127.0.0.1:6379/0",
        f"redis://127.0.0.1:6379/0?password={encoded}",
        f"redis://127.0.0.1:6379/0?db=0&password={encoded}&socket_timeout=3",
        f"rediss://127.0.0.1/0?pass%77ord={encoded}",
        f"unix:///tmp/redis.sock?password={encoded}",
    ]


@bounded
@given(password=passwords)
def test_property_no_password_redis_py_would_use_is_shown(password: str) -> None:
    for url in _forms(password):
        assert parse_url(url)["password"] == password  # the form really carries a password
        text = shown(url)
        for form in {password, quote(password, safe=""), quote(password)}:
            assert form not in text, (url, text)
