"""The console in a real headless Chromium: the system's browser (Debian's `chromium`),
driven by Playwright through `executable_path`, so nothing is downloaded. A person's
flows: log in, find an event by its id, read its trace, retry a failed job through the
confirm step and see it succeed against the fake OGSM. Screenshots of the overview and
the event pages are kept under OSMA_ROUTER_CONSOLE_ARTIFACTS (default
tests/console/artifacts/, ignored by git); docs/console-overview.png is a copy of one.

Without a browser these tests skip, saying how to install one; with
OSMA_ROUTER_REQUIRE_BROWSER=1 (set by .ci/run) a missing browser fails them instead.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.testing.fake_ogsm import FakeOgsm
from receiver.testing.pytest_plugin import RouterUnderTest
from receiver.testing.server import LiveServer
from tests.support import ROOT

from .conftest import MEMBER_NAME, TOKEN
from .test_console_http import completed_task, failed_event

try:
    from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
except ImportError:  # the dev extra brings it; a bare install may not have it
    sync_playwright = None

INSTALL = "apt-get install chromium chromium-driver"
CHROMIUM_ARGS = [
    "--no-sandbox",  # containers (CI) run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("OSMA_ROUTER_CONSOLE_ARTIFACTS") or ROOT / "tests" / "console" / "artifacts")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing(reason: str) -> None:
    if os.environ.get("OSMA_ROUTER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (OSMA_ROUTER_REQUIRE_BROWSER=1: a missing browser is a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """One Chromium for the module, on a fresh profile of its own."""
    executable = chromium()
    if executable is None:
        missing(f"no Chromium for the browser tests: install it with `{INSTALL}`")
    if sync_playwright is None:
        missing("no playwright for the browser tests: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(30_000)  # a loaded CI machine; no assertion is about time
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    browser.clear_cookies()  # every test logs in itself
    tab = browser.new_page()
    try:
        yield tab
    finally:
        tab.close()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, console_url: str) -> None:
    page.goto(console_url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("Console token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def no_member_data(page: Page) -> None:
    assert MEMBER_NAME not in page.content()


def test_log_in_find_an_event_by_its_id_and_read_its_trace(
    page: Page, console_server: LiveServer, osma_router: RouterUnderTest, fake_ogsm: FakeOgsm
) -> None:
    failing = failed_event(osma_router)  # the fake OGSM does not know indicator 456 yet
    fake_ogsm.add_indicator(id=456)
    ok = completed_task()
    for event in (ok, ok, completed_task()):  # accepted, a duplicate, accepted
        osma_router.post(event)
    osma_router.post(completed_task(), secret="whsec_not_ours")  # rejected
    osma_router.drain()
    osma_router.server.stop()  # a stopping receiver flushes its per-minute counts for the chart

    log_in(page, console_server.url)
    expect(page.locator("svg.chart")).to_be_visible()
    expect(page.locator(".legend")).to_contain_text("accepted: 3")
    no_member_data(page)
    screenshot(page, "overview.png")

    page.get_by_label("search").fill(failing)
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#event-id")).to_have_text(failing)
    expect(page.locator("#jobs")).to_contain_text("ogsm.indicator_report")
    expect(page.locator("#jobs")).to_contain_text("failed")
    expect(page.get_by_role("link", name="Retry…")).to_be_visible()
    no_member_data(page)
    screenshot(page, "event-failed.png")

    page.get_by_label("search").fill(str(ok["id"]))
    page.get_by_label("search").press("Enter")
    expect(page.locator("#event-id")).to_have_text(str(ok["id"]))
    expect(page.locator("#times-received")).to_contain_text("2")
    expect(page.locator("#effects")).to_contain_text("done")


def test_retry_a_failed_job_from_its_event_page(
    page: Page, console_server: LiveServer, osma_router: RouterUnderTest, fake_ogsm: FakeOgsm
) -> None:
    event_id = failed_event(osma_router)
    log_in(page, console_server.url)
    page.goto(f"{console_server.url}/events/{event_id}")
    page.get_by_role("link", name="Retry…").click()

    # The confirm step says what the retry will and will not post.
    expect(page.get_by_role("heading", level=1)).to_contain_text("Retry")
    expect(page.locator("#done-effects")).to_contain_text("No effect of this job is recorded as done")
    fake_ogsm.add_indicator(id=456)
    page.get_by_role("button", name="Retry this job").click()

    expect(page.locator("#event-id")).to_have_text(event_id)
    expect(page.locator(".notice")).to_contain_text("requeued")
    osma_router.drain()  # a burst worker runs the requeued job
    page.reload()
    expect(page.locator("#jobs")).to_contain_text("succeeded")
    expect(page.locator("#effects")).to_contain_text("done")
    expect(page.locator("#event-type")).to_have_text("task.completed")  # from the index: the job is gone
    assert [report["current_value"] for report in fake_ogsm.indicator_reports(456)] == [1]
    no_member_data(page)
    screenshot(page, "event-retried.png")


def test_the_pages_work_without_their_script(
    page: Page, console_server: LiveServer, osma_router: RouterUnderTest
) -> None:
    """Server-rendered: with the one script blocked, login, search and the trace still work."""
    page.route("**/*.js", lambda route: route.abort())
    event_id = failed_event(osma_router)
    log_in(page, console_server.url)
    page.get_by_label("search").fill(event_id)
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#event-id")).to_have_text(event_id)
    expect(page.locator("#jobs")).to_contain_text("failed")
