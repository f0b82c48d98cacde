"""A worker needs no Osmos connector token: only the receiver checks them, and the
deploy files give the tokens to the receiver alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from redis import Redis

from receiver.store.server import RedisServer
from tests.support import OSMA_ROUTER, SECRET

ROUTES = """
[[routes]]
on = "osmos.crm.record"
handler = "noop"

[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN_NOT_GIVEN_TO_WORKERS"
event_type = "osmos.crm.record"
fields = [{ name = "id", type = "string" }]
"""


def test_a_worker_starts_without_the_osmos_tokens(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "osma-router.toml").write_text(ROUTES)
    env = {
        "PATH": "/usr/bin:/bin",
        "OSMA_ROUTER_REDIS_URL": redis_server.url,
        "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
        "OSMA_ROUTER_CONFIG": str(tmp_path / "osma-router.toml"),
    }
    worker = subprocess.run(
        [*OSMA_ROUTER, "worker", "--burst"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert worker.returncode == 0, worker.stderr
    # The receiver still refuses to start without it, naming the variable.
    check = subprocess.run(
        [*OSMA_ROUTER, "check-config"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1 and "CRM_OSMOS_TOKEN_NOT_GIVEN_TO_WORKERS" in check.stderr


def test_replay_direct_needs_no_osmos_token(redis: Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    """`replay --direct` queues like the receiver but checks no Osmos request: like the
    worker and the other operator commands, it runs where the tokens are not given."""
    (tmp_path / "osma-router.toml").write_text(ROUTES)
    body = '{"id": "evt_tokenless", "type": "osmos.crm.record", "data": {"object": {"id": "c1"}}}'
    line = '{"received_at": "2026-12-01T00:00:00Z", "source": "osma", "headers": {}, "body": %s}\n'
    (tmp_path / "events.jsonl").write_text(line % json.dumps(body))
    env = {
        "PATH": "/usr/bin:/bin",
        "OSMA_ROUTER_REDIS_URL": redis_server.url,
        "OSMA_ROUTER_CONFIG": str(tmp_path / "osma-router.toml"),
    }
    replay = subprocess.run(
        [*OSMA_ROUTER, "replay", str(tmp_path / "events.jsonl"), "--direct"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "accepted 1" in replay.stdout
