"""`osma-router status` and `osma-router healthcheck`, run as a user runs them."""

from __future__ import annotations

import json
import socket

from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from receiver.store.server import free_port
from tests.support import env_for, make_event, osma_router

ROUTES = (
    '[[routes]]\non = "task.completed"\nhandler = "sample.record"\n\n'
    '[[routes]]\non = "task.completed"\nhandler = "sample.rejects"\nqueue = "slow-lane"\n'
)


def test_status_shows_queues_failed_jobs_workers_dedup_and_capture(tmp_path, redis, start_receiver):
    receiver = start_receiver(ROUTES)
    for number in range(2):
        assert receiver.post(make_event(event_id=f"evt_s{number}")).status_code == 202
    receiver.drain()  # sample.rejects fails at once: two jobs in slow-lane's failed registry
    assert receiver.post(make_event(event_id="evt_s_waiting")).status_code == 202
    worker = SimpleWorker(["osma-router"], connection=redis, serializer=JSONSerializer, name="w-status-1")
    worker.register_birth()
    try:
        env = env_for(receiver.settings.redis_url, receiver.settings.config_path)
        result = osma_router(["status"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        table = {
            line.split()[0]: line.split()[1:]
            for line in lines
            if line.startswith(("osma-router", "slow-lane"))
        }
        assert table["osma-router"] == [
            "1",
            "0",
            "0",
            "0",
            "0",
        ]  # queued, running, scheduled, failed, deferred
        assert table["slow-lane"] == ["1", "0", "0", "2", "0"]
        assert "workers  1 alive" in result.stdout and "w-status-1" in result.stdout
        assert "3 event id(s) remembered (osma 3)" in result.stdout
        assert "capture  off, 0 delivery(ies) kept" in result.stdout

        as_json = json.loads(osma_router(["status", "--json"], env, tmp_path).stdout)
        assert as_json["dedup"] == {
            "by_source": {"osma": 3},
            "complete": True,
            "scanned_in": as_json["dedup"]["scanned_in"],
        }
        slow = next(q for q in as_json["queues"] if q["name"] == "slow-lane")
        assert slow["queued"] == 1 and slow["registries"]["failed"] == 2
        assert [w["name"] for w in as_json["workers"]] == ["w-status-1"]
    finally:
        worker.register_death()


def test_status_counts_dedup_keys_in_bounded_steps(tmp_path, redis, redis_server):
    with redis.pipeline(transaction=False) as pipe:
        for number in range(20_000):
            pipe.set(f"osma_router:seen:osma:evt_many_{number}", "1")
        pipe.execute()
    complete = osma_router(["status", "--json"], env_for(redis_server.url), tmp_path)
    assert json.loads(complete.stdout)["dedup"]["by_source"] == {"osma": 20_000}
    partial = osma_router(["status", "--scan-budget", "0.000001"], env_for(redis_server.url), tmp_path)
    assert partial.returncode == 0
    line = next(line for line in partial.stdout.splitlines() if line.startswith("dedup"))
    assert "at least (scan stopped after" in line
    counted = int(line.split("after")[1].split(")")[1].split()[0].replace(",", ""))
    assert 0 < counted < 20_000


def test_status_without_redis_is_one_line(tmp_path):
    result = osma_router(["status"], env_for(f"redis://127.0.0.1:{free_port()}/0"), tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("osma-router: error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_healthcheck_probes_the_receiver(tmp_path, start_receiver):
    receiver = start_receiver()
    ok = osma_router(["healthcheck", "--url", receiver.url + "/healthz"], {}, tmp_path)
    assert ok.returncode == 0, ok.stderr
    ready = osma_router(["healthcheck", "--url", receiver.url + "/readyz"], {}, tmp_path)
    assert ready.returncode == 0
    down = osma_router(
        ["healthcheck", "--url", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1"], {}, tmp_path
    )
    assert down.returncode == 1 and down.stderr.startswith("osma-router: error: unhealthy:")


def test_healthcheck_of_a_worker_looks_for_this_hosts_worker(tmp_path, redis, redis_server):
    env = env_for(redis_server.url)
    assert osma_router(["healthcheck", "--worker"], env, tmp_path).returncode == 1
    worker = SimpleWorker(["osma-router"], connection=redis, serializer=JSONSerializer)
    worker.register_birth()
    try:
        assert osma_router(["healthcheck", "--worker"], env, tmp_path).returncode == 0
        assert worker.hostname == socket.gethostname()
        other = osma_router(["healthcheck", "--worker", "--host", "another-pod"], env, tmp_path)
        assert other.returncode == 1 and "another-pod" in other.stderr
    finally:
        worker.register_death()
