"""A handler whose exception quotes the event (`sample.leaky` raises with the member's
name) leaves that text in its job's meta when no encryption keys are set: the console's
failed-job pages show the error with the event's values masked, as `trace` and the
worker's log line do."""

from __future__ import annotations

import uuid

import pytest

from receiver.testing import task_event
from receiver.testing.pytest_plugin import RouterUnderTest

from .conftest import MEMBER_NAME, ConsoleClient

LEAKY = '[[routes]]\non = "task.completed"\nhandler = "sample.leaky"\nretries = 0\n'


@pytest.fixture
def osma_router_routes() -> str:
    return LEAKY


def test_failed_pages_mask_the_event_s_values_in_the_error(
    console: ConsoleClient, osma_router: RouterUnderTest
) -> None:
    event = task_event("task.completed", {"id": f"task_{uuid.uuid4().hex[:8]}", "name": MEMBER_NAME})
    assert osma_router.post(event).status_code == 202
    osma_router.drain()

    for path in ("/failed", "/failed/retry"):
        answer = console.http.get(path)
        assert answer.status_code == 200, path
        assert "Quillfeather" not in answer.text, path
    assert "ValueError: cannot file the visit of ***" in console.http.get("/failed").text
    # The filter reads the masked text too: it cannot be used to probe for a name.
    assert f"_e-{event['id']}_" not in console.http.get("/failed?error=Quillfeather").text
