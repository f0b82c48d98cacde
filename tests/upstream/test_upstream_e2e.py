"""End to end through real processes: signed events POSTed to `osma-router serve`, jobs
run by `osma-router worker` subprocesses, effects landing in the fake OGSM and Osma
(real HTTP on loopback). Faults: 503s, 429s, a permanent 400 and its retry from the
failed registry, a worker killed with SIGKILL mid-stream, and four workers sharing
Osma's rate budget."""

from __future__ import annotations

import base64
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from receiver.store.failed import FailedJobs
from receiver.store.server import free_port
from receiver.testing.fake_osma import TEST_KEY
from tests.support import OSMA_ROUTER, env_for, osma_router, signature_headers, subprocess_env

QUEUE = "osma-router"

COUNT_MONTH = """
[[routes]]
on = "task.completed"
where = { template = "update_blood_pressure" }
handler = "ogsm.indicator_report"
indicator_id = 456
value = "count"
period = "month"
backoff = [0]
"""


def upstream_env(redis_url: str, routes: Path, fake_osma, fake_ogsm, **extra: str) -> dict[str, str]:
    # The fakes answer at once: a 1 s bound (OSMA_ROUTER_LOCK_TTL) keeps the wait after a
    # lost answer short; a test may set its own.
    extra = {"OSMA_ROUTER_LOCK_TTL": "1", **extra}
    return env_for(
        redis_url,
        routes,
        OSMA_ROUTER_OSMA_API_KEY=TEST_KEY,
        OSMA_ROUTER_OSMA_BASE_URL=fake_osma.url,
        OSMA_ROUTER_OGSM_BASE_URL=fake_ogsm.base_url,
        OSMA_ROUTER_OGSM_USERNAME=fake_ogsm.username,
        OSMA_ROUTER_OGSM_PASSWORD=fake_ogsm.password,
        **extra,
    )


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start an `osma-router` command; its log goes to a file in `cwd` (a pipe nobody
    reads would fill up and block the process)."""
    path = cwd / f"{args[0]}-{time.monotonic_ns()}.log"
    with path.open("w") as log:
        process = subprocess.Popen(
            [*OSMA_ROUTER, *args],
            env=subprocess_env(env),
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    process.log_path = path  # type: ignore[attr-defined]
    return process


def log_of(process: subprocess.Popen[str]) -> str:
    return str(process.log_path.read_text()[-3000:])  # type: ignore[attr-defined]


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Service:
    """`osma-router serve` as a subprocess, and the client side of sending it events."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = spawn(["serve", "--port", str(port)], env, cwd)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {log_of(self.process)}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not come up")
            time.sleep(0.1)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def send(self, event: dict) -> httpx.Response:
        body = orjson.dumps(event)
        response = self.http.post("/webhooks/osma", content=body, headers=signature_headers(body))
        assert response.status_code == 202, response.text
        return response

    def burst(self) -> subprocess.CompletedProcess[str]:
        result = osma_router(["worker", "--burst"], self.env, self.cwd)
        assert result.returncode == 0, result.stderr
        return result

    def close(self) -> None:
        self.http.close()
        stop(self.process)


def completion(task_id: str, created_at: str, *, event_id: str | None = None, **fields) -> dict:
    return {
        "id": event_id or f"evt_{task_id}_{created_at[:10]}",
        "object": "event",
        "type": "task.completed",
        "created_at": created_at,
        "live_mode": False,
        "data": {
            "object": {
                "id": task_id,
                "object": "task",
                "template": "update_blood_pressure",
                "status": "completed",
                **fields,
            }
        },
    }


@pytest.fixture
def service(request, redis, redis_server, fake_osma, fake_ogsm, tmp_path):
    routes = tmp_path / "osma-router.toml"
    routes.write_text(getattr(request, "param", COUNT_MONTH))
    fake_ogsm.add_indicator(id=456, title="Blood pressure updates")
    running = Service(upstream_env(redis_server.url, routes, fake_osma, fake_ogsm), tmp_path)
    yield running
    running.close()


def test_a_signed_completion_becomes_exactly_the_expected_indicator_report(service, fake_ogsm):
    service.send(completion("task_a", "2026-11-20T10:00:00+00:00"))
    service.burst()
    (post,) = fake_ogsm.requests_to("POST")
    assert post.path == "/api/v2/indicator_reports.json"
    assert post.headers["content-type"] == "application/json"
    credentials = base64.b64encode(f"{fake_ogsm.username}:{fake_ogsm.password}".encode()).decode()
    assert post.headers["authorization"] == f"Basic {credentials}"
    assert post.json == {
        "indicator_report": {"indicator": {"id": 456}, "at": "2026-11-01", "current_value": 1}
    }
    assert post.status == 201

    service.send(completion("task_b", "2026-11-05T08:00:00+00:00"))
    service.send(completion("task_c", "2026-11-29T18:00:00+00:00"))
    service.burst()
    reports = fake_ogsm.indicator_reports(456)
    assert [(r["at"], r["current_value"]) for r in reports] == [
        ("2026-11-01", 1),
        ("2026-11-01", 2),
        ("2026-11-01", 3),
    ]
    assert len(fake_ogsm.requests_to("POST")) == 3


def test_503_twice_then_success_is_one_effect(service, fake_ogsm):
    fake_ogsm.fail(503, times=2, method="POST")
    service.send(completion("task_a", "2026-11-20T10:00:00+00:00"))
    service.burst()
    assert [r.status for r in fake_ogsm.requests_to("POST")] == [503, 503, 201]
    assert [r["current_value"] for r in fake_ogsm.indicator_reports()] == [1]


def test_a_short_429_is_waited_out_and_is_one_effect(service, fake_ogsm):
    fake_ogsm.fail(429, retry_after=1, method="POST")
    service.send(completion("task_a", "2026-11-20T10:00:00+00:00"))
    service.burst()
    limited, accepted = fake_ogsm.requests_to("POST")
    assert (limited.status, accepted.status) == (429, 201)
    assert accepted.at - limited.at >= 1.0
    assert len(fake_ogsm.indicator_reports()) == 1


def test_a_long_429_retries_the_job_not_before_retry_after(service, fake_ogsm, redis):
    fake_ogsm.fail(429, retry_after=6, method="POST")
    service.send(completion("task_a", "2026-11-20T10:00:00+00:00"))
    service.burst()  # the job is scheduled again, at least 6 s later
    scheduled = ScheduledJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    (job_id,) = scheduled.get_job_ids()
    wait = (scheduled.get_scheduled_time(job_id) - datetime.now(UTC)).total_seconds()
    assert 3 < wait <= 6.5
    service.burst()
    assert fake_ogsm.indicator_reports() == []  # not before its Retry-After
    time.sleep(max(0.0, wait) + 0.5)
    service.burst()
    limited, accepted = fake_ogsm.requests_to("POST")
    assert accepted.at - limited.at >= 6.0
    assert len(fake_ogsm.indicator_reports()) == 1


def test_a_permanent_400_is_dead_lettered_and_retried_once_fixed(service, fake_ogsm, redis):
    fake_ogsm.fail(400, times=float("inf"), method="POST", body={"errors": {"indicator": ["archived"]}})
    service.send(completion("task_a", "2026-11-20T10:00:00+00:00", event_id="evt_dead"))
    service.burst()
    assert len(fake_ogsm.requests_to("POST")) == 1  # a 4xx is not retried
    listed = osma_router(["failed", "list"], service.env, service.cwd)
    (row,) = [line for line in listed.stdout.splitlines() if "evt_dead" in line]
    assert "ogsm.indicator_report" in row and "Rejected: ogsm POST /indicator_reports: 400" in row

    fake_ogsm.heal()
    assert osma_router(["failed", "retry", "--all"], service.env, service.cwd).returncode == 0
    service.burst()
    assert [r["current_value"] for r in fake_ogsm.indicator_reports()] == [1]
    assert list(FailedJobs(redis, [QUEUE])) == []
    service.burst()
    assert len(fake_ogsm.indicator_reports()) == 1


KILL_ROUTES = """
[[routes]]
on = "task.created"
handler = "ogsm.indicator_report"
indicator_id = 456
value = "field:data.score"
period = "event"
backoff = [1]

[[routes]]
on = "task.created"
handler = "ogsm.action"
strategy_ids = [7]
labels = ["osma"]
backoff = [1]
"""


@pytest.mark.slow
def test_a_worker_killed_mid_stream_loses_nothing_and_duplicates_nothing(
    redis, redis_server, fake_osma, fake_ogsm, tmp_path
):
    count = 200
    routes = tmp_path / "osma-router.toml"
    routes.write_text(KILL_ROUTES)
    fake_ogsm.add_indicator(id=456)
    fake_ogsm.add_strategy(id=7)
    # Answers come 20 ms after OGSM has done the work: a kill then often lands in between.
    fake_ogsm.slow(0.02, after=True, times=float("inf"))
    env = upstream_env(
        redis_server.url,
        routes,
        fake_osma,
        fake_ogsm,
        OSMA_ROUTER_HEARTBEAT_TTL="3",
        OSMA_ROUTER_LOCK_TTL="3",
    )
    service = Service(env, tmp_path)
    expected_reports, expected_titles = set(), set()
    start = datetime(2026, 1, 1, 9, tzinfo=UTC)
    worker = None
    try:
        for i in range(count):
            moment = (start + timedelta(days=i)).isoformat()
            task = fake_osma.add_task(template="follow_up", description=f"Follow-up call {i:03d}")
            service.send(
                {
                    "id": f"evt_kill_{i:03d}",
                    "object": "event",
                    "type": "task.created",
                    "created_at": moment,
                    "data": {"object": {**task, "updated_at": moment, "data": {"score": i}}},
                }
            )
            expected_reports.add((moment[:10], i))
            expected_titles.add(f"Follow-up call {i:03d}")

        worker = spawn(["worker"], env, tmp_path)
        deadline = time.monotonic() + 60
        while len(fake_ogsm.requests_to("POST")) < 120:
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        done_at_kill = len(fake_ogsm.requests_to("POST"))
        assert done_at_kill < 2 * count  # killed mid-stream, not after the end

        worker = spawn(["worker"], env, tmp_path)
        deadline = time.monotonic() + 90
        started = StartedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
        while True:
            settled = (
                redis.llen(f"rq:queue:{QUEUE}") == 0
                and started.count == 0
                and len(fake_ogsm.indicator_reports()) >= count
                and len(fake_ogsm.actions()) >= count
                and sum(1 for t in fake_osma.tasks() if t["metadata"]) >= count
            )
            if settled:
                break
            assert time.monotonic() < deadline, f"the restarted worker did not finish: {log_of(worker)}"
            assert worker.poll() is None
            time.sleep(0.2)
        time.sleep(2)  # anything still on its way would land now
    finally:
        if worker is not None:
            stop(worker)
        service.close()

    reports = fake_ogsm.indicator_reports(456)
    assert sorted((r["at"], r["current_value"]) for r in reports) == sorted(expected_reports)
    actions = fake_ogsm.actions()
    assert sorted(a["title"] for a in actions) == sorted(expected_titles)
    by_title = {a["title"]: str(a["id"]) for a in actions}
    for task in fake_osma.tasks():
        assert task["metadata"] == {"ogsm_action_id": by_title[task["description"]]}
    failed = list(FailedJobs(redis, [QUEUE]))
    assert failed == [], [(row.job_id, row.attempts, row.last_error) for row in failed]


RATE_ROUTES = """
[[routes]]
on = "task.updated"
handler = "osma.task_metadata"
metadata = { synced_by = "osma-router" }
"""


def test_four_workers_share_the_test_mode_rate_limit(
    redis, redis_server, fake_osma, fake_ogsm, tmp_path, start_receiver
):
    count = 100
    routes = tmp_path / "rate.toml"
    routes.write_text(RATE_ROUTES)
    env = upstream_env(redis_server.url, routes, fake_osma, fake_ogsm)
    receiver = start_receiver(RATE_ROUTES)
    for i in range(count):
        task = fake_osma.add_task(template="t", description=f"task {i}")
        body = orjson.dumps({"id": f"evt_rate_{i}", "type": "task.updated", "data": {"object": task}})
        assert receiver.post(body).status_code == 202

    started = time.monotonic()
    workers = [spawn(["worker", "--burst"], env, tmp_path) for _ in range(4)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, log_of(worker)
    elapsed = time.monotonic() - started

    posts = fake_osma.requests_to("POST", "/tasks/*")
    assert len(posts) == count and all(p.status == 200 for p in posts)
    assert fake_osma.rate_limited == 0
    assert fake_osma.max_per_second("POST /tasks/:id") <= 20
    assert all(t["metadata"] == {"synced_by": "osma-router"} for t in fake_osma.tasks())
    assert elapsed >= count / 20  # the budget, not the workers, set the pace
