"""The settings of `serve`'s HTTP edge: defaults, one line naming the variable for a bad
value, and the limits handed to uvicorn."""

from __future__ import annotations

import pickle

import pytest

from receiver.exceptions import ConfigError
from receiver.settings import Settings
from receiver.web.edge import EdgeLimits, EdgeProtocol


def load(**env: str) -> Settings:
    return Settings.from_env({f"OSMA_ROUTER_{k}": v for k, v in env.items()}, env_file=None)


def test_defaults() -> None:
    limits = EdgeLimits.from_settings(load())
    assert limits == EdgeLimits(
        max_header_bytes=16_384, max_connections=1000, header_timeout=10.0, keepalive_timeout=5.0
    )
    summary = load().summary()
    assert summary["max_header_bytes"] == "16384" and summary["header_timeout"] == "10 s"
    assert summary["max_connections"] == "1000 per receiver process" and summary["keepalive_timeout"] == "5 s"


def test_values_are_read() -> None:
    settings = load(
        MAX_HEADER_BYTES="32768", MAX_CONNECTIONS="50", HEADER_TIMEOUT="2.5", KEEPALIVE_TIMEOUT="75"
    )
    assert EdgeLimits.from_settings(settings) == EdgeLimits(32_768, 50, 2.5, 75.0)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("MAX_HEADER_BYTES", "1023"),
        ("MAX_HEADER_BYTES", "16k"),
        ("MAX_CONNECTIONS", "0"),
        ("HEADER_TIMEOUT", "0"),
        ("HEADER_TIMEOUT", "soon"),
        ("KEEPALIVE_TIMEOUT", "-1"),
        ("KEEPALIVE_TIMEOUT", "inf"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**{variable: value})
    assert f"OSMA_ROUTER_{variable}" in str(caught.value) and "\n" not in str(caught.value)


def test_the_uvicorn_options_carry_the_guarded_protocol_and_the_keepalive() -> None:
    limits = EdgeLimits(16_384, 10, 1.0, 7.0)
    options = limits.uvicorn_options()
    assert options["timeout_keep_alive"] == 7.0
    assert options["http"].func is EdgeProtocol and options["http"].keywords == {"limits": limits}


def test_the_limits_survive_pickling_for_serve_workers() -> None:
    options = EdgeLimits(16_384, 10, 1.0, 7.0).uvicorn_options()
    assert pickle.loads(pickle.dumps(options["http"])).keywords == options["http"].keywords
