"""Running it for real: HTTPS, trusted proxies, several uvicorn workers, and graceful
shutdown of the receiver and the worker. Real subprocesses, real sockets on loopback."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from rq.registry import FailedJobRegistry, StartedJobRegistry

from receiver.dev.tls import ensure_dev_certificate, make_self_signed
from receiver.exceptions import ConfigError
from receiver.keys import JOB_COUNTS_KEY, dedup_key
from receiver.settings import Settings
from receiver.store.server import free_port
from tests.ops_support import Process, Server, wait_for
from tests.support import OSMA_ROUTER, env_for, handled, make_event, signature_headers, subprocess_env


def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key, _ = make_self_signed(datetime.now(UTC))
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- HTTPS ---------------------------------------------------------------------------


def test_serve_speaks_https_with_the_given_certificate(tmp_path, redis, redis_server):
    cert, key = tls_files(tmp_path)
    server = Server(
        env_for(redis_server.url), tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https"
    )
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        server.wait_up(verify=trusted)
        body = make_event(event_id="evt_https")
        answer = httpx.post(
            server.url + "/webhooks/osma",
            content=body,
            headers=signature_headers(body),
            verify=trusted,
            timeout=10,
        )
        assert answer.status_code == 202 and answer.json()["id"] == "evt_https"
        assert redis.exists(dedup_key("osma", "evt_https"))
        with pytest.raises(httpx.HTTPError):  # the certificate is checked: no trust, no talk
            httpx.get(server.url + "/healthz", timeout=5)
        with pytest.raises(httpx.HTTPError):  # and plain HTTP is not served on that port
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    finally:
        assert server.stop() == 0


def test_serve_refuses_an_unusable_certificate_in_one_line(tmp_path, redis_server):
    cert, _ = tls_files(tmp_path)
    (tmp_path / "garbage.pem").write_text("not a key")
    result = subprocess.run(
        [
            *OSMA_ROUTER,
            "serve",
            "--port",
            str(free_port()),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(tmp_path / "garbage.pem"),
        ],
        env=subprocess_env(env_for(redis_server.url)),
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("osma-router: error: --tls-cert") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dev_certificate_is_made_once_and_reused(tmp_path):
    first = ensure_dev_certificate(tmp_path / "tls")
    second = ensure_dev_certificate(tmp_path / "tls")
    assert first.created and not second.created
    assert first.cert.read_bytes() == second.cert.read_bytes()
    assert first.key.stat().st_mode & 0o077 == 0  # the key is private to its owner
    old = first.cert.read_bytes()
    # Close to expiry (or unreadable), it is made anew.
    later = ensure_dev_certificate(tmp_path / "tls", now=first.not_after)
    assert later.created and later.cert.read_bytes() != old
    (tmp_path / "tls" / "localhost-key.pem").write_text("damaged")
    assert ensure_dev_certificate(tmp_path / "tls").created


def test_dev_https_serves_localhost_and_says_how_to_trust_it(tmp_path, redis, redis_server):
    port = free_port()
    dev = subprocess.Popen(
        [*OSMA_ROUTER, "dev", "--https", "--port", str(port)],
        env=subprocess_env(env_for(redis_server.url)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            lines.append(line)
            if not line or "Ctrl-C" in line:
                break
        banner = "".join(lines)
        cert = tmp_path / ".osma-router" / "tls" / "localhost.pem"
        assert cert.is_file(), banner
        assert f"https://127.0.0.1:{port}/webhooks/osma" in banner
        assert f"curl --cacert {cert}" in banner and "update-ca-certificates" in banner
        assert f"SSL_CERT_FILE={cert}" in banner
        trusted = ssl.create_default_context(cafile=str(cert))
        wait_for(lambda: _healthy(f"https://localhost:{port}", trusted), what="dev over https")
        body = make_event(event_id="evt_dev_https")
        sent = httpx.post(
            f"https://localhost:{port}/webhooks/osma",
            content=body,
            headers=signature_headers(body),
            verify=trusted,
        )
        assert sent.status_code == 202
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=30) == 0


def _healthy(url: str, verify: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url + "/healthz", verify=verify, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- proxies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "client"),
    [("127.0.0.1", "203.0.113.7"), ("10.0.0.0/8, ::1", "127.0.0.1"), (None, "127.0.0.1")],
)
def test_forwarded_headers_count_only_from_trusted_proxies(tmp_path, redis, redis_server, trusted, client):
    env = env_for(redis_server.url)
    if trusted is not None:
        env["OSMA_ROUTER_TRUSTED_PROXIES"] = trusted
    server = Server(env, tmp_path)
    try:
        server.wait_up()
        body = make_event(event_id="evt_proxy")
        answer = httpx.post(
            server.url + "/webhooks/osma",
            content=body,
            headers={
                **signature_headers(body, secret="whsec_wrong"),
                "x-forwarded-for": "203.0.113.7",
                "x-forwarded-proto": "https",
            },
        )
        assert answer.status_code == 401
    finally:
        assert server.stop() == 0
    rejected = [line for line in json_lines(server.stderr()) if line["msg"] == "delivery rejected"]
    assert [line["client"] for line in rejected] == [client]


def test_a_bad_trusted_proxy_entry_is_a_one_line_error(tmp_path, redis_server):
    result = subprocess.run(
        [*OSMA_ROUTER, "check-config"],
        env=subprocess_env(env_for(redis_server.url, OSMA_ROUTER_TRUSTED_PROXIES="10.0.0.0/8,caddy")),
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "OSMA_ROUTER_TRUSTED_PROXIES" in result.stderr and "'caddy'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        (
            "TRUSTED_PROXIES",
            " 127.0.0.1, 10.0.0.0/8 ,::1",
            "trusted_proxies",
            ("127.0.0.1", "10.0.0.0/8", "::1"),
        ),
        ("TRUSTED_PROXIES", "*", "trusted_proxies", ("*",)),
        ("SHUTDOWN_GRACE", "2.5", "shutdown_grace", 2.5),
        ("LOG_LEVEL", "DEBUG", "log_level", "debug"),
    ],
)
def test_operations_settings(name, value, field, expected):
    settings = Settings.from_env({f"OSMA_ROUTER_{name}": value}, env_file=None)
    assert getattr(settings, field) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("SHUTDOWN_GRACE", "0"),
        ("SHUTDOWN_GRACE", "soon"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_bad_operations_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=f"OSMA_ROUTER_{name}"):
        Settings.from_env({f"OSMA_ROUTER_{name}": value}, env_file=None)


# --- several uvicorn workers -----------------------------------------------------------


def test_metrics_add_up_across_uvicorn_workers(tmp_path, redis, redis_server):
    metrics_dir = tmp_path / "metrics"
    server = Server(
        env_for(redis_server.url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)), tmp_path, "--workers", "2"
    )
    total = 240
    try:
        server.wait_up()
        from concurrent.futures import ThreadPoolExecutor

        # A fresh connection for each request, so both processes take their share; and a
        # client of its own per request: one pool shared by 16 threads that closes every
        # connection raced itself into "Bad file descriptor" once in CI.
        def post(number: int) -> int:
            body = make_event(event_id=f"evt_mp_{number}")
            return httpx.post(
                server.url + "/webhooks/osma", content=body, headers=signature_headers(body), timeout=10
            ).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(post, range(total)))
        assert statuses == [202] * total
        per_process = _accepted_per_file(metrics_dir)
        assert sum(per_process.values()) == total
        assert len([count for count in per_process.values() if count]) == 2, per_process
        for _ in range(10):  # whichever process answers, it reports the whole service
            text = httpx.get(server.url + "/metrics", timeout=5).text
            assert f'osma_router_deliveries_total{{outcome="accepted",source="osma"}} {total}.0' in text
            assert f'osma_router_delivery_duration_seconds_count{{source="osma"}} {total}.0' in text
    finally:
        assert server.stop() == 0


def _accepted_per_file(directory: Path) -> dict[str, float]:
    counts = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if (
                    sample.name == "osma_router_deliveries_total"
                    and sample.labels.get("outcome") == "accepted"
                ):
                    counts[path.name] = counts.get(path.name, 0) + sample.value
    return counts


# --- graceful shutdown: receiver ---------------------------------------------------------


def test_receiver_finishes_in_flight_requests_and_stops_accepting_on_sigterm(tmp_path, redis, redis_server):
    server = Server(env_for(redis_server.url), tmp_path)
    server.wait_up()
    body = make_event(event_id="evt_inflight")
    headers = signature_headers(body)
    head = (
        f"POST /webhooks/osma HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"osma-signature: {headers['osma-signature']}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(body) // 2
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        client.sendall(head + body[:half])  # the request is now in flight
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        wait_for(lambda: not _accepts(server.port), timeout=10, what="the listener to close")
        assert server.popen.poll() is None  # still finishing our request
        client.sendall(body[half:])
        answer = _read_response(client)
    finally:
        client.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer
    assert b'"evt_inflight"' in answer
    assert server.wait(30) == 0
    assert redis.exists(dedup_key("osma", "evt_inflight"))


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (it answers with
    `connection: close` while shutting down)."""
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# --- graceful shutdown: worker -----------------------------------------------------------

HOLD_ROUTES = '[[routes]]\non = "task.completed"\nhandler = "ops.hold"\nretries = 0\n'


def _queue(redis, name: str = "osma-router") -> list[str]:
    return [item.decode() for item in redis.lrange(f"rq:queue:{name}", 0, -1)]


def _job_counts(redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(JOB_COUNTS_KEY).items()}


def test_worker_finishes_its_current_job_on_sigterm_and_takes_no_other(
    tmp_path, redis, start_receiver, write_routes
):
    receiver = start_receiver(HOLD_ROUTES)
    redis.set("test:hold", "1")
    assert receiver.post(make_event(event_id="evt_current")).status_code == 202
    assert receiver.post(make_event(event_id="evt_next")).status_code == 202
    worker = Process(
        ["worker"], env_for(receiver.settings.redis_url, receiver.settings.config_path), tmp_path, "worker"
    )
    try:
        wait_for(lambda: redis.llen("test:started"), what="the job to start")
        worker.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert worker.popen.poll() is None  # waiting for its job, not killed
        redis.delete("test:hold")
        assert worker.wait(20) == 0
    finally:
        worker.stop()
    assert handled(redis) == ["evt_current|ops.hold||1"]
    assert len(_queue(redis)) == 1  # the next job stays queued for another worker
    assert FailedJobRegistry("osma-router", connection=redis).count == 0
    assert StartedJobRegistry("osma-router", connection=redis).count == 0


@pytest.mark.parametrize("how", ["second signal", "grace period"])
def test_worker_requeues_a_job_it_cannot_finish(tmp_path, redis, start_receiver, how):
    receiver = start_receiver(HOLD_ROUTES)
    redis.set("test:hold", "1")
    assert receiver.post(make_event(event_id="evt_long")).status_code == 202
    env = env_for(receiver.settings.redis_url, receiver.settings.config_path)
    if how == "grace period":
        env["OSMA_ROUTER_SHUTDOWN_GRACE"] = "1.5"
    worker = Process(["worker"], env, tmp_path, "worker")
    try:
        wait_for(lambda: redis.llen("test:started"), what="the job to start")
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        if how == "second signal":
            time.sleep(1.2)  # RQ ignores a repeat within one second
            worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        stopped_in = time.monotonic() - started
        assert stopped_in < 15, (
            f"stopped {stopped_in:.1f} s after SIGTERM; expected about 1-2 s (grace is 25 s)"
        )
    finally:
        worker.stop()
    queued = _queue(redis)
    assert len(queued) == 1 and "evt_long" in queued[0]
    assert StartedJobRegistry("osma-router", connection=redis).count == 0
    assert FailedJobRegistry("osma-router", connection=redis).count == 0
    assert _job_counts(redis) == {"ops.hold|requeued": 1}
    assert handled(redis) == []
    lines = json_lines(worker.stderr())
    assert any(
        line["msg"] == "job interrupted by shutdown and requeued" and line["event_id"] == "evt_long"
        for line in lines
    )
    # The next worker runs it, and the effect happens once.
    redis.delete("test:hold")
    receiver.drain()
    assert handled(redis) == ["evt_long|ops.hold||2"]
    assert _queue(redis) == []
