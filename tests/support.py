"""Helpers the tests share: event bodies, signatures, live servers, environments."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis import Redis

from receiver.model.signature import sign
from receiver.settings import Settings
from receiver.testing.server import LiveServer
from receiver.web.state import ReceiverState
from receiver.worker.execution import WorkerRuntime
from receiver.worker.runner import run_worker

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PATH = Path(__file__).resolve().parent / "plugin_path"
if str(PLUGIN_PATH) not in sys.path:
    sys.path.insert(0, str(PLUGIN_PATH))

SECRET = "whsec_test_secret"
OSMA_ROUTER = [sys.executable, "-m", "receiver.cli"]  # the `osma-router` command, from this checkout
_ids = itertools.count(1)


def examples(count: int) -> int:
    """How many examples a property test runs: `count`, or ten times it under the
    `explore` Hypothesis profile (HYPOTHESIS_PROFILE=explore)."""
    return count * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else count


def make_event(
    event_type: str = "task.completed",
    *,
    event_id: str | None = None,
    obj: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    """A realistic Osma event envelope, as bytes."""
    payload = {
        "id": event_id or f"evt_test_{next(_ids)}_{os.getpid()}",
        "object": "event",
        "type": event_type,
        "created_at": "2026-11-20T10:00:00+00:00",
        "live_mode": False,
        "data": {"object": obj if obj is not None else {"id": "tsk_1", "object": "task", "template": "bp"}},
        **extra,
    }
    return orjson.dumps(payload)


def signature_headers(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "osma-signature": sign(body, secret, int(time.time()) if timestamp is None else timestamp),
    }


def env_for(redis_url: str, routes: Path | None = None, **overrides: str) -> dict[str, str]:
    """An environment for Settings or for an `osma-router` subprocess."""
    env = {
        "OSMA_ROUTER_REDIS_URL": redis_url,
        "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
        "OSMA_ROUTER_LOG_FORMAT": "json",
    }
    if routes is not None:
        env["OSMA_ROUTER_CONFIG"] = str(routes)
    env.update(overrides)
    return env


def subprocess_env(env: dict[str, str]) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OSMA_ROUTER_")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_PATH), str(ROOT), full.get("PYTHONPATH")]))
    return full


def osma_router(
    args: list[str], env: dict[str, str], cwd: Path = ROOT, *, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run `osma-router ARGS` as a user would, with exactly `env` as its OSMA_ROUTER_*
    settings; its output is captured as text, and a non-zero exit is the caller's to judge."""
    return subprocess.run(
        [*OSMA_ROUTER, *args],
        env=subprocess_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def start_osma_router(
    args: list[str], env: dict[str, str], cwd: Path | None = ROOT, **popen: Any
) -> subprocess.Popen[str]:
    """`osma-router ARGS` in the background, set up as `osma_router` runs it: exactly `env`
    as its OSMA_ROUTER_* settings, stdout and stderr piped as text."""
    return subprocess.Popen(
        [*OSMA_ROUTER, *args],
        env=subprocess_env(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


class Receiver:
    """A receiver under test: its state, its URL and helpers to talk to it."""

    def __init__(self, state: ReceiverState, server: LiveServer, settings: Settings) -> None:
        self.state = state
        self.server = server
        self.settings = settings
        self.url = server.url
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def post(self, body: bytes, headers: dict[str, str] | None = None, **sign_kw: Any) -> httpx.Response:
        return self.http.post(
            "/webhooks/osma",
            content=body,
            headers=headers if headers is not None else signature_headers(body, **sign_kw),
        )

    def drain(self) -> None:
        """Run every queued job with an in-process burst worker."""
        runtime = WorkerRuntime.build(self.settings, Redis.from_url(self.settings.require_redis_url()))
        queues = [self.settings.queue_name] + sorted({r.queue for r in runtime.config.routes if r.queue})
        run_worker(runtime, queues, burst=True)


def handled(redis: Redis) -> list[str]:
    """What the sample plugin's handlers recorded, in order."""
    return [item.decode() for item in redis.lrange("test:handled", 0, -1)]


def kill_this_process(job: Any, connection: Any, result: Any) -> None:
    """An RQ success callback (`success_callback_name` in a job hash): the worker dies by
    SIGKILL after the job's function returned, before RQ records the job as finished."""
    os.kill(os.getpid(), signal.SIGKILL)
