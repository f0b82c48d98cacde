"""The README's plugin example is real: the code block is examples/plugin/care_plugin.py,
and that plugin, registered through its entry point, handles events end to end."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import ROOT, make_event

EXAMPLE = ROOT / "examples" / "plugin"


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(title, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_shows_the_example_plugin_verbatim():
    assert readme_block("## Writing a handler plugin") == (EXAMPLE / "care_plugin.py").read_text()


@pytest.fixture
def installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the example the way `pip install` would: a dist-info with its entry points."""
    dist = tmp_path / "care_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: care-plugin\nVersion: 0.1.0\n")
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    lines = [f"{name} = {target}" for name, target in project["entry-points"]["osma_router.handlers"].items()]
    (dist / "entry_points.txt").write_text("[osma_router.handlers]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    sys.modules.pop("care_plugin", None)


def test_example_plugin_counts_each_completed_task_once(installed_example, start_receiver, redis):
    receiver = start_receiver('[[routes]]\nhandler = "care.tally"\nkey_prefix = "t"\n')
    first = make_event(event_id="evt_care_1", obj={"id": "tsk_1", "template": "bp"})
    second = make_event(event_id="evt_care_2", obj={"id": "tsk_2", "template": "bp"})
    for body in (first, second, first):
        assert receiver.post(body).status_code in (200, 202)
    receiver.drain()
    assert redis.smembers("t:2026-11-20:bp") == {b"tsk_1", b"tsk_2"}
