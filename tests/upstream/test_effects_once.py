"""Effects once under real conditions, through real processes (`osma-router serve` and
`osma-router worker` subprocesses, the fakes over real HTTP): a worker frozen while OGSM
holds its POST, a slow OGSM while a second event for the same task arrives, and Osma's
cached error answers (docs/contract.md, "Effects under real conditions")."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from receiver.store.failed import FailedJobs
from tests.upstream.test_upstream_e2e import (
    COUNT_MONTH,
    QUEUE,
    Service,
    completion,
    log_of,
    spawn,
    stop,
    upstream_env,
)

REPORTS = "*/indicator_reports.json"


def settle(redis, workers, *, seconds: float = 60) -> None:
    """Wait until no job is queued or running (the workers keep going)."""
    started = StartedJobRegistry(QUEUE, connection=redis, serializer=JSONSerializer)
    deadline = time.monotonic() + seconds
    while redis.llen(f"rq:queue:{QUEUE}") or started.count:
        for worker in workers:
            assert worker.poll() is None, log_of(worker)
        assert time.monotonic() < deadline, "jobs still queued or running: " + " | ".join(
            log_of(w)[-800:] for w in workers
        )
        time.sleep(0.2)


def test_a_frozen_worker_and_its_replacement_post_one_measurement(
    redis, redis_server, fake_osma, fake_ogsm, tmp_path
):
    """Worker A sends the POST; OGSM holds it; A is frozen (SIGSTOP). Worker B takes the
    job over once A's heartbeat lapses. OGSM stores A's call 6.5 s after it arrived, within
    the bound (the lock TTL, 8 s here): B must not have posted beside it, and finds it."""
    routes = tmp_path / "osma-router.toml"
    routes.write_text(COUNT_MONTH)
    fake_ogsm.add_indicator(id=456)
    held = fake_ogsm.hold(method="POST", path=REPORTS)
    env = upstream_env(
        redis_server.url,
        routes,
        fake_osma,
        fake_ogsm,
        OSMA_ROUTER_HEARTBEAT_TTL="3",
        OSMA_ROUTER_LOCK_TTL="8",
    )
    service = Service(env, tmp_path)
    first = second = None
    try:
        service.send(completion("tsk_frozen", "2026-11-20T10:00:00+00:00"))
        first = spawn(["worker"], env, tmp_path)
        held.wait_until_arrived()
        arrived = time.monotonic()
        os.kill(first.pid, signal.SIGSTOP)
        second = spawn(["worker"], env, tmp_path)
        # B takes the job over about 3-5 s after the freeze; give it time to (wrongly) post.
        time.sleep(max(0.0, arrived + 6.5 - time.monotonic()))
        held.release()  # OGSM finishes A's call, within the bound
        settle(redis, [second], seconds=60)
        os.kill(first.pid, signal.SIGCONT)  # A wakes up with its 201: it must record nothing
        time.sleep(2)
        settle(redis, [first, second], seconds=60)
    finally:
        for worker in (first, second):
            if worker is not None:
                os.kill(worker.pid, signal.SIGCONT)
                stop(worker)
        service.close()
    reports = fake_ogsm.indicator_reports(456)
    assert [(r["at"], r["current_value"]) for r in reports] == [("2026-11-01", 1)], (
        f"{len(reports)} measurement(s) for one completed task: {reports}"
    )
    assert len(fake_ogsm.requests_to("POST", REPORTS)) == 1
    assert list(FailedJobs(redis, [QUEUE])) == []


ACTION_ROUTES = """
[[routes]]
handler = "ogsm.action"
strategy_ids = [7]
write_back = false
"""


def test_a_slow_ogsm_action_keeps_its_task_lock_while_a_second_event_waits(
    redis, redis_server, fake_osma, fake_ogsm, tmp_path
):
    """OGSM holds the create of an action for over 3 s, three times the lock TTL (1 s).
    The task's lock is renewed while the first job is alive, so the second event for the
    task waits and then updates the one action instead of creating another."""
    routes = tmp_path / "osma-router.toml"
    routes.write_text(ACTION_ROUTES)
    fake_ogsm.add_strategy(id=7)
    held = fake_ogsm.hold(method="POST", path="*/actions.json")
    env = upstream_env(redis_server.url, routes, fake_osma, fake_ogsm, OSMA_ROUTER_LOCK_TTL="1")
    service = Service(env, tmp_path)
    workers = []
    try:
        task = {"id": "tsk_slow", "object": "task", "template": "follow_up", "description": "Call back"}
        now = datetime.now(UTC)
        service.send(
            {
                "id": "evt_slow_created",
                "object": "event",
                "type": "task.created",
                "created_at": now.isoformat(),
                "data": {"object": {**task, "status": "ready", "updated_at": now.isoformat()}},
            }
        )
        workers.append(spawn(["worker"], env, tmp_path))
        held.wait_until_arrived()
        later = datetime.now(UTC)
        service.send(
            {
                "id": "evt_slow_updated",
                "object": "event",
                "type": "task.updated",
                "created_at": later.isoformat(),
                "data": {"object": {**task, "status": "in_progress", "updated_at": later.isoformat()}},
            }
        )
        workers.append(spawn(["worker"], env, tmp_path))
        time.sleep(3.5)  # the second job is waiting on the task's lock, past its TTL
        held.release()
        time.sleep(1)
        settle(redis, workers, seconds=60)
    finally:
        for worker in workers:
            stop(worker)
        service.close()
    actions = fake_ogsm.actions()
    assert len(actions) == 1, f"{len(actions)} OGSM actions for one task: {actions}"
    assert actions[0]["progress"] == 50  # the second event updated the one action
    assert list(FailedJobs(redis, [QUEUE])) == []
