"""`osma-router dev` with the fake upstreams, as a user runs it: a real process tree, the
printed block read the way a person reads it, real HTTP to the receiver and the fakes."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from receiver.dev.fakes import pick_port
from receiver.store.server import free_port
from tests.support import ROOT, osma_router, start_osma_router

KPI_ROUTES = ROOT / "examples" / "kpi.toml"
BUILT_IN_SECRET = "whsec_dev_local_only"


class Dev:
    """One `osma-router dev` child; its output is drained by threads so a wait is bounded."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.process = start_osma_router(
            ["dev", "--port", str(self.port), *args],
            env,
            cwd,
            start_new_session=True,  # a group of its own, as a terminal's foreground job
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out, True), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[str], announce: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)
            if announce:
                self.lines.put(line)
        if announce:
            self.lines.put(None)

    def block(self, timeout: float = 60) -> dict[str, str]:
        """The printed block up to "Ctrl-C", as {name: value} from its `  name : value` lines."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no dev block within {timeout} s: {lines} {self.err}") from None
            if line is None:
                raise AssertionError(f"dev exited before its block: {lines} {''.join(self.err)}")
            lines.append(line)
            if "Ctrl-C" in line:
                break
        found = (re.match(r"  (\w+)\s+: (.*)$", line.rstrip("\n")) for line in lines)
        return {m.group(1): m.group(2) for m in found if m}

    def stop(self) -> int:
        """Ctrl-C as a terminal sends it, to the whole foreground group; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        finally:
            for reader in self._readers:
                reader.join(10)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def url_in(value: str) -> str:
    found = re.search(r"https?://\S+", value)
    assert found, value
    return found.group(0)


def measurements(curl_line: str) -> list[dict[str, object]]:
    """What the printed `curl -u USER:PASS URL` shows, fetched as curl would."""
    words = shlex.split(curl_line)
    assert words[:2] == ["curl", "-u"], curl_line
    username, _, password = words[2].partition(":")
    response = httpx.get(words[3], auth=(username, password), timeout=5)
    assert response.status_code == 200, response.text
    reports: list[dict[str, object]] = response.json()
    return reports


def test_dev_without_upstream_settings_posts_the_kpi_example_to_its_fake_ogsm(tmp_path):
    """The README's quick start: `dev` with examples/kpi.toml, the printed `send` line,
    then the measurement seen through the printed `curl` line and on the console."""
    dev = Dev([], {"OSMA_ROUTER_CONFIG": str(KPI_ROUTES)}, tmp_path)
    try:
        block = dev.block()
        assert block["secret"].startswith(BUILT_IN_SECRET)
        assert "fake Osma" in block["osma"] and "fake OGSM" in block["ogsm"]
        assert "indicator 456" in block["ogsm"]  # made from the routes file
        osma_url, ogsm_url = url_in(block["osma"]), url_in(block["ogsm"])
        assert ogsm_url.endswith("/api/v2")
        assert measurements(block["see"]) == []

        command = shlex.split(block["try"])
        # As typed in a shell with dev's PATH: `osma-router`, or its path when PATH lacks it.
        assert Path(command[0]).name == "osma-router" and shutil.which(command[0]), command[0]
        sent = osma_router(command[1:], {}, ROOT)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert '"jobs":1' in sent.stdout

        deadline = time.monotonic() + 60
        while not (posted := measurements(block["see"])) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(posted) == 1, f"no measurement within 60 s: {''.join(dev.err)}"
        assert posted[0]["indicator"] == {"id": 456}
        assert posted[0]["at"] == "2026-11-01" and posted[0]["current_value"] == 1

        # The printed `trace` line, run from another terminal (no OSMA_ROUTER_* of dev's):
        # it names dev's embedded Redis and routes file, so the job shows its handler.
        event_id = json.loads(sent.stdout[sent.stdout.index("{") :])["id"]
        words = shlex.split(block["trace"])
        settings = dict(word.split("=", 1) for word in words if re.match(r"OSMA_ROUTER_\w+=", word))
        program, *args = words[len(settings) :]
        assert Path(program).name == "osma-router" and args == ["trace", "EVENT_ID"], block["trace"]
        traced = osma_router(["trace", event_id, "--json"], settings, ROOT)
        assert traced.returncode == 0, traced.stderr
        (job,) = json.loads(traced.stdout)["jobs"]
        assert job["handler"] == "ogsm.indicator_report", traced.stdout

        # The console: no login on loopback; the event's trace through its search box.
        console_url = url_in(block["console"])
        assert "no login" in block["console"]
        trace = httpx.get(f"{console_url}search", params={"q": event_id}, follow_redirects=True, timeout=10)
        assert trace.status_code == 200, trace.text
        assert event_id in trace.text and "succeeded" in trace.text and "done" in trace.text

        assert dev.stop() == 0
        assert "job succeeded" in "".join(dev.err) and "ogsm.indicator_report" in "".join(dev.err)
        assert "Traceback" not in "".join(dev.err)  # Redis outlived the worker that used it
        for url in (osma_url, ogsm_url, console_url):  # the fakes and the console stopped with it
            with pytest.raises(httpx.HTTPError):
                httpx.get(url, timeout=1)
    finally:
        dev.kill()


def test_dev_sends_the_fake_osmas_webhooks_to_its_own_receiver(tmp_path):
    """A task written through the fake Osma's API comes back to the receiver as a signed
    webhook, as Osma does it: the worker runs the route for it."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[[routes]]\non = "task.created"\nhandler = "noop"\n')
    dev = Dev([], {"OSMA_ROUTER_CONFIG": str(routes)}, tmp_path)
    try:
        block = dev.block()
        key = re.search(r"API key (sk_test_\w+)", block["osma"])
        assert key, block["osma"]
        created = httpx.post(
            url_in(block["osma"]) + "/tasks",
            json={"template": "update_blood_pressure"},
            headers={"osma-api-key": key.group(1)},
            timeout=5,
        )
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 60
        while "handler=noop" not in "".join(dev.err) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dev.stop() == 0
        assert "job succeeded" in "".join(dev.err) and "handler=noop" in "".join(dev.err)
    finally:
        dev.kill()


REAL_OSMA = {
    "OSMA_ROUTER_OSMA_API_KEY": "sk_test_real_key_1234",
    "OSMA_ROUTER_OSMA_BASE_URL": "http://127.0.0.1:9",
}
REAL_OGSM = {
    "OSMA_ROUTER_OGSM_BASE_URL": "http://127.0.0.1:9/api/v2",
    "OSMA_ROUTER_OGSM_USERNAME": "someone",
    "OSMA_ROUTER_OGSM_PASSWORD": "real-ogsm-password-1234",
}


@pytest.mark.parametrize(
    ("args", "env", "fake_osma", "fake_ogsm"),
    [
        (["--no-fake-upstreams"], {}, False, False),
        ([], {**REAL_OSMA, **REAL_OGSM}, False, False),
        ([], REAL_OSMA, False, True),  # only the missing one is faked
        (["--fake-upstreams"], {**REAL_OSMA, **REAL_OGSM}, True, True),
    ],
    ids=["forced-off", "both-configured", "osma-configured", "forced-on"],
)
def test_dev_fakes_only_the_upstreams_without_settings_unless_told(tmp_path, args, env, fake_osma, fake_ogsm):
    dev = Dev(args, env, tmp_path)
    try:
        block = dev.block()
        assert ("fake Osma" in block["osma"]) is fake_osma, block
        assert ("fake OGSM" in block["ogsm"]) is fake_ogsm, block
        assert ("see" in block) is fake_ogsm
        if not fake_osma and env:
            assert block["osma"].startswith("http://127.0.0.1:9 ")
        if not fake_osma and not env:
            assert "not configured" in block["osma"] and "not configured" in block["ogsm"]
        assert dev.stop() == 0
        everything = "".join(dev.out + dev.err)
        assert "sk_test_real_key_1234" not in everything and "real-ogsm-password-1234" not in everything
    finally:
        dev.kill()


def test_dev_prints_a_secret_the_user_set_masked(tmp_path):
    dev = Dev(
        ["--no-fake-upstreams"], {"OSMA_ROUTER_WEBHOOK_SECRETS": "whsec_mine_5678,whsec_old_1"}, tmp_path
    )
    try:
        block = dev.block()
        assert block["secret"] == "(from OSMA_ROUTER_WEBHOOK_SECRETS)"
        # The printed `send` signs with the variable's first secret, as the user's shell has it.
        command = shlex.split(block["try"])
        assert "--secret" not in command
        sent = osma_router(command[1:], {"OSMA_ROUTER_WEBHOOK_SECRETS": "whsec_mine_5678,whsec_old_1"}, ROOT)
        assert sent.returncode == 0 and "202" in sent.stdout, sent.stdout + sent.stderr
        assert dev.stop() == 0
        everything = "".join(dev.out + dev.err)
        assert "whsec_mine_5678" not in everything and "whsec_old_1" not in everything
        assert BUILT_IN_SECRET not in everything
    finally:
        dev.kill()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_dev_refuses_a_non_loopback_host_with_the_built_in_secret(tmp_path, host):
    result = osma_router(["dev", "--host", host, "--port", str(free_port())], {}, tmp_path, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osma-router: error: "), result.stderr
    assert host in lines[0] and "OSMA_ROUTER_WEBHOOK_SECRETS" in lines[0]
    assert "Traceback" not in result.stderr and "running" not in result.stdout


def test_dev_killed_outright_leaves_nothing_serving(tmp_path):
    """SIGKILL: the fakes are threads of `dev` and go with it; its children are ended by
    the kernel (receiver/store/server.py, `dying_with_parent`)."""
    dev = Dev([], {"OSMA_ROUTER_CONFIG": str(KPI_ROUTES)}, tmp_path)
    try:
        block = dev.block()
        urls = [url_in(block[name]) for name in ("receiver", "console", "osma", "ogsm")]
        redis = re.match(r"redis://127\.0\.0\.1:(\d+)/", block["redis"])
        assert redis, block["redis"]
        redis_port = int(redis.group(1))
    finally:
        dev.kill()
    deadline = time.monotonic() + 30
    while (serving := _serving(urls, redis_port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not serving, f"still answering after dev was killed: {serving}"


def _serving(urls: list[str], redis_port: int) -> list[str]:
    found = []
    for url in urls:
        try:
            httpx.get(url, timeout=1)
            found.append(url)
        except httpx.HTTPError:
            pass
    try:
        socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
        found.append(f"redis on {redis_port}")
    except OSError:
        pass
    return found


def test_dev_refuses_mode_any_with_the_fake_osma_before_starting(tmp_path):
    """The fake's key is a test key: with OSMA_ROUTER_MODE=any the receiver would refuse it."""
    result = osma_router(["dev", "--port", str(free_port())], {"OSMA_ROUTER_MODE": "any"}, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "OSMA_ROUTER_MODE=any" in lines[0], result.stderr
    assert "running" not in result.stdout


def test_dev_ports_are_the_next_ones_unless_taken():
    """The console on the receiver's port + 1, the fakes on + 2 and + 3 (receiver/dev/runner.py,
    fakes.py): a port that is taken, or one of dev's own, gives way to a free one."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert pick_port(taken, avoid=set()) != taken
    free = free_port()
    assert pick_port(free, avoid=set()) == free
    other = pick_port(free, avoid={free})
    assert other != free
