"""`osma-router new-plugin`: the package it writes installs, passes its own tests, and
loads in `check-config`; bad names and a directory in the way are one line and exit 1."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.cli.scaffold import package_name, render
from receiver.model.plugins import HandlerGroup, HandlerRegistry
from receiver.model.routes import load_config
from receiver.testing import task_event
from tests.support import ROOT, osma_router

pytest_plugins = ["pytester"]

NAME, PACKAGE = "care-kpi", "care_kpi"
FILES = {
    "pyproject.toml",
    "README.md",
    "osma-router.toml",
    f"{PACKAGE}/__init__.py",
    f"tests/test_{PACKAGE}.py",
}


def new_plugin(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """`osma-router new-plugin ARGS` in `tmp_path`; `path`: the shell's PATH, if not this one."""
    return osma_router(["new-plugin", *args], {} if path is None else {"PATH": path}, tmp_path)


def next_steps(stdout: str) -> list[list[str]]:
    """The printed next steps, each as the words a shell would run."""
    return [shlex.split(line) for line in stdout.split("next steps:\n", 1)[1].splitlines()]


def load_group(plugin: Path) -> HandlerGroup:
    """The generated package's `group`, imported from its file (it is not installed here)."""
    spec = importlib.util.spec_from_file_location(PACKAGE, plugin / PACKAGE / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    group = module.group
    assert isinstance(group, HandlerGroup)
    return group


def test_new_plugin_writes_the_package_and_prints_the_next_steps(tmp_path):
    result = new_plugin(tmp_path, NAME, path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert result.returncode == 0, result.stderr
    plugin = tmp_path / NAME  # --dir defaults to ./NAME
    written = {str(p.relative_to(plugin)) for p in plugin.rglob("*") if p.is_file()}
    assert written == FILES
    assert "handler care_kpi.kpi" in result.stdout
    for step in (
        "pip install -e ./care-kpi",
        "pytest ./care-kpi",
        "OSMA_ROUTER_CONFIG=./care-kpi/osma-router.toml osma-router dev",
    ):
        assert step in result.stdout

    pyproject = tomllib.loads((plugin / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == NAME
    assert pyproject["project"]["entry-points"]["osma_router.handlers"] == {PACKAGE: f"{PACKAGE}:group"}
    handler = (plugin / PACKAGE / "__init__.py").read_text()
    assert "ctx.ogsm" in handler and len(handler.splitlines()) <= 30  # a newcomer reads all of it
    test = (plugin / "tests" / f"test_{PACKAGE}.py").read_text()
    assert "deliver(" in test and "fake_ogsm.add_indicator(" in test

    group = load_group(plugin)
    assert sorted(group.handlers) == ["care_kpi.kpi"]
    config = load_config(plugin / "osma-router.toml", HandlerRegistry([group]))
    (route,) = config.routes
    assert route.handler == "care_kpi.kpi" and route.on == ("task.completed",)


def test_the_next_steps_name_this_environments_commands_when_path_lacks_them(tmp_path):
    """After `make install`, a clone's commands are in .venv/bin and not on PATH: the steps
    then spell their paths, since a bare `pip` would install the plugin into another Python
    (and look for osma-router on an index)."""
    ours = Path(sys.executable).parent
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    without = new_plugin(tmp_path / "a", NAME, path="/usr/bin:/bin")
    assert without.returncode == 0, without.stderr
    programs = [words[0] if "=" not in words[0] else words[1] for words in next_steps(without.stdout)]
    assert programs == [str(ours / "pip"), str(ours / "pytest"), str(ours / "osma-router")]
    with_ours = new_plugin(tmp_path / "b", NAME, path=f"{ours}:/usr/bin:/bin")
    assert with_ours.returncode == 0, with_ours.stderr
    assert [words[0] for words in next_steps(with_ours.stdout)][:2] == ["pip", "pytest"]
    assert "OSMA_ROUTER_CONFIG=./care-kpi/osma-router.toml osma-router dev" in with_ours.stdout


def test_new_plugin_writes_into_an_empty_directory_given_by_dir(tmp_path):
    (tmp_path / "plugins" / "kpi").mkdir(parents=True)
    result = new_plugin(tmp_path, "kpi", "--dir", "plugins/kpi")
    assert result.returncode == 0, result.stderr
    assert "pip install -e ./plugins/kpi" in result.stdout
    assert (tmp_path / "plugins" / "kpi" / "kpi" / "__init__.py").is_file()


@pytest.mark.parametrize("name", ["1kpi", "care kpi", "care-", "_care", "care.kpi", "café", "class", "json"])
def test_a_name_that_is_no_python_package_is_one_line_and_exit_1(tmp_path, name):
    result = new_plugin(tmp_path, name)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a valid plugin name" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("in_the_way", ["a file in the directory", "a file named like the directory"])
def test_an_existing_non_empty_target_is_refused_and_left_alone(tmp_path, in_the_way):
    if in_the_way == "a file in the directory":
        (tmp_path / NAME).mkdir()
        (tmp_path / NAME / "notes.txt").write_text("mine")
    else:
        (tmp_path / NAME).write_text("mine")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = new_plugin(tmp_path, NAME)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not an empty directory" in result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,30}", fullmatch=True))
def test_every_accepted_name_renders_a_pyproject_that_parses(name):
    try:
        package = package_name(name)
    except ValueError:
        return
    assert package.isidentifier() and package == name.replace("-", "_")
    pyproject = tomllib.loads(render(name)["pyproject.toml"])
    assert pyproject["project"]["entry-points"]["osma_router.handlers"] == {package: f"{package}:group"}


# The generated handler, run in this process through the same fixtures its own tests use.


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    result = new_plugin(tmp_path, NAME)
    assert result.returncode == 0, result.stderr
    return tmp_path / NAME


@pytest.fixture
def osma_router_routes(plugin: Path) -> str:
    return (plugin / "osma-router.toml").read_text()


@pytest.fixture
def osma_router_handlers(plugin: Path) -> list[HandlerGroup]:
    return [load_group(plugin)]


def test_the_generated_handler_posts_one_measurement_per_completed_task(deliver, fake_ogsm):
    fake_ogsm.add_indicator(id=456)  # the routes file's indicator_id
    event = task_event("task.completed", {"id": "task_1"}, created_at="2024-10-01T09:00:00Z")
    deliver(event)
    deliver(event)  # a redelivery: a duplicate, nothing queued
    (report,) = fake_ogsm.indicator_reports(456)
    assert report["at"] == "2024-10-01" and report["current_value"] == 1


# The routes file's commented `where` line, put to use: the generated tests still pass,
# since their event is a task the route's `where` matches.
REGISTER = """
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import care_kpi


@pytest.fixture
def osma_router_handlers():
    return [care_kpi.group]  # instead of installing the package for its entry point
"""


def test_the_generated_tests_pass_with_the_routes_where_line_in_use(pytester: pytest.Pytester):
    assert new_plugin(pytester.path, NAME).returncode == 0
    plugin = pytester.path / NAME
    routes = plugin / "osma-router.toml"
    text = routes.read_text()
    assert "\n# where = " in text
    routes.write_text(text.replace("\n# where = ", "\nwhere = "))
    (plugin / "conftest.py").write_text(REGISTER)
    result = pytester.runpytest_subprocess(
        str(plugin), "-p", "no:cacheprovider", "-o", "addopts=", timeout=600
    )
    result.assert_outcomes(passed=2)


# From nothing to an installed plugin, as a team does it, in a venv of its own.


def fresh_venv(path: Path) -> Path:
    """A new venv whose only addition is a .pth file: it imports this checkout first, then
    the packages of the venv running these tests (pip, setuptools, pytest, osma-router's
    dependencies, and its entry points). Fast, and needs no network."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    lines = [str(ROOT), *(f"import site; site.addsitedir({site!r})" for site in ours)]
    (Path(purelib) / "osma_router_checkout.pth").write_text("\n".join(lines) + "\n")
    return python


def isolated_env(**extra: str) -> dict[str, str]:
    """This environment without what would reach past the fresh venv (PYTHONPATH, an active
    venv, pytest options, OSMA_ROUTER_* settings); pip never goes to an index."""
    dropped = ("PYTHON", "VIRTUAL_ENV", "PYTEST_", "PIP_", "OSMA_ROUTER_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=isolated_env(**extra), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.mark.slow
def test_a_new_plugin_installs_passes_its_tests_and_loads_in_check_config(tmp_path):
    plugin = tmp_path / NAME
    assert new_plugin(tmp_path, NAME).returncode == 0
    python = str(fresh_venv(tmp_path / "venv"))

    run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(plugin)], tmp_path)
    found = run([python, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], tmp_path).stdout
    assert Path(found.strip()) == plugin / PACKAGE / "__init__.py"

    tests = run([python, "-m", "pytest", str(plugin), "-p", "no:cacheprovider"], tmp_path)
    assert "2 passed" in tests.stdout

    check = run(
        [python, "-m", "receiver.cli", "check-config"],
        tmp_path,
        OSMA_ROUTER_CONFIG=str(plugin / "osma-router.toml"),
    ).stdout
    (available,) = [line for line in check.splitlines() if line.startswith("handlers available:")]
    assert "care_kpi.kpi" in available
    assert "on task.completed -> care_kpi.kpi" in check and "configuration OK" in check
