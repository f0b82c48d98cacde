"""requirements/: the hashed lock files agree with pyproject.toml, and `make` and the
Dockerfile install from them. Offline: the files are read, nothing is resolved."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import ROOT

REQUIREMENTS = ROOT / "requirements"
RUNTIME, BUILD, DEV = (REQUIREMENTS / name for name in ("runtime.txt", "build.txt", "dev.txt"))
RELOCK = "run `make lock` and commit requirements/ (README, 'Development')"


@dataclass(frozen=True)
class Pin:
    version: Version
    marker: Marker | None
    hashes: frozenset[str]


def pins(path: Path) -> dict[str, Pin]:
    """A lock file's entries by canonical name; every entry must be `name==version` with hashes."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entries: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{path.name}: only pinned packages belong in a lock: {line!r}"
        requirement, *options = line.split(" --hash=")
        parsed = Requirement(requirement)
        (specifier,) = parsed.specifier
        assert specifier.operator == "==", f"{path.name}: {parsed.name} is not pinned to one version"
        hashed = options and all(o.startswith("sha256:") for o in options)
        assert hashed, f"{path.name}: {parsed.name} has no hash"
        entries[canonicalize_name(parsed.name)] = Pin(
            Version(specifier.version), parsed.marker, frozenset(o.split()[0] for o in options)
        )
    return entries


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def needed(requirements: list[str]) -> list[Requirement]:
    """The requirements and what their extras pull in, as they apply on Linux with Python 3.11."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        found.append(requirement)
        for extra in sorted(requirement.extras):
            for dependency in importlib.metadata.requires(requirement.name) or []:
                pulled = Requirement(dependency)
                if pulled.marker is not None and pulled.marker.evaluate({"extra": extra}):
                    pulled.marker = None
                    found.append(pulled)
    return found


def assert_locked(requirements: list[Requirement], lock: Path) -> None:
    locked = pins(lock)
    for requirement in requirements:
        pin = locked.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is required but not in {lock.name}: {RELOCK}"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{lock.name} pins {requirement.name}=={pin.version}, outside {requirement}: {RELOCK}"
        )


def test_every_entry_is_pinned_with_hashes():
    for lock in (RUNTIME, BUILD, DEV):
        assert pins(lock), f"{lock.name} is empty"
        assert lock.read_text().splitlines()[1] == "#    make lock", f"{lock.name}: made by hand? {RELOCK}"


def test_every_runtime_dependency_is_locked():
    runtime = needed(pyproject()["project"]["dependencies"])
    assert_locked(runtime, RUNTIME)
    assert_locked(runtime, DEV)


def test_every_dev_and_build_dependency_is_locked():
    project = pyproject()
    assert_locked(needed(project["project"]["optional-dependencies"]["dev"]), DEV)
    build = [Requirement(r) for r in project["build-system"]["requires"]]
    lines = (REQUIREMENTS / "build.in").read_text().splitlines()
    build_in = [Requirement(line) for line in lines if line[:1].isalpha()]
    assert {str(r) for r in build} == {str(r) for r in build_in}, "requirements/build.in != [build-system]"
    assert_locked(build, BUILD)
    assert_locked(build, DEV)


def test_dev_lock_holds_the_same_runtime_and_build_pins():
    """CI runs the tests on dev.txt, the image installs runtime.txt: the same versions and files
    (markers may differ: dev needs some packages unconditionally)."""
    dev = pins(DEV)
    for lock in (RUNTIME, BUILD):
        for name, pin in pins(lock).items():
            same = name in dev and (dev[name].version, dev[name].hashes) == (pin.version, pin.hashes)
            assert same, f"{name}: {lock.name} and dev.txt disagree: {RELOCK}"


def test_rq_is_pinned_to_one_minor_version():
    """The admit scripts write RQ's job hashes (tests/store/test_rq_job_format.py)."""
    (rq,) = (Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "rq")
    locked = pins(RUNTIME)["rq"].version
    major, minor = locked.major, locked.minor
    assert rq.specifier.contains(f"{major}.{minor}.0") and rq.specifier.contains(f"{major}.{minor}.99")
    assert not rq.specifier.contains(f"{major}.{minor + 1}.0"), f"{rq} admits RQ {major}.{minor + 1}"
    assert not rq.specifier.contains(f"{major + 1}.0.0"), f"{rq} admits RQ {major + 1}"
    installed = Version(importlib.metadata.version("rq"))
    assert (installed.major, installed.minor) == (major, minor), f"RQ {installed} installed, {locked} locked"


def make_rule(target: str) -> tuple[list[str], list[str]]:
    """A Makefile rule's prerequisites and recipe lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return lines[start].split(":", 1)[1].split(), recipe


def test_make_installs_exactly_the_dev_lock():
    prerequisites, recipe = make_rule("$(STAMP)")
    assert "$(LOCKS)" in prerequisites or "requirements/dev.txt" in prerequisites
    installs = [line for line in recipe if " install " in line and "--upgrade pip" not in line]
    assert installs[0].endswith("--require-hashes -r requirements/dev.txt"), installs
    assert all("--require-hashes" in line or "--no-deps" in line for line in installs), installs
    assert any("--no-deps" in line and "-e ." in line for line in installs), installs


@pytest.mark.parametrize("lock", ["runtime.txt", "build.txt", "dev.txt"])
def test_make_lock_writes_every_lock(lock):
    _, recipe = make_rule("lock")
    assert f"-o requirements/{lock}" in " ".join(recipe)
