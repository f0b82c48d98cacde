"""OSMA_ROUTER_PLUGINS: when set, only the named entry points of `osma_router.handlers`
are imported; the others are found, listed as skipped, and never imported. `builtin` is the
entry point osma-router itself ships, and only that one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from receiver.exceptions import ConfigError
from receiver.model.plugins import BUILTIN, HandlerRegistry
from receiver.settings import Settings
from tests.support import PLUGIN_PATH, ROOT, subprocess_env

# Run in a fresh interpreter: whether a module was imported is a fact of one process.
PROBE = """
import sys
from receiver.model.plugins import HandlerRegistry
allowed = None if sys.argv[1] == "-" else sys.argv[1].split(",")
registry = HandlerRegistry.discover(allowed)
print(sorted(registry.plugins))
print(sorted(registry.skipped))
print(sorted(m for m in ("ops_plugin", "sample_plugin", "squatter") if m in sys.modules))
"""


def probe(allowed: str, extra_path: Path | None = None) -> list[str]:
    env = subprocess_env({})
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}:{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, allowed], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_without_an_allow_list_every_plugin_loads() -> None:
    loaded, skipped, imported = probe("-")
    assert loaded == "['builtin', 'ops', 'sample']" and skipped == "[]"
    assert imported == "['ops_plugin', 'sample_plugin']"


def test_with_an_allow_list_only_those_entry_points_are_imported() -> None:
    loaded, skipped, imported = probe("builtin,sample")
    assert loaded == "['builtin', 'sample']"
    assert skipped == "['ops (ops-plugin)']"
    assert imported == "['sample_plugin']"  # ops_plugin was never imported


def test_builtin_alone_loads_only_the_shipped_handlers() -> None:
    registry = HandlerRegistry.discover([BUILTIN])
    assert registry.plugins == ("builtin",)
    assert "ogsm.indicator_report" in registry and "sample.record" not in registry


def test_builtin_means_osma_routers_own_entry_point_not_a_namesake(tmp_path: Path) -> None:
    """Another package that publishes an entry point called `builtin` is not let in by it."""
    (tmp_path / "squatter.py").write_text(
        "from receiver import HandlerGroup\ngroup = HandlerGroup('squat')\n"
        "@group.handler()\ndef take(event, ctx):\n    pass\n"
    )
    dist = tmp_path / "squatter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: squatter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[osma_router.handlers]\nbuiltin = squatter:group\n")

    loaded, skipped, imported = probe("builtin", tmp_path)
    assert loaded == "['builtin']"
    assert skipped == "['builtin (squatter)', 'ops (ops-plugin)', 'sample (sample-plugin)']"
    assert imported == "[]"
    everything = probe("-", tmp_path)  # without the allow-list, every entry point loads
    assert everything[2] == "['ops_plugin', 'sample_plugin', 'squatter']"


def test_an_allowed_name_nothing_publishes_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        HandlerRegistry.discover(["builtin", "care"])
    message = str(caught.value)
    assert "OSMA_ROUTER_PLUGINS" in message and "'care'" in message and "\n" not in message


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), ("", None), ("builtin", ("builtin",)), (" builtin , care ,", ("builtin", "care"))],
)
def test_the_setting_is_a_list_of_entry_point_names(value: str | None, expected: object) -> None:
    env = {} if value is None else {"OSMA_ROUTER_PLUGINS": value}
    assert Settings.from_env(env, env_file=None).plugins == expected


@pytest.mark.parametrize("value", [",", "builtin,care plugin", "builtin;care", "a=b"])
def test_a_malformed_allow_list_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="OSMA_ROUTER_PLUGINS"):
        Settings.from_env({"OSMA_ROUTER_PLUGINS": value}, env_file=None)


def test_the_plugin_path_is_where_the_suite_says() -> None:
    assert (PLUGIN_PATH / "ops_plugin-0.1.dist-info" / "entry_points.txt").is_file()
