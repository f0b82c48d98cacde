"""Faults the other suites do not cover, each bounded and on loopback only:

- the receiver killed with SIGKILL under load: every delivery answered 2xx before the
  kill is in Redis (dedup mark and all its jobs), its effects happen once, and the
  sender's retries of the rest are accepted;
- Redis killed and restarted with AOF on, mid-stream: what was acknowledged survives and
  the receiver reconnects by itself;
- Redis paused (CLIENT PAUSE, a stand-in for a Redis too slow to answer): the receiver
  answers 503 within its Redis timeout and takes deliveries again once Redis does;
- the upstream resetting connections or answering 2xx with a body that is not JSON:
  retried (reconciled, so the effect happens once), dead-lettered when it persists, and
  the worker never crashes.

(Worker SIGKILL mid-run and upstream 5xx/429/400 are in tests/upstream/test_upstream_e2e.py; Redis
stopped outright in tests/web/test_receiver.py.)
"""

from __future__ import annotations

import math
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis import Redis
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from receiver.keys import dedup_key
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import job_id, load_config
from receiver.settings import Settings
from receiver.store.connection import REDIS_TIMEOUT
from receiver.store.failed import FailedJobs
from receiver.store.server import RedisServer, find_redis_server
from receiver.testing.fake_ogsm import FakeOgsm
from receiver.testing.server import LiveServer
from receiver.web.app import create_app
from receiver.web.state import build_state
from tests.ops_support import Server, wait_for
from tests.support import (
    OSMA_ROUTER,
    Receiver,
    env_for,
    handled,
    make_event,
    signature_headers,
    subprocess_env,
)

QUEUE = "osma-router"
TWO_ROUTES = """
[[routes]]
on = "task.completed"
handler = "sample.record"
label = "a"

[[routes]]
on = "task.*"
handler = "sample.record"
label = "b"
"""


def live_receiver(redis_url: str, routes: Path) -> Receiver:
    """A receiver (real uvicorn, in a thread) on a Redis of the test's own."""
    settings = Settings.from_env(env_for(redis_url, routes), env_file=None)
    registry = HandlerRegistry.discover()
    state = build_state(settings, config=load_config(settings.config_path, registry), registry=registry)
    return Receiver(state, LiveServer(create_app(state)).start(), settings)


def stop_receiver(receiver: Receiver) -> None:
    receiver.http.close()
    receiver.server.stop()


def queued(redis: Redis) -> set[str]:
    return {item.decode() for item in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)}


def stored(redis: Redis, receiver: Receiver, event_id: str, queued: set[str]) -> tuple[bool, list[bool]]:
    """Whether the event is marked seen, and for each of its routes whether its job is
    both written and in `queued`."""
    jobs = []
    for route in receiver.state.pipeline.router.routes:
        job = job_id("osma", event_id, route)
        jobs.append(bool(redis.exists(f"rq:job:{job}")) and job in queued)
    return bool(redis.exists(dedup_key("osma", event_id))), jobs


def effects(redis: Redis) -> Counter[str]:
    """Effects of the sample plugin, per event and route label (attempts aside)."""
    return Counter(item.rsplit("|", 1)[0] for item in handled(redis))


def expected_effects(event_ids: Any) -> Counter[str]:
    return Counter(f"{event}|sample.record|{label}" for event in event_ids for label in "ab")


# -- the receiver killed under load ------------------------------------------------------

KILL_EVENTS = 1500
KILL_AFTER = 500  # 2xx answers


@pytest.mark.slow
def test_a_receiver_killed_under_load_keeps_everything_it_acknowledged(
    tmp_path, redis, redis_server, write_routes
) -> None:
    routes = write_routes(TWO_ROUTES)
    env = env_for(redis_server.url, routes)
    server = Server(env, tmp_path, name="serve-killed")
    server.wait_up()
    answers: dict[str, int | str] = {}
    acknowledged = threading.Event()
    lock = threading.Lock()

    def deliver(client: httpx.Client, event_id: str) -> None:
        body = make_event(event_id=event_id)
        try:
            status: int | str = client.post(
                "/webhooks/osma", content=body, headers=signature_headers(body)
            ).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            answers[event_id] = status
            if sum(1 for s in answers.values() if s in (200, 202)) >= KILL_AFTER:
                acknowledged.set()

    ids = [f"evt_sigkill_{n:05d}" for n in range(KILL_EVENTS)]
    clients = [httpx.Client(base_url=server.url, timeout=10) for _ in range(16)]
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(deliver, clients[n % 16], event_id) for n, event_id in enumerate(ids)]
            assert acknowledged.wait(60), "the receiver did not take deliveries"
            server.signal(signal.SIGKILL)
            assert server.wait(10) == -signal.SIGKILL
            for future in futures:
                future.result(timeout=60)
    finally:
        for client in clients:
            client.close()
        server.stop()

    acked = [e for e in ids if answers[e] == 202]
    unanswered = [e for e in ids if answers[e] not in (200, 202)]
    assert KILL_AFTER <= len(acked) < KILL_EVENTS and unanswered  # killed mid-stream
    assert set(answers.values()) <= {
        200,
        202,
        "ConnectError",
        "ReadError",
        "RemoteProtocolError",
        "WriteError",
        "ReadTimeout",
    }, Counter(answers.values())

    receiver = live_receiver(redis_server.url, routes)  # for its routes, and to resend below
    try:
        waiting = queued(redis)
        for event_id in acked:  # acknowledged: marked seen, every job written and queued
            assert stored(redis, receiver, event_id, waiting) == (True, [True, True]), event_id
        in_flight = [e for e in unanswered if stored(redis, receiver, e, waiting)[0]]
        for event_id in unanswered:  # in flight at the kill: all of it stored, or none
            seen, jobs = stored(redis, receiver, event_id, waiting)
            assert jobs == [seen, seen], event_id

        receiver.drain()
        assert effects(redis) == expected_effects(acked + in_flight)

        # The sender retries what got no answer: accepted now, or a duplicate if it was stored.
        for event_id in unanswered:
            status = receiver.post(make_event(event_id=event_id)).status_code
            assert status == (200 if event_id in in_flight else 202), event_id
        receiver.drain()
    finally:
        stop_receiver(receiver)
    assert effects(redis) == expected_effects(ids)
    print(
        f"\nSIGKILL after {len(acked)} acknowledged deliveries; {len(in_flight)} of the "
        f"{len(unanswered)} unanswered had been stored whole, none in part; "
        f"{len(ids) * 2} effects, each once"
    )


# -- Redis killed and restarted with AOF --------------------------------------------------

AOF_EVENTS = 400
AOF_KILL_AFTER = 150


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, appending every write to its AOF (fsync always)."""
    with RedisServer(binary=find_redis_server(prefer_embedded=False), appendonly=True) as server:
        yield server


def test_acknowledged_events_survive_a_redis_crash_with_aof(aof_redis: RedisServer, write_routes) -> None:
    routes = write_routes(TWO_ROUTES)
    receiver = live_receiver(aof_redis.url, routes)
    answers: dict[str, int] = {}
    enough = threading.Event()
    lock = threading.Lock()

    def deliver(event_id: str) -> None:
        status = receiver.post(make_event(event_id=event_id)).status_code
        with lock:
            answers[event_id] = status
            if sum(1 for s in answers.values() if s == 202) >= AOF_KILL_AFTER:
                enough.set()

    ids = [f"evt_aof_{n:04d}" for n in range(AOF_EVENTS)]
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(deliver, event_id) for event_id in ids]
            assert enough.wait(30)
            aof_redis.kill()  # SIGKILL: no shutdown save; only the AOF is left
            for future in futures:
                future.result(timeout=60)
        aof_redis.start()  # same port, same directory: it loads the AOF

        acked = [e for e in ids if answers[e] == 202]
        refused = [e for e in ids if answers[e] != 202]
        assert set(answers.values()) <= {202, 503} and acked and refused, Counter(answers.values())
        redis = Redis.from_url(aof_redis.url)
        waiting = queued(redis)
        for event_id in acked:
            assert stored(redis, receiver, event_id, waiting) == (True, [True, True]), event_id

        # The same receiver, not restarted: acknowledged ids are duplicates, the rest new
        # (or duplicates, when a 503 was answered for a write Redis had made).
        for event_id in ids:
            status = receiver.post(make_event(event_id=event_id)).status_code
            assert status == 200 if event_id in acked else status in (200, 202), (event_id, status)
        receiver.drain()
        assert effects(redis) == expected_effects(ids)
        redis.close()
    finally:
        stop_receiver(receiver)


# -- Redis too slow to answer --------------------------------------------------------------


def test_a_paused_redis_gets_503_within_the_redis_timeout_and_recovery_needs_no_restart(
    start_receiver, redis
) -> None:
    receiver = start_receiver(TWO_ROUTES)
    assert receiver.post(make_event(event_id="evt_before_pause")).status_code == 202
    pause = 6.0
    redis.execute_command("CLIENT", "PAUSE", str(int(pause * 1000)), "ALL")
    paused_at = time.monotonic()

    def deliver(n: int) -> tuple[str, int, float]:
        time.sleep(n * 0.05)  # arriving one after another while Redis is paused
        body = make_event(event_id=f"evt_paused_{n}")
        started = time.monotonic()
        with httpx.Client(base_url=receiver.url, timeout=30) as client:
            response = client.post("/webhooks/osma", content=body, headers=signature_headers(body))
        return f"evt_paused_{n}", response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(deliver, range(20)))
    assert time.monotonic() - paused_at < pause  # all answered while Redis was still paused
    assert [status for _, status, _ in results] == [503] * 20
    slowest = max(seconds for _, _, seconds in results)
    assert slowest < REDIS_TIMEOUT + 1.0, (
        f"slowest 503 took {slowest:.2f} s; expected the store deadline ({REDIS_TIMEOUT} s) plus under 1 s: "
        f"{sorted(round(seconds, 2) for _, _, seconds in results)}"
    )
    health = receiver.http.get("/healthz", timeout=1)
    assert health.status_code == 200  # the process is up, only its store is not

    wait_for(lambda: time.monotonic() - paused_at > pause and redis.ping(), timeout=pause + 5)
    assert wait_for(lambda: receiver.http.get("/readyz").status_code == 200, timeout=10)
    assert receiver.post(make_event(event_id="evt_after_pause")).status_code == 202
    for event_id, _, _ in results:  # the sender retries each 503: stored now, or already
        assert receiver.post(make_event(event_id=event_id)).status_code in (200, 202)
    receiver.drain()
    ids = ["evt_before_pause", "evt_after_pause", *(event_id for event_id, _, _ in results)]
    assert effects(redis) == expected_effects(ids)
    print(f"\nRedis paused: 20 deliveries answered 503 in at most {slowest:.2f} s")


# -- the upstream resetting connections and answering garbage -----------------------------


def reset(conn: socket.socket) -> None:
    """Close with an RST, as a crashed peer or a middlebox does, instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class FaultyProxy:
    """A loopback HTTP/1.1 proxy in front of a fake upstream that breaks chosen requests:

    - `reset`: the connection is reset before the request reaches the upstream;
    - `reset_after`: the upstream carries the request out, then the connection is reset
      instead of its answer being relayed;
    - `garbage`: the upstream carries it out; the answer keeps its status (a 2xx) but
      its body is cut short, so it is not JSON.
    """

    def __init__(self, target: str) -> None:
        self.target = httpx.Client(base_url=target, timeout=10)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.broken: list[tuple[str, str, str]] = []  # (kind, method, path) of each fault applied
        threading.Thread(target=self._accept, daemon=True).start()

    def fail(self, kind: str, *, method: str | None = "POST", times: float = 1) -> None:
        with self.lock:
            self.faults.append({"kind": kind, "method": method, "times": times})

    def heal(self) -> None:
        with self.lock:
            self.faults.clear()

    def close(self) -> None:
        self.listener.close()
        self.target.close()

    def _take(self, method: str, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fault["method"] in (None, method):
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self.faults.remove(fault)
                    self.broken.append((fault["kind"], method, path))
                    return str(fault["kind"])
        return None

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                if not chunk:
                    conn.close()
                    return
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
            while len(buffer) < length:
                buffer += conn.recv(65536)
            body, buffer = buffer[:length], buffer[length:]
            kind = self._take(method, path)
            if kind == "reset":
                return reset(conn)
            forwarded = {
                k: v
                for k, v in headers.items()
                if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
            }
            answer = self.target.request(method, path, headers=forwarded, content=body)
            if kind == "reset_after":
                return reset(conn)
            content = answer.content[: len(answer.content) // 2] if kind == "garbage" else answer.content
            head_out = [
                f"HTTP/1.1 {answer.status_code} {answer.reason_phrase}",
                f"Content-Type: {answer.headers.get('content-type', 'application/json')}",
                f"Content-Length: {len(content)}",
            ]
            head_out += [
                f"{name}: {answer.headers[name]}"
                for name in ("x-request-id", "retry-after")
                if name in answer.headers
            ]
            conn.sendall(("\r\n".join(head_out) + "\r\n\r\n").encode() + content)


REPORT_ROUTES = """
[[routes]]
on = "task.completed"
handler = "ogsm.indicator_report"
indicator_id = 456
value = "field:data.score"
period = "event"
backoff = [0]
retries = 2
"""


@pytest.fixture
def through_proxy(redis, redis_server, fake_ogsm: FakeOgsm, tmp_path) -> Iterator[dict[str, Any]]:
    """A receiver and a worker environment whose OGSM is the fake behind a `FaultyProxy`."""
    fake_ogsm.add_indicator(id=456)
    proxy = FaultyProxy(fake_ogsm.url)
    routes = tmp_path / "osma-router.toml"
    routes.write_text(REPORT_ROUTES)
    env = env_for(
        redis_server.url,
        routes,
        OSMA_ROUTER_OGSM_BASE_URL=proxy.url + "/api/v2",
        OSMA_ROUTER_OGSM_USERNAME=fake_ogsm.username,
        OSMA_ROUTER_OGSM_PASSWORD=fake_ogsm.password,
        OSMA_ROUTER_LOCK_TTL="1",  # the proxy answers at once: a short bound keeps retries quick
    )
    receiver = live_receiver(redis_server.url, routes)
    yield {"proxy": proxy, "env": env, "receiver": receiver, "cwd": tmp_path}
    stop_receiver(receiver)
    proxy.close()


def completion(event_id: str, score: int) -> bytes:
    return orjson.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "task.completed",
            "created_at": "2026-11-20T10:00:00+00:00",
            "data": {"object": {"id": f"tsk_{event_id}", "object": "task", "data": {"score": score}}},
        }
    )


def worker_burst(setup: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`osma-router worker --burst` as a subprocess: it must exit 0 without a traceback."""
    result = subprocess.run(
        [*OSMA_ROUTER, "worker", "--burst"],
        env=subprocess_env(setup["env"]),
        cwd=setup["cwd"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("kind", ["reset", "reset_after", "garbage"])
def test_a_reset_or_garbled_answer_is_retried_and_the_effect_happens_once(
    through_proxy, fake_ogsm, redis, kind
) -> None:
    proxy: FaultyProxy = through_proxy["proxy"]
    proxy.fail(kind, method="POST")
    assert through_proxy["receiver"].post(completion("evt_fault", 7)).status_code == 202
    worker_burst(through_proxy)

    assert proxy.broken == [(kind, "POST", "/api/v2/indicator_reports.json")]
    posts = fake_ogsm.requests_to("POST")
    # The answer was lost, so the retry first reads OGSM back (one GET): after `reset` it
    # finds nothing and posts; otherwise OGSM had made the report and it is not posted again.
    assert len(posts) == 1 and posts[0].status == 201
    assert len(fake_ogsm.requests_to("GET")) == 1
    assert [(r["at"], r["current_value"]) for r in fake_ogsm.indicator_reports(456)] == [("2026-11-20", 7)]
    assert FailedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer).count == 0


@pytest.mark.parametrize("kind", ["reset", "garbage"])
def test_an_upstream_that_keeps_failing_is_dead_lettered_then_retried_once_healed(
    through_proxy, fake_ogsm, redis, kind
) -> None:
    proxy: FaultyProxy = through_proxy["proxy"]
    proxy.fail(kind, method=None, times=math.inf)  # every request, reads included
    assert through_proxy["receiver"].post(completion("evt_persistent", 9)).status_code == 202
    worker_burst(through_proxy)  # three attempts (retries = 2), then the failed registry

    (row,) = FailedJobs(redis, [QUEUE])
    assert row.event_id == "evt_persistent" and row.attempts == 3
    reason = "not JSON" if kind == "garbage" else "failed: "
    assert row.last_error.startswith("Unavailable: ogsm ") and reason in row.last_error, row.last_error
    # garbage: OGSM made the report on the first attempt; the retries only tried to read it back.
    assert len(fake_ogsm.requests_to("POST")) == (1 if kind == "garbage" else 0)

    proxy.heal()
    FailedJobs(redis, [QUEUE]).retry_all()
    worker_burst(through_proxy)
    assert [r["current_value"] for r in fake_ogsm.indicator_reports(456)] == [9]
    assert len(fake_ogsm.requests_to("POST")) == 1
    assert list(FailedJobs(redis, [QUEUE])) == []
