"""The `osma-router` command as a user runs it: real subprocesses, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from receiver.model.signature import SignatureVerifier
from receiver.settings import Secret
from receiver.store.server import free_port
from tests.support import (
    OSMA_ROUTER,
    ROOT,
    SECRET,
    env_for,
    handled,
    make_event,
    osma_router,
    signature_headers,
    start_osma_router,
    subprocess_env,
)

COMMANDS = ["dev", "serve", "worker", "sign", "send", "check-config", "failed"]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("did not come up")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    return process.wait(timeout=30)


def test_help_lists_every_command(tmp_path):
    result = osma_router(["--help"], {}, tmp_path)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_sign_prints_only_the_header_value(tmp_path):
    body = make_event(event_id="evt_sign")
    (tmp_path / "event.json").write_bytes(body)
    result = osma_router(
        ["sign", "--secret", SECRET, "--timestamp", "1700000000", "event.json"], {}, tmp_path
    )
    assert result.returncode == 0
    header = result.stdout.strip()
    assert header.startswith("t=1700000000,v1=") and "\n" not in header
    assert SignatureVerifier([Secret(SECRET)], 300).verify(body, header, now=1700000000) == 1700000000


def test_missing_file_is_one_line_and_exit_1(tmp_path):
    result = osma_router(["sign", "--secret", SECRET, "nope.json"], {}, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "nope.json" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"OSMA_ROUTER_SIGNATURE_TOLERANCE": "soon"}, "OSMA_ROUTER_SIGNATURE_TOLERANCE"),
        ({"OSMA_ROUTER_CONFIG": "missing.toml"}, "OSMA_ROUTER_CONFIG"),
        ({"OSMA_ROUTER_WEBHOOK_SECRETS": ""}, "OSMA_ROUTER_WEBHOOK_SECRETS"),
        ({"OSMA_ROUTER_REDIS_URL": ""}, "OSMA_ROUTER_REDIS_URL"),
    ],
)
def test_serve_refuses_a_bad_configuration_in_one_line(tmp_path, redis_server, env, names):
    result = osma_router(
        ["serve", "--port", str(free_port())], env_for(redis_server.url, **env), tmp_path, timeout=30
    )
    assert result.returncode == 1
    assert names in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_check_config_lists_routes_and_masks_secrets(tmp_path, redis_server, write_routes):
    routes = write_routes('[[routes]]\non = "task.completed"\nhandler = "sample.record"\nlabel = "x"\n')
    result = osma_router(
        ["check-config"], env_for(redis_server.url, routes, OSMA_ROUTER_OGSM_PASSWORD="hunter2-pw"), tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "sample.record" in result.stdout and "task.completed" in result.stdout
    assert SECRET not in result.stdout and "hunter2-pw" not in result.stdout
    assert "**********" in result.stdout


def test_check_config_rejects_an_unknown_handler(tmp_path, redis_server, write_routes):
    routes = write_routes('[[routes]]\non = "task.completed"\nhandler = "no.such"\n')
    result = osma_router(["check-config"], env_for(redis_server.url, routes), tmp_path)
    assert result.returncode == 1
    assert "no.such" in result.stderr and str(routes) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_send_worker_and_failed_commands_end_to_end(tmp_path, redis, redis_server, write_routes):
    routes = write_routes(
        '[[routes]]\non = "task.completed"\nhandler = "sample.record"\nlabel = "cli"\n\n'
        '[[routes]]\non = "task.completed"\nhandler = "sample.broken"\nretries = 1\nbackoff = [0]\n'
    )
    env = env_for(redis_server.url, routes)
    port = free_port()
    serve = start_osma_router(["serve", "--port", str(port)], env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, serve)
        (tmp_path / "event.json").write_bytes(make_event(event_id="evt_cli"))
        sent = osma_router(["send", f"{url}/webhooks/osma", "event.json", "--secret", SECRET], env, tmp_path)
        assert sent.returncode == 0
        assert sent.stdout.splitlines()[0] == "HTTP 202 Accepted"
        assert '"jobs":2' in sent.stdout
        again = osma_router(["send", f"{url}/webhooks/osma", "event.json", "--secret", SECRET], env, tmp_path)
        assert again.returncode == 0 and "duplicate" in again.stdout
        bad = osma_router(
            ["send", f"{url}/webhooks/osma", "event.json", "--secret", "whsec_wrong"], env, tmp_path
        )
        assert bad.returncode == 1 and "HTTP 401" in bad.stdout and "signature_mismatch" in bad.stdout

        redis.set("test:broken", "1")
        worker = osma_router(["worker", "--burst"], env, tmp_path)
        assert worker.returncode == 0, worker.stderr
        assert "evt_cli|sample.record|cli|1" in handled(redis)

        listed = osma_router(["failed", "list"], env, tmp_path)
        assert listed.returncode == 0
        (row,) = [line for line in listed.stdout.splitlines() if "evt_cli" in line]
        job_id = row.split()[0]
        assert "sample.broken" in row and "HandlerError: broken on purpose" in row

        shown = osma_router(["failed", "show", job_id], env, tmp_path)
        assert shown.returncode == 0 and "evt_cli" in shown.stdout
        missing = osma_router(["failed", "show", "no_such_job"], env, tmp_path)
        assert missing.returncode == 1 and "no_such_job" in missing.stderr

        redis.delete("test:broken")
        assert osma_router(["failed", "retry", "--all"], env, tmp_path).returncode == 0
        assert osma_router(["worker", "--burst"], env, tmp_path).returncode == 0
        assert "no failed jobs" in osma_router(["failed", "list"], env, tmp_path).stdout
        assert osma_router(["failed", "retry", "--all"], env, tmp_path).returncode == 0
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit shows it
        assert stop(serve) in (0, -signal.SIGTERM)
        logs = serve.stderr.read()
        assert "Finished server process" in logs
        assert SECRET not in logs and "bp" not in logs  # no secret, no task field values
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_dev_runs_everything_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = {"OSMA_ROUTER_CONFIG": str(ROOT / "examples" / "osma-router.toml")}
    dev = start_osma_router(["dev", "--port", str(port)], env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, dev, timeout=30)
        body = make_event(event_id="evt_dev")
        response = httpx.post(
            url + "/webhooks/osma",
            content=body,
            headers=signature_headers(body, secret="whsec_dev_local_only"),
        )
        assert response.status_code == 202 and response.json()["jobs"] == 1
        assert stop(dev, signal.SIGINT) == 0
        out = dev.stdout.read()
        assert url in out and "whsec_dev_local_only" in out
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/healthz", timeout=1)
    finally:
        if dev.poll() is None:
            os.kill(dev.pid, signal.SIGKILL)
            dev.wait()


def test_dev_killed_outright_takes_its_receiver_worker_and_redis_with_it(tmp_path):
    """SIGKILL cannot be handled, so `dev` cannot stop its children itself: they are
    started so that the kernel ends them when `dev` dies (none is left serving)."""
    port = free_port()
    dev = subprocess.Popen(
        [*OSMA_ROUTER, "dev", "--port", str(port)],
        env=subprocess_env({}),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    try:
        wait_until_up(f"http://127.0.0.1:{port}", dev, timeout=30)
        children = [int(p) for p in (Path(f"/proc/{dev.pid}/task/{dev.pid}/children").read_text().split())]
        assert len(children) >= 3, children  # redis-server, serve, worker
        os.kill(dev.pid, signal.SIGKILL)
        dev.wait()
        deadline = time.monotonic() + 15
        alive = children
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in children if _running(pid)]
        assert not alive, f"still running after dev was killed: {alive}"
    finally:
        for pid in [dev.pid, *children]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
