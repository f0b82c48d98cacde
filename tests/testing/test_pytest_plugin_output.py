"""The pytest plugin as a handler author meets it: a plugin's own test file, run by pytest
in a subprocess (`pytester`), with the plugin's fixtures, a real Redis and the fakes. A
mistake in a handler fails the author's test, and pytest's output names the handler and
says what went wrong."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# A plugin's test file, as its author would write it from the README.
USER_TESTS = """
import pytest
from receiver import HandlerGroup, Unavailable
from receiver.testing import task_event

kpi = HandlerGroup("kpi")


@kpi.on("task.completed")
def wrong_method(event, ctx):
    ctx.ogsm.indicator_report.create(7, "2026-11-20", 1)  # the client has indicator_reports


@kpi.on("task.completed")
def unknown_kpi(event, ctx):
    ctx.ogsm.indicator_reports.create(7, "2026-11-20", 1)


@kpi.on("task.completed")
def flaky(event, ctx):
    if ctx.attempt < 3:
        raise Unavailable("OGSM is restarting")
    ctx.ogsm.indicator_reports.create(7, "2026-11-20", ctx.attempt)


@pytest.fixture
def osma_router_handlers():
    return [kpi]


def route(handler):
    return f'[[routes]]\\nhandler = "{handler}"\\n'


@pytest.mark.parametrize("osma_router_routes", [route("kpi.wrong_method")])
def test_wrong_method(deliver):
    deliver(task_event("task.completed", event_id="evt_wrong_method"))


@pytest.mark.parametrize("osma_router_routes", [route("kpi.unknown_kpi")])
def test_unknown_kpi(deliver):
    deliver(task_event("task.completed", event_id="evt_unknown_kpi"))


@pytest.mark.parametrize("osma_router_routes", [route("kpi.unknown_kpi")])
def test_told_not_to_raise(deliver):
    delivery = deliver(task_event("task.completed"), raise_on_failure=False)
    assert delivery.status_code == 202
    (job,) = delivery.jobs
    assert (job.handler, job.state, job.attempts) == ("kpi.unknown_kpi", "failed", 1)
    assert job.error.type == "Rejected"


@pytest.mark.parametrize("osma_router_routes", [route("kpi.flaky")])
def test_fails_twice_then_succeeds(deliver, fake_ogsm):
    fake_ogsm.add_indicator(id=7)
    job = deliver(task_event("task.completed")).job("kpi.flaky")
    assert (job.state, job.attempts, job.backoff) == ("finished", 3, [5, 20])
    assert [r["current_value"] for r in fake_ogsm.indicator_reports(7)] == [3]
"""


@pytest.fixture
def run(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(test_user_plugin=USER_TESTS)
    return pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", "-o", "addopts=", timeout=600)


def test_a_handler_mistake_fails_the_authors_test_and_says_why(run: pytest.RunResult) -> None:
    run.assert_outcomes(passed=2, failed=2)
    for name, outcome in [
        ("test_wrong_method", "FAILED"),
        ("test_unknown_kpi", "FAILED"),
        ("test_told_not_to_raise", "PASSED"),  # raise_on_failure=False: the failed job is returned
        ("test_fails_twice_then_succeeds", "PASSED"),  # retries at once, the backoff reported
    ]:
        run.stdout.fnmatch_lines([f"test_user_plugin.py::{name}* {outcome}*"])
    out = run.stdout.str()
    # Each failure names the handler, the event, the attempt and the handler's own error...
    run.stdout.fnmatch_lines(
        [
            "*HandlerFailed: handler kpi.wrong_method failed on event evt_wrong_method, attempt 5/5: "
            "AttributeError: 'OgsmClient' object has no attribute 'indicator_report'*",
        ]
    )
    run.stdout.fnmatch_lines(
        [
            "*HandlerFailed: handler kpi.unknown_kpi failed on event evt_unknown_kpi, attempt 1/5: "
            "Rejected: ogsm POST /indicator_reports: 422 *"
            "indicator 7 does not exist (fake_ogsm.add_indicator(id=7) creates it)*",
        ]
    )
    # ... with the handler's traceback chained: the line that went wrong is shown.
    assert "The above exception was the direct cause of the following exception" in out
    assert "ctx.ogsm.indicator_report.create(7" in out
    assert "def perform_job" not in out and "/rq/" not in out  # from our job entry, not RQ's worker
    # The captured log says the same: a worker's log line gives handler, event, attempt and error.
    run.stdout.fnmatch_lines(
        [
            "*Captured log call*",
            "*job failed: handler=kpi.wrong_method event=evt_wrong_method attempt 5/5: AttributeError: *",
        ]
    )
    run.stdout.fnmatch_lines(
        [
            "*job failed: handler=kpi.unknown_kpi event=evt_unknown_kpi attempt 1/5: Rejected: *"
            "indicator 7 does not exist (fake_ogsm.add_indicator(id=7) creates it)*",
        ]
    )
