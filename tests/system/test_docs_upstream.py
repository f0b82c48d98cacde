"""docs/upstream.md is real: its routes examples load, its plugin example is
examples/upstream_plugin/, and that example's tests pass when pytest runs them the way
a plugin author would (the fixtures come from the installed `pytest11` entry point)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import parse_config
from tests.support import ROOT, subprocess_env

DOC = ROOT / "docs" / "upstream.md"
EXAMPLE = ROOT / "examples" / "upstream_plugin"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_doc_shows_the_example_plugin_and_its_tests_verbatim():
    shown = blocks("python")
    assert (EXAMPLE / "follow_up_plugin.py").read_text() in shown
    assert (EXAMPLE / "test_follow_up_plugin.py").read_text() in shown


@pytest.mark.parametrize("text", [b for b in blocks("toml") if "[[routes]]" in b])
def test_every_routes_example_in_the_doc_loads(text):
    config = parse_config(tomllib.loads(text), registry=HandlerRegistry.discover())
    assert config.routes


def test_the_example_plugins_tests_pass_with_the_installed_pytest_plugin(tmp_path):
    for name in ("follow_up_plugin.py", "test_follow_up_plugin.py"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    env = subprocess_env({})
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
